"""Click-to-overlay latency of `segvol serve` on CPU: one prompt change -> new mask -> three PNG views.

    python benchmarks/bench_serve.py [--image CT.nii.gz] [--presets tiny base] [--repeats 3] [--threads 2]

Random weights of each preset (latency does not depend on the weights). The image defaults to the
real 3 mm abdominal CT in ../shared/data when present, else a synthetic one. Prints the median of
(a) the segmentation after a point click and (b) rendering the three views, per preset.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "totalsegmentator" / "abdomen_ct_3mm" / "example_ct.nii.gz"


def main() -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from segvol.model import build_model, model_config
    from segvol.serve.workspace import VIEWS, Workspace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(SHARED_CT) if SHARED_CT.exists() else None)
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = args.image
    if image is None:
        from tests.test_serve import synthetic_ct

        image = synthetic_ct(Path(tempfile.mkdtemp()) / "ct.nii.gz")
    image = Path(image)
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_model(model_config(preset)).eval()
        workspace = Workspace(model, image.parent)
        state = workspace.open(image)
        workspace.add_object("object")
        d, h, w = (n // 2 for n in state["shape"])
        segment_times, render_times = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            workspace.add_point("object", "axial", d, w + repeat, h, positive=True)
            segment_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            for view, index in zip(VIEWS, (d, h, w)):
                workspace.render(view, index, "abdomen", (d, h, w))
            render_times.append(time.perf_counter() - started)
        print(
            f"{preset:>5} on {image.name} {'x'.join(map(str, state['shape']))}: click -> mask "
            f"{statistics.median(segment_times):.2f} s, three views {statistics.median(render_times) * 1000:.0f} ms"
            f" (median of {args.repeats}, {args.threads} threads)"
        )


if __name__ == "__main__":
    main()
