"""Speed of the FH pseudo-label segmentation on the paper's pseudo grid, single thread.

Prints seconds per (D, H, W) = (32, 256, 256) volume (the released (256, 256, 32) X-Y-Z grid) for
the `segvol` and `classic` criteria (median of a few runs), the pure-Python reference (the
released algorithm, from tests/test_pseudo_fh.py) on a crop extrapolated per voxel, the speed-up,
and the peak memory of each variant (each measured in its own process).

    .venv/bin/python benchmarks/bench_pseudo.py [--repeats 5] [--crop 8 64 64]

Uses ../shared/data/totalsegmentator/abdomen_ct_3mm/example_ct.nii.gz when present (foreground-
normalised and min-max scaled as in the dataset store, then 'area'-resized), else a phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "data" / "totalsegmentator" / "abdomen_ct_3mm" / "example_ct.nii.gz"
GRID = (32, 256, 256)
VARIANTS = {
    "segvol": {"criterion": "segvol"},
    "classic-6": {"criterion": "classic", "connectivity": 6},
    "classic-26": {"criterion": "classic", "connectivity": 26},
}


def foreground_normalise(hu: np.ndarray) -> np.ndarray:
    """Foreground normalization followed by min-max scaling, as in the dataset store (docs/method.md)."""
    kept = hu[hu > hu.mean()]
    lower, upper = np.percentile(kept, [0.05, 99.95])
    volume = (np.clip(hu, lower, upper) - kept.mean()) / max(kept.std(), 1e-8)
    return ((volume - volume.min()) / max(volume.max() - volume.min(), 1e-8)).astype(np.float32)


def test_volume() -> tuple[np.ndarray, str]:
    from segvol.pseudo.resample import resize_area

    if REAL_CT.exists():
        import nibabel as nib

        hu = np.asarray(nib.load(REAL_CT).dataobj, dtype=np.float32).transpose(2, 1, 0)  # (X,Y,Z) -> (D,H,W)
        return resize_area(foreground_normalise(hu), GRID), f"real CT {REAL_CT.name} {hu.shape} -> {GRID}"
    rng = np.random.default_rng(0)
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in GRID], indexing="ij")
    volume = 0.4 * (h**2 + w**2 < 0.8) + 0.3 * ((h - 0.3) ** 2 + (w + 0.2) ** 2 < 0.1) + 0.02 * rng.random(GRID)
    return volume.astype(np.float32), f"synthetic phantom {GRID}"


def child(variant: str, repeats: int) -> dict:
    """Time one variant in this process; report wall/CPU medians and peak RSS."""
    import torch

    from segvol.pseudo.felzenszwalb import felzenszwalb_3d
    from segvol.settings import stage_settings

    torch.set_num_threads(1)
    volume, source = test_volume()
    settings = stage_settings("pseudo", VARIANTS[variant])
    kwargs = {key: settings[key] for key in ("sigma", "min_size", "k", "connectivity", "percentile")}
    felzenszwalb_3d(volume[:4, :16, :16], settings["criterion"], **kwargs)  # load the compiled kernels
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        labels = felzenszwalb_3d(volume, settings["criterion"], **kwargs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "source": source,
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "segments": int(labels.max()),
        "peak_rss_mb": peak / 1024,
        "rss_growth_mb": (peak - rss_before) / 1024,
    }


def reference(crop: tuple[int, int, int]) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_pseudo_fh import reference_segvol, same_partition

    from segvol.pseudo.felzenszwalb import felzenszwalb_3d

    volume, _ = test_volume()
    d0, h0, w0 = ((g - c) // 2 for g, c in zip(GRID, crop))
    part = np.ascontiguousarray(volume[d0 : d0 + crop[0], h0 : h0 + crop[1], w0 : w0 + crop[2]])
    start = time.perf_counter()
    slow = reference_segvol(part, 0.8, 1000)
    seconds = time.perf_counter() - start
    fast = felzenszwalb_3d(part, "segvol", sigma=0.8, min_size=1000)
    return {"seconds": seconds, "voxels": part.size, "same_partition": bool(same_partition(fast, slow))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--crop", type=int, nargs=3, default=[8, 64, 64], help="reference crop (D H W)")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return 0

    results = {}
    for variant in VARIANTS:
        repeats = args.repeats if variant != "classic-26" else max(1, args.repeats // 2)
        output = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--repeats", str(repeats)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    ref = reference(tuple(args.crop))
    n_voxels = int(np.prod(GRID))
    ref_per_volume = ref["seconds"] / ref["voxels"] * n_voxels

    print(f"volume: {results['segvol']['source']}; {n_voxels:,} voxels; single thread; load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<12}{'wall s':>9}{'cpu s':>9}{'segments':>10}{'peak RSS MB':>13}{'RSS growth MB':>15}")
    for name, row in results.items():
        print(
            f"{name:<12}{row['wall_s']:>9.3f}{row['cpu_s']:>9.3f}{row['segments']:>10}"
            f"{row['peak_rss_mb']:>13.0f}{row['rss_growth_mb']:>15.0f}"
        )
    print(
        f"reference (pure Python, released algorithm): {ref['seconds']:.2f} s on a {tuple(args.crop)} crop "
        f"({ref['voxels']:,} voxels) -> {ref_per_volume:.1f} s per volume extrapolated per voxel "
        f"(same partition as ours on the crop: {ref['same_partition']})"
    )
    for name in ("segvol", "classic-6"):
        print(
            f"speed-up {name} vs reference: {ref_per_volume / results[name]['wall_s']:.0f}x wall, "
            f"{ref_per_volume / results[name]['cpu_s']:.0f}x cpu"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
