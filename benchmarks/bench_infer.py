"""Inference benchmarks of segvol.infer, each measured in one run on the same volume and weights.

1. zoom-out-zoom-in vs a full sliding window: window passes and seconds (goal: fewer of both);
2. K categories at once (shared image embeddings) vs the released per-category loop
   (goal: >= 5x faster for 15 categories);
3. peak resident memory of `segvol predict` with the `base` preset on a synthetic
   512x512x600 CT on the CPU with 15 categories (goal: <= 2 GB), measured as ru_maxrss of a
   subprocess (--memory-checkpoint: the weights read from a checkpoint file, as real ones are).
   SEGVOL_MEMORY_LOG=1 makes the command log its resident memory at each stage; those lines
   are printed below the peak.

Random weights are enough: only geometry and cost are measured. Timings are medians of
--repeats runs. Parts 1-2 use the `tiny` preset (CPU minutes); part 3 runs `base` with organ-sized
box+point prompts placed so that few windows are needed (base on CPU: ~5-10 s per window).

    .venv/bin/python benchmarks/bench_infer.py                 # all three
    .venv/bin/python benchmarks/bench_infer.py --skip-memory   # parts 1-2 only
    .venv/bin/python benchmarks/bench_infer.py --memory-only   # part 3 only (minutes on a busy CPU)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class CountingModel(torch.nn.Module):
    """Wraps a SegVol and counts image-encoder windows (the dominant cost)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.windows = 0
        self.decodes = 0

    def encode_image(self, image):
        self.windows += image.shape[0]
        return self.model.encode_image(image)

    def encode_text(self, names):
        return self.model.encode_text(names)

    def decode(self, embedding, **prompts):
        self.decodes += embedding.shape[0]
        return self.model.decode(embedding, **prompts)


def synthetic_volume(shape, seed=0) -> torch.Tensor:
    """A [0, 1] body-like volume with an air frame (what the normalizer would produce)."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    d, h, w = shape
    zz, yy, xx = np.ogrid[:d, :h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 <= 1
    volume[:] = np.where(body, 0.4 + 0.2 * rng.random(shape, dtype=np.float32), 0.0)
    return torch.from_numpy(volume)


def synthetic_ct(shape_ijk, seed=0) -> np.ndarray:
    """An int16 (I, J, K) CT of the `synthetic_volume` kind, made slab by slab.

    Lean on purpose: a forked child starts its ru_maxrss at the parent's peak, so a parent that
    once held float temporaries of the whole volume (2.1 GB for 512x512x600) would hide any
    smaller peak of the command measured after it.
    """
    rng = np.random.default_rng(seed)
    i, j, k = shape_ijk
    ii, jj = np.ogrid[:i, :j]
    body = ((jj - j / 2) / (0.42 * j)) ** 2 + ((ii - i / 2) / (0.46 * i)) ** 2 <= 1
    hu = np.full(shape_ijk, -1000, dtype=np.int16, order="F")
    for first in range(0, k, 16):
        slab = hu[:, :, first : first + 16]
        values = (0.4 + 0.2 * rng.random(slab.shape, dtype=np.float32)) * 1400 - 1000
        slab[body] = values[body].astype(np.int16)
    return hu


def timed(function, repeats):
    seconds = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def bench_zoom_vs_window(model, volume, repeats):
    from segvol.infer import Prompt, segment

    d, h, w = volume.shape
    box = (d // 3, h // 3, w // 3, d // 3 + 12, h // 3 + 40, w // 3 + 40)
    cases = {
        "zoom (text+box)": ("zoom", Prompt(text="liver", box=box)),
        "window (text+box, box windows only)": ("window", Prompt(text="liver", box=box)),
        "window (text only = full sliding window)": ("window", Prompt(text="liver")),
    }
    rows = {}
    for name, (mode, prompt) in cases.items():
        counter = CountingModel(model)
        seconds, _ = timed(lambda c=counter, p=prompt, m=mode: segment(c, volume, [p], mode=m), repeats)
        rows[name] = (counter.windows // repeats, seconds)
    print(f"\n[1] zoom-out-zoom-in vs sliding window, volume {tuple(volume.shape)}, tiny preset, median of {repeats}")
    base_windows, base_seconds = rows["window (text only = full sliding window)"]
    for name, (windows, seconds) in rows.items():
        print(
            f"  {name:45s} image passes {windows:4d}  {seconds:7.2f} s   "
            f"x{base_seconds / seconds:5.1f} faster, {base_windows / max(windows, 1):5.1f}x fewer passes"
        )


def bench_batched_categories(model, volume, repeats, categories=15):
    from segvol.infer import Prompt, segment

    # organ-like boxes clustered in the middle of the body, as abdominal organs are
    rng = np.random.default_rng(1)
    d, h, w = volume.shape
    prompts = []
    for k in range(categories):
        size = [int(rng.integers(d // 6, d // 3)), int(rng.integers(h // 8, h // 4)), int(rng.integers(w // 8, w // 4))]
        lo = [int(rng.integers(d // 6, d - d // 6 - s)) if d - d // 3 - s > 0 else 0 for s in size[:1]]
        lo += [int(rng.integers(n // 4, 3 * n // 4 - s)) for n, s in zip((h, w), size[1:])]
        box = (*lo, *(a + s for a, s in zip(lo, size)))
        prompts.append(Prompt(text=f"organ {k}", box=box))
    together_model = CountingModel(model)
    together_seconds, together = timed(lambda: segment(together_model, volume, prompts, mode="zoom"), repeats)

    def loop():
        # the released per-category loop: every category re-encodes every view
        return torch.cat([segment(loop_model, volume, [p], mode="zoom") for p in prompts])

    loop_model = CountingModel(model)
    loop_seconds, separate = timed(loop, repeats)
    difference = float((together - separate).abs().max())
    print(
        f"\n[2] {categories} categories at once vs per-category loop, volume {tuple(volume.shape)}, median of {repeats}"
    )
    print(f"  at once : {together_seconds:7.2f} s, image passes {together_model.windows // repeats}")
    print(f"  loop    : {loop_seconds:7.2f} s, image passes {loop_model.windows // repeats}")
    print(f"  speed-up: x{loop_seconds / together_seconds:.1f} (goal >= 5); max |logit difference| {difference:.2e}")
    print(f"  decoder passes (equal in both): {together_model.decodes // repeats}")
    return together_model.windows // repeats, loop_model.windows // repeats, together_model.decodes // repeats


def bench_base_pass_costs(counts, repeats):
    """Seconds of one base image-encoder window and one decoder prompt, and the speed-up they imply
    for the pass counts of [2] (the tiny decoder is unusually heavy relative to its encoder)."""
    from segvol.model import build_model, model_config

    torch.manual_seed(0)
    model = build_model(model_config("base", text_encoder="minilm")).eval()
    image = torch.rand(1, 1, *model.config.spatial_size)
    with torch.no_grad():
        encode_seconds, embedding = timed(lambda: model.encode_image(image), repeats)
        text = model.encode_text(["liver"])
        box = torch.tensor([[4.0, 40, 40, 20, 200, 200]])
        decode_seconds, _ = timed(lambda: model.decode(embedding, text=text, boxes=box), repeats)
    together_windows, loop_windows, decodes = counts
    together = together_windows * encode_seconds + decodes * decode_seconds
    loop = loop_windows * encode_seconds + decodes * decode_seconds
    print(
        f"\n[2b] base preset on this CPU: image window {encode_seconds:.2f} s, decoder prompt {decode_seconds:.2f} s"
        f" (median of {repeats})"
    )
    print(
        f"  with the pass counts of [2]: at once {together:.0f} s vs loop {loop:.0f} s "
        f"-> x{loop / together:.1f} (projected)"
    )


def bench_predict_memory(shape_ijk=(512, 512, 600), preset="base", categories=15, checkpoint=False):
    import nibabel as nib

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / "ct.nii"
        nib.save(nib.Nifti1Image(synthetic_ct(shape_ijk), np.diag([0.8, 0.8, 1.0, 1.0])), str(path))
        i, j, k = shape_ijk
        # `categories` organ-sized boxes (+ a point) around the centre: few windows of the base
        # model (32x256x256) each, so the run measures memory rather than encoder time.
        import json

        records = []
        for c in range(categories):
            di, dj, dk = (c % 3 - 1) * 50, (c // 3 % 3 - 1) * 50, (c // 9 - 1) * 12
            ci, cj, ck = i // 2 + di, j // 2 + dj, k // 2 + dk
            records.append(
                {
                    "name": f"organ{c:02d}",
                    "box": [ci - 40, cj - 40, ck - 10, ci + 40, cj + 40, ck + 10],
                    "points": [[ci, cj, ck]],
                }
            )
        prompts = folder / "prompts.json"
        prompts.write_text(json.dumps(records))
        weights = ["--random-weights", "--preset", preset]
        if checkpoint:  # the same random weights, read from a file as real ones are
            from segvol.model import build_model, model_config
            from segvol.model.checkpoint import save

            torch.manual_seed(0)
            weights = ["--checkpoint", str(save(build_model(model_config(preset)), folder / "weights.safetensors"))]
        command = [
            sys.executable,
            "-m",
            "segvol",
            "predict",
            str(path),
            "-o",
            str(folder / "seg.nii.gz"),
            *weights,
            "--device",
            "cpu",
            "--prompts",
            str(prompts),
        ]
        start = time.perf_counter()
        environment = {**os.environ, "SEGVOL_MEMORY_LOG": "1"}  # stage-by-stage resident memory in the log
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        seconds = time.perf_counter() - start
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        own_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        print(
            f"\n[3] segvol predict, {preset} preset, random weights{' from a checkpoint file' if checkpoint else ''}, "
            f"synthetic {'x'.join(map(str, shape_ijk))} "
            f"int16 CT, CPU, {categories} box+point prompts"
        )
        if done.returncode:
            print(done.stderr[-2000:])
        print(f"  exit {done.returncode}, {seconds:.0f} s, peak resident {peak_gb:.2f} GB (goal <= 2 GB)")
        if own_gb >= peak_gb:  # see synthetic_ct
            print(f"  NOT MEASURED: this benchmark's own peak ({own_gb:.2f} GB) bounds the child's ru_maxrss")
        for line in done.stderr.splitlines():
            if any(word in line for word in ("segmenting", "wrote", "loaded", "memory after")):
                print("   ", line.split(": ", 1)[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 192, 192), help="canonical D H W for parts 1-2")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-base-costs", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=(512, 512, 600), help="i j k of the CT file")
    parser.add_argument("--memory-categories", type=int, default=15, help="box+point prompts in part 3")
    parser.add_argument(
        "--memory-checkpoint",
        action="store_true",
        help="part 3 reads the (random) weights from a safetensors checkpoint, as with real weights",
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.memory_only:
        from segvol.model import build_model, model_config

        torch.manual_seed(0)
        model = build_model(model_config("tiny")).eval()
        volume = synthetic_volume(tuple(args.shape))
        bench_zoom_vs_window(model, volume, args.repeats)
        counts = bench_batched_categories(model, volume, args.repeats)
        if not args.skip_base_costs:
            bench_base_pass_costs(counts, args.repeats)
    if not args.skip_memory:
        bench_predict_memory(
            tuple(args.memory_shape), categories=args.memory_categories, checkpoint=args.memory_checkpoint
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
