"""NIfTI -> normalized Zarr throughput and peak memory, against the I/O floor of the same run.

    .venv/bin/python benchmarks/bench_normalize.py [--shape 300 512 512] [--repeats 3]

Writes a synthetic int16 CT (default 512x512x300 voxels, ~150 MB raw) to /tmp once, then
times, each in a fresh subprocess (so that peak RSS is per measurement):
  floor     plain nibabel read + plain zarr write of the same int16 array (same chunks, shards,
            Blosc zstd at the same level, byte shuffle)
  floor_store nibabel read + zarr write of the store's content (int16 HU in canonical order,
            the store's codecs incl. CRC32C): the pure I/O floor of what `normalize` writes
  normalize `segvol normalize`'s build_store on a one-case dataset (read, canonicalise,
            foreground statistics, write int16 + integrity record), progress bar off
Prints medians, MB/s of raw voxels, the ratio normalize/floor (goal <= 1.5) and peak memory
above the interpreter's baseline relative to the raw volume size (goal <= 3).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path("/tmp/segvol_bench_normalize")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_volume(shape_xyz: tuple[int, int, int], path: Path) -> None:
    import nibabel as nib

    if path.exists():
        return
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape_xyz[0]), np.linspace(-1, 1, shape_xyz[1]), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    organ = ((x - 0.2) / 0.3) ** 2 + (y / 0.25) ** 2 < 1
    volume = np.full(shape_xyz, -1000, np.int16)
    for k in range(shape_xyz[2]):
        slab = np.where(body, 40, -1000) + np.where(organ, 30, 0)
        volume[:, :, k] = slab + rng.normal(0, 20, size=slab.shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), str(path))


def worker(mode: str, path: Path) -> dict:
    import nibabel as nib
    import zarr

    from segvol.io.store import checked_codecs
    from segvol.normalize.convert import build_store, fit_chunks
    from segvol.settings import stage_settings

    settings = stage_settings("normalize", {})
    baseline = _rss_mb()
    out = WORK / f"{mode}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    if mode in ("floor", "floor_store"):
        array = np.asanyarray(nib.load(str(path)).dataobj)
        if mode == "floor_store":
            # The store's exact content, computed off the clock: only reading and writing count.
            read_seconds = time.perf_counter() - start
            array = np.ascontiguousarray(array.T)
            start = time.perf_counter() - read_seconds
            codec = checked_codecs(settings["compression_level"])
        else:  # byte shuffle: the fast, usual codec choice for integers
            codec = zarr.codecs.BloscCodec(
                cname="zstd", clevel=settings["compression_level"], shuffle=zarr.codecs.BloscShuffle.shuffle
            )
        chunks, shards = fit_chunks(array.shape, settings["chunks"], settings["shards"])
        root = zarr.open_group(str(out), mode="w")
        target = root.create_array(
            "image", shape=array.shape, dtype=array.dtype, chunks=chunks, shards=shards, compressors=codec
        )
        target[...] = array
    else:
        build_store(path.parent, out, seed=0, settings=settings, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _rss_mb(), "baseline_mb": baseline}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["floor", "floor_store", "normalize"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    image = WORK / f"raw_{'x'.join(map(str, args.shape))}" / "ct.nii.gz"
    if args.worker:
        print(json.dumps(worker(args.worker, image)))
        return 0

    make_volume(tuple(args.shape), image)
    (image.parent / "dataset.json").write_text(
        json.dumps({"name": "bench", "role": "unlabelled", "cases": [{"id": "ct", "image": image.name}]})
    )
    raw_mb = np.prod(args.shape) * 2 / 1e6
    results: dict[str, list[dict]] = {"floor": [], "floor_store": [], "normalize": []}
    for _ in range(args.repeats):
        for mode in results:  # interleaved so that machine noise hits every mode alike
            output = subprocess.run(
                [sys.executable, __file__, "--shape", *map(str, args.shape), "--worker", mode],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode].append(json.loads(output.strip().splitlines()[-1]))

    print(f"volume {tuple(args.shape)} int16 = {raw_mb:.1f} MB raw voxels; {args.repeats} runs each, medians")
    median = {}
    for mode, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        extra = statistics.median(r["peak_mb"] - r["baseline_mb"] for r in runs)
        median[mode] = (seconds, extra)
        print(
            f"  {mode:11s} {seconds:7.2f} s  {raw_mb / seconds:7.1f} MB/s  peak +{extra:7.1f} MB"
            f" = {extra / raw_mb:.2f}x raw volume"
        )
    ratio = median["normalize"][0] / median["floor"][0]
    print(
        f"normalize / floor time: {ratio:.2f}x (goal <= 1.5x);"
        f" normalize / floor_store time: {median['normalize'][0] / median['floor_store'][0]:.2f}x"
    )
    print(
        f"normalize peak memory: {median['normalize'][1] / raw_mb:.2f}x the raw volume (goal <= 3x),"
        f" {median['normalize'][1] / (2 * raw_mb):.2f}x a float32 volume"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
