"""What a lying image header costs `segvol.io.read_image`: peak RSS, seconds and the error, per crafted file.

Each case is read in its own child process (address space capped at --cap-gb, so that a reader
that believes the header cannot take the machine down); the peak RSS of the child is compared with
that of a child that only imports the readers. Cases (tests/hostile_files.py):

- a 62-byte .nii.gz whose NIfTI-1 header claims 1000 x 1000 x 300 int16 (600 MB);
- a NIfTI-2 .nii of ~600 bytes claiming 100000^3 int16;
- an .mha whose ElementDataFile is /dev/zero, claiming 2000 x 2000 x 1000 int16 (8 GB);
- an .mhd whose ElementDataFile is a secret text file outside its folder (absolute and `../`);
- a DICOM series of 3 files of 13 KB whose headers claim 8192 x 8192 pixels each;
- a 700-byte safetensors checkpoint whose metadata claims 64 layers of width 65536
  (`segvol.model.checkpoint.load`).

The children import `segvol` as the environment does (PYTHONPATH=<another checkout> measures that one).

    .venv/bin/python benchmarks/bench_hostile_headers.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import nibabel, SimpleITK, torch  # the baseline holds the readers' libraries too
from segvol.io import read_image
from segvol.model import checkpoint
started = time.perf_counter()
try:
    if sys.argv[1].endswith(".safetensors"):
        checkpoint.load(sys.argv[1])
    elif sys.argv[1] != "-":
        read_image(sys.argv[1])
    outcome = "read (no error)"
except BaseException as error:
    outcome = f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
print(json.dumps({"seconds": time.perf_counter() - started, "outcome": outcome}))
"""


def measure(path: str, cap_bytes: int, folder: str) -> dict:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        cwd=folder,
    )
    _, status, usage = os.wait4(child.pid, 0)
    out = child.stdout.read()
    result = (
        json.loads(out.strip().splitlines()[-1])
        if out.strip()
        else {"seconds": float("nan"), "outcome": f"child died (status {status}): {child.stderr.read()[-200:]}"}
    )
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap-gb", type=float, default=6.0, help="address-space cap of each child (GB)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests import hostile_files as hostile
    from tests.test_untrusted_inputs import forged_safetensors

    cap = int(args.cap_gb * 1e9)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "root"
        folder.mkdir()
        secret = Path(scratch) / "secret.txt"
        secret.write_text(hostile.SECRET)
        cases = {
            "nii.gz 62 B claiming 1000x1000x300 int16": hostile.tiny_gzip_nifti(folder / "tiny.nii.gz"),
            "NIfTI-2 claiming 100000^3 int16": hostile.huge_nifti2(folder / "huge.nii"),
            ".mha ElementDataFile=/dev/zero 2000x2000x1000": hostile.metaimage(
                folder / "zero.mha", "/dev/zero", shape=(2000, 2000, 1000)
            ),
            ".mhd ElementDataFile=<abs secret>": hostile.metaimage(
                folder / "abs.mhd", str(secret), shape=(32, 32, 2), element_type="MET_UCHAR"
            ),
            ".mhd ElementDataFile=../secret.txt": hostile.metaimage(
                folder / "rel.mhd", "../secret.txt", shape=(32, 32, 2), element_type="MET_UCHAR"
            ),
            "DICOM 3 x 13 KB claiming 8192^2 each": hostile.dicom_series(
                folder / "dicom", count=3, claimed=(8192, 8192)
            )[0],
            "safetensors 700 B claiming 64 x 65536": forged_safetensors(
                folder / "huge.safetensors", num_layers=64, hidden_size=65536, num_heads=64
            ),
        }
        baseline = measure("-", cap, scratch)
        print(f"baseline (imports only): peak RSS {baseline['peak_rss_mb']:.0f} MB")
        print(f"{'case':48s} {'peak RSS MB':>11s} {'+MB':>7s} {'s':>6s}  outcome")
        for name, path in cases.items():
            result = measure(str(path), cap, scratch)
            extra = result["peak_rss_mb"] - baseline["peak_rss_mb"]
            print(
                f"{name:48s} {result['peak_rss_mb']:11.0f} {extra:7.0f} {result['seconds']:6.2f}  {result['outcome']}"
            )


if __name__ == "__main__":
    main()
