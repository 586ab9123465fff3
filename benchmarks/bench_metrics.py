"""NSD on the masks' bounding box vs on the whole volume: same value, time and peak memory.

    python benchmarks/bench_metrics.py [--shape 300 512 512] [--repeats 3]

A liver-sized ellipsoid and a shifted, dilated copy in a CT-sized volume. Prints the median time of
each way and their ratio, the peak traced memory (tracemalloc sees numpy and torch CPU buffers) and
the two values, which must be equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import warnings

import numpy as np


def masks(shape):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n * 0.45 for n in shape]
    radii = [n * 0.2 for n in shape]
    truth = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    shifted = sum(((g - c - 2) / (r * 1.05)) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    return shifted, truth


def whole_volume(prediction, truth, spacing, tolerance):
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask):
        foreground = torch.from_numpy(mask)
        return torch.stack([~foreground, foreground])[None].float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return float(
            compute_surface_dice(
                one_hot(prediction),
                one_hot(truth),
                class_thresholds=[tolerance],
                include_background=False,
                spacing=list(spacing),
            ).reshape(-1)[0]
        )


def measure(function, *args):
    tracemalloc.start()
    started = time.perf_counter()
    value = function(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak


def main() -> None:
    from segvol.evaluate.metrics import normalized_surface_dice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prediction, truth = masks(tuple(args.shape))
    spacing, tolerance = (1.5, 0.8, 0.8), 2.0
    results = {"whole volume": [], "bounding box": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        results["whole volume"].append(measure(whole_volume, prediction, truth, spacing, tolerance))
        results["bounding box"].append(measure(normalized_surface_dice, prediction, truth, spacing, tolerance))
    for name, runs in results.items():
        print(
            f"{name:>13}: NSD {runs[0][0]:.6f}  median {statistics.median(r[1] for r in runs):.2f} s"
            f"  peak {max(r[2] for r in runs) / 2**20:.0f} MiB"
        )
    whole, box = (statistics.median(r[1] for r in results[k]) for k in ("whole volume", "bounding box"))
    memory = max(r[2] for r in results["whole volume"]) / max(r[2] for r in results["bounding box"])
    print(
        f"ratio whole/box: time {whole / box:.2f}x, peak memory {memory:.1f}x; equal values: "
        f"{results['whole volume'][0][0] == results['bounding box'][0][0]}"
    )


if __name__ == "__main__":
    main()
