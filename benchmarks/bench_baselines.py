"""Cost of the full-size SAM-Med2D and SAM-Med3D baselines per (case, category) on the CPU.

Both run with random weights (only cost is measured) on one synthetic CT-like case of the demo's
size (78 x 160 x 160 at 4.4 x 2.7 x 2.7 mm) with a liver-sized and a kidney-sized object, through
the same click loop as Table 2 (5 clicks). Prints seconds and GMACs per category (median of
--repeats runs) and their ratio.

    .venv/bin/python benchmarks/bench_baselines.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from segvol.evaluate.baselines.sam import build
from segvol.evaluate.baselines.sam_med2d import SamMed2DSegmenter
from segvol.evaluate.baselines.sam_med3d import SamMed3DMethod
from segvol.evaluate.baselines.slicewise import SliceWiseMethod
from segvol.evaluate.prompts import prompt_from_truth

SHAPE = (78, 160, 160)
SPACING = (4.4, 2.7, 2.7)


def ellipsoid(centre, radii):
    grid = np.indices(SHAPE)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    volume = np.random.default_rng(0).random(SHAPE).astype(np.float32) * 0.2 + 0.4
    objects = {"liver": ellipsoid((40, 70, 60), (14, 30, 35)), "left kidney": ellipsoid((45, 90, 120), (6, 10, 8))}
    methods = [
        SamMed3DMethod(build("sam-med3d")),
        SliceWiseMethod("SAM-Med2D", SamMed2DSegmenter(build("sam-med2d")), "point"),
    ]
    print(f"threads {args.threads}; case {SHAPE} at {SPACING} mm; 5 clicks per object (per slice for 2-D)")
    for method in methods:
        params = sum(p.numel() for p in method.model.parameters()) / 1e6
        for name, truth in objects.items():
            prompt = prompt_from_truth("point", name, truth, np.random.default_rng(0))
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                with FlopCounterMode(display=False) as counter, torch.inference_mode():
                    method.predict(volume, SPACING, prompt)
                seconds.append(time.perf_counter() - start)
            slices = int(truth.any(axis=(1, 2)).sum())
            print(
                f"{method.name:10s} {params:6.1f} M params  {name:12s} ({slices:2d} slices): "
                f"{statistics.median(seconds):6.1f} s, {counter.get_total_flops() / 2e9:8.1f} GMACs"
            )


if __name__ == "__main__":
    main()
