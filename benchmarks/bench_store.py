"""Store format 1 (normalized float32) vs format 2 (int16 HU + CRC32C + integrity record,
normalized on read): bytes on disk, write time, whole-case and crop read throughput.

    .venv/bin/python benchmarks/bench_store.py [--image CT.nii.gz] [--repeats 5]

The CT defaults to ../shared/data/totalsegmentator/abdomen_ct_3mm/example_ct.nii.gz when present,
else (or with --phantom X Y Z) bench_normalize's synthetic phantom (512x512x200).
Writes start from the CT file in both formats. Both use the default chunks/shards and Blosc zstd
level of `segvol normalize`; format 1 is written exactly as before (float32 from
`apply_normalization`, no checksum), format 2 by the real `build_store`. Reads go through what the
consumers use: format 1 a plain zarr array, format 2 `open_store(...).case(...)["image"]`
(chunk-key check, CRC32C, statistics check on whole reads, normalization). Both read results are
compared with np.array_equal before anything is timed. Prints medians and new/old ratios, all
measured in this one run, the formats interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path("/tmp/segvol_bench_store")
SHARED_CT = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "totalsegmentator"
    / "abdomen_ct_3mm"
    / "example_ct.nii.gz"
)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_format_1(path: Path, out: Path, settings: dict) -> None:
    """The format 1 image array from the CT file: normalized float32, Blosc zstd without shuffle,
    no checksum (the old `write_case`)."""
    import zarr

    from segvol.io import read_image
    from segvol.io.intensity import apply_normalization, foreground_statistics
    from segvol.normalize.convert import fit_chunks

    image = read_image(path)
    stats = foreground_statistics(image.array)
    chunks, shards = fit_chunks(image.shape, settings["chunks"], settings["shards"])
    codec = zarr.codecs.BloscCodec(
        cname="zstd", clevel=settings["compression_level"], shuffle=zarr.codecs.BloscShuffle.noshuffle
    )
    group = zarr.open_group(str(out), mode="w", zarr_format=3).create_group("ct")
    array = group.create_array(
        "image",
        shape=image.shape,
        dtype="float32",
        chunks=chunks,
        shards=shards,
        compressors=codec,
        fill_value=0.0,
        dimension_names=("D", "H", "W"),
    )
    slab = np.empty((shards[0], *image.shape[1:]), dtype=np.float32)
    for start in range(0, image.shape[0], shards[0]):
        stop = min(start + shards[0], image.shape[0])
        apply_normalization(image.array[start:stop], stats, out=slab[: stop - start])
        array[start:stop] = slab[: stop - start]


def write_format_2(raw: Path, out: Path, settings: dict) -> None:
    from segvol.normalize.convert import build_store

    build_store(raw, out, seed=0, settings=settings, progress=False)


def open_format_1(out: Path):
    import zarr

    return zarr.open_array(str(out / "ct" / "image"), mode="r")


def open_format_2(out: Path):
    from segvol.io.store import open_store

    return open_store(out).case("ct")["image"]  # a fresh store: includes the open-time checks


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> int:
    from segvol.io import read_image
    from segvol.settings import stage_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=SHARED_CT if SHARED_CT.is_file() else None)
    parser.add_argument(
        "--phantom",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="use a synthetic CT of this size (bench_normalize's phantom) instead",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--crops", type=int, default=8, help="crop reads per repeat")
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    raw = WORK / "raw"
    raw.mkdir(parents=True)
    if args.image is None or args.phantom:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_normalize import make_volume

        args.image = raw / "ct.nii.gz"
        make_volume(tuple(args.phantom or (512, 512, 200)), args.image)
    (raw / "dataset.json").write_text(
        json.dumps({"name": "bench", "role": "unlabelled", "cases": [{"id": "ct", "image": str(args.image.resolve())}]})
    )
    settings = stage_settings("normalize", {})
    image = read_image(args.image)
    crop = tuple(min(n, c) for n, c in zip(image.shape, (32, 256, 256)))
    rng = np.random.default_rng(0)
    starts = [tuple(int(rng.integers(0, n - c + 1)) for n, c in zip(image.shape, crop)) for _ in range(args.crops)]
    windows = [tuple(slice(s, s + c) for s, c in zip(start, crop)) for start in starts]
    voxels = int(np.prod(image.shape))

    formats = {
        "old": (lambda out: write_format_1(args.image, out, settings), open_format_1),
        "new": (lambda out: write_format_2(raw, out, settings), open_format_2),
    }
    times = {name: {"write": [], "read": [], "crop": []} for name in formats}
    sizes, values = {}, {}
    for repeat in range(args.repeats):
        for name, (write, open_image) in formats.items():  # interleaved: noise hits both alike
            out = WORK / f"{name}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            seconds, _ = timed(lambda write=write, out=out: write(out))
            times[name]["write"].append(seconds)
            sizes[name] = folder_bytes(out / "ct" / "image")
            seconds, volume = timed(lambda open_image=open_image, out=out: open_image(out)[...])
            times[name]["read"].append(seconds)
            if repeat == 0:
                values[name] = volume
            seconds, _ = timed(lambda open_image=open_image, out=out: [open_image(out)[w] for w in windows])
            times[name]["crop"].append(seconds / len(windows))
        if repeat == 0 and not np.array_equal(values["old"], values["new"]):
            print("new store reads differ from the old float32 values", file=sys.stderr)
            return 1

    raw_mb = voxels * 2 / 1e6
    print(
        f"{args.image} {image.shape} (D, H, W) {image.array.dtype}: {raw_mb:.1f} MB as int16; "
        f"{args.repeats} repeats, medians; read values bit-identical: yes; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"  store image bytes  old {sizes['old'] / 1e6:8.2f} MB   new {sizes['new'] / 1e6:8.2f} MB   "
        f"new/old {sizes['new'] / sizes['old']:.3f}"
    )
    medians = {name: {kind: statistics.median(runs) for kind, runs in kinds.items()} for name, kinds in times.items()}
    for kind, unit in (("write", "whole case"), ("read", "whole case"), ("crop", f"crop {crop}")):
        old, new = medians["old"][kind], medians["new"][kind]
        extra = ""
        if kind == "read":
            extra = f"   old {voxels / old / 1e6:7.1f} Mvox/s   new {voxels / new / 1e6:7.1f} Mvox/s"
        print(
            f"  {kind:5s} ({unit}) old {old * 1e3:8.1f} ms   new {new * 1e3:8.1f} ms   new/old {new / old:.2f}{extra}"
        )
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
