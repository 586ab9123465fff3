"""Cost of the download hardening: our descriptor-based extraction against the stdlib's
`zipfile.extractall` / `tarfile.extractall(filter="data")`, and the integrity read a download
without a registry checksum gets (zip CRCs, full tar.gz read) against the sha256 every download
gets anyway.

The archives hold --files CT-sized volumes of --mib MiB in total (half noise, half smooth, as
.npy or .nii are), written once into a temporary folder. Prints the median seconds of --repeats
runs, MiB/s and the ratio ours / stdlib.

    .venv/bin/python benchmarks/bench_download.py --mib 256 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from segvol.download.extract import check_integrity, extract_into
from segvol.download.fetch import digests


def _volumes(total_mib: int, files: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    size = (total_mib << 20) // files // 2  # int16 voxels
    out = []
    for _ in range(files):
        smooth = np.cumsum(rng.integers(-2, 3, size), dtype=np.int64).astype(np.int16)
        noise = (smooth + rng.integers(-30, 30, size)).astype(np.int16)
        out.append(np.where(np.arange(size) % 2 == 0, smooth, noise).tobytes())
    return out


def _timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="unpacked size of each archive")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_download_"))
    try:
        volumes = _volumes(args.mib, args.files)
        zip_path, tar_path = work / "a.zip", work / "a.tar.gz"
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
            for i, data in enumerate(volumes):
                bundle.writestr(f"case_{i:03d}/image.npy", data)
        with tarfile.open(tar_path, "w:gz", compresslevel=1) as bundle:
            for i, data in enumerate(volumes):
                info = tarfile.TarInfo(f"case_{i:03d}/image.npy")
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))

        def fresh(name):
            target = work / name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            return target

        def stdlib_zip():
            with zipfile.ZipFile(zip_path) as bundle:
                bundle.extractall(fresh("out"))

        def stdlib_tar():
            with tarfile.open(tar_path) as bundle:
                bundle.extractall(fresh("out"), filter="data")

        rows = [
            ("zip  unpack", lambda: extract_into(zip_path, fresh("out")), stdlib_zip),
            ("tgz  unpack", lambda: extract_into(tar_path, fresh("out")), stdlib_tar),
            ("zip  CRC check vs sha256", lambda: check_integrity(zip_path), lambda: digests(zip_path)),
            ("tgz  full read vs sha256", lambda: check_integrity(tar_path), lambda: digests(tar_path)),
        ]
        print(
            f"{args.mib} MiB unpacked in {args.files} files; zip {zip_path.stat().st_size >> 20} MiB, "
            f"tar.gz {tar_path.stat().st_size >> 20} MiB; median of {args.repeats}"
        )
        print(f"{'':26s} {'ours s':>8s} {'MiB/s':>7s} {'ref s':>8s} {'MiB/s':>7s} {'ratio':>6s}")
        for name, ours, reference in rows:
            ours_s, reference_s = _timed(ours, args.repeats), _timed(reference, args.repeats)
            print(
                f"{name:26s} {ours_s:8.2f} {args.mib / ours_s:7.0f} {reference_s:8.2f} "
                f"{args.mib / reference_s:7.0f} {ours_s / reference_s:6.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
