"""Memory of `segvol serve`'s undo history: a 160^3 CT, several objects, 40 point edits.

    python benchmarks/bench_serve_history.py [--size 160] [--objects 4] [--edits 40] [--model box|noise|tiny]
                                             [--mode zoom|resize]

Prints the process's resident memory (VmRSS) after opening the image and after the edits, and the
bytes the undo history holds (its packed masks; for a history of plain mask copies, the copies).
`--model box` (default): the box/point stand-in of the tests (cubes around the clicks, compact like
organs); `--model noise`: the same with random logits (salt-and-pepper masks, the worst case for
compression; use it with `--mode resize`: zooming in on a mask that fills the volume is slow);
`--model tiny`: random weights of the tiny preset (slow on CPU at 160^3).
Run it on two checkouts to compare their histories on the same edits.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_ct(path: Path, size: int, objects: int) -> list[tuple[slice, slice, slice]]:
    """A size^3 CT in HU: a noisy body with `objects` bright organs; returns the organs' (x, y, z) slices."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    body = ((x - size / 2) / (0.45 * size)) ** 2 + ((y - size / 2) / (0.4 * size)) ** 2 <= 1
    hu = np.where(body[..., None], 40, -1000).astype(np.int16) * np.ones((1, 1, size), np.int16)
    hu += rng.normal(0, 15, hu.shape).astype(np.int16)
    organs = []
    for k in range(objects):
        start = int(size * (0.25 + 0.12 * k))
        organ = (
            slice(start, start + size // 8),
            slice(size // 3, size // 3 + size // 5),
            slice(size // 4, 3 * size // 4),
        )
        hu[organ] = 150 + 20 * k
        organs.append(organ)
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 1.5, 1.0])), str(path))
    return organs


def main() -> None:
    import torch

    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--model", choices=("box", "noise", "tiny"), default="box")
    parser.add_argument("--mode", choices=("zoom", "resize"), default="zoom", help="inference mode (as serve's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "tiny":
        from segvol.model import build_model, model_config

        torch.manual_seed(0)
        model = build_model(model_config("tiny")).eval()
    else:
        from tests.stand_in_models import BoxModel

        class NoiseModel(BoxModel):
            def decode(self, image_embedding, text=None, boxes=None, points=None):
                logits = super().decode(image_embedding, text=text, boxes=boxes, points=points)
                return torch.randn(logits.shape, generator=generator)

        generator = torch.Generator().manual_seed(0)
        model = (BoxModel if args.model == "box" else NoiseModel)(spatial_size=(32, 64, 64), radius=3)
    folder = Path(tempfile.mkdtemp())
    try:
        measure(args, model, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(args, model, folder: Path) -> None:
    import numpy as np

    from segvol.serve.workspace import Workspace

    organs = synthetic_ct(folder / "ct.nii.gz", args.size, args.objects)
    workspace = Workspace(model, folder, mode=args.mode)
    state = workspace.open(folder / "ct.nii.gz")
    depth, height, width = state["shape"]
    names = [f"organ {k + 1}" for k in range(args.objects)]
    for name in names:
        workspace.add_object(name)
    rng = np.random.default_rng(1)

    def click(k: int) -> None:
        # the organ's file voxels (x, y, z) -> the axial view: canonical (d, h, w) = (z, y, x), both flipped
        xs, ys, zs = organs[k % args.objects]
        x, y, z = (int(rng.integers(s.start + 2, s.stop - 2)) for s in (xs, ys, zs))
        column, row = width - 1 - x, height - 1 - y
        workspace.add_point(names[k % args.objects], "axial", z, column + 0.5, row + 0.5, positive=True)

    click(0)  # the first edit loads what inference needs
    workspace.undo()
    before = rss_mb()
    started = time.perf_counter()
    for edit in range(args.edits):
        click(edit)
    seconds = time.perf_counter() - started
    after = rss_mb()
    history = workspace.history
    if hasattr(history, "nbytes"):
        held = history.nbytes
    else:  # a list of copied object lists
        held = sum({id(o.mask): o.mask.nbytes for step in history for o in step if o.mask is not None}.values())
    mask = workspace.objects[0].mask
    voxels = [int(o.mask.sum()) for o in workspace.objects]
    print(
        f"{args.size}^3 ({'x'.join(map(str, state['shape']))}), {args.objects} objects, {args.edits} edits, "
        f"model {args.model}, mode {args.mode}: RSS {before:.0f} -> {after:.0f} MB (+{after - before:.0f} MB); "
        f"undo history holds "
        f"{held / 2**20:.1f} MB in {len(history)} steps (one mask: {mask.nbytes / 2**20:.1f} MB; "
        f"mask voxels {voxels}); {seconds / args.edits:.2f} s per edit"
    )


if __name__ == "__main__":
    main()
