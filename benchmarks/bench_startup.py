"""Start-up cost of `segvol predict`, as ratios to `python -c 'import torch'` (the floor of any run).

Goals: `segvol predict --help` < 1 s; the first progress line < 3 s after launch. Measured as
wall time of fresh subprocesses (median of --repeats); the first-line time reads the command's
stderr until the first log line appears, on a small synthetic NIfTI with the tiny preset.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def first_line(command: list[str]) -> tuple[float, float, str]:
    """Seconds to the first stderr line, seconds to exit, and that line."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    seen = time.perf_counter() - started
    rest = process.stderr.read()
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{line}{rest[-2000:]}")
    return seen, time.perf_counter() - started, line.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        ct = Path(folder) / "ct.nii.gz"
        hu = np.full((64, 64, 40), -1000, np.int16)
        hu[8:-8, 8:-8, 4:-4] = 40
        nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), str(ct))
        predict = [
            python,
            "-m",
            "segvol",
            "predict",
            str(ct),
            "-o",
            str(Path(folder) / "seg.nii.gz"),
            "--random-weights",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--overwrite",
            "--box",
            "10",
            "10",
            "5",
            "50",
            "50",
            "30",
        ]
        torch_times = [wall([python, "-c", "import torch"]) for _ in range(args.repeats)]
        help_times = [wall([python, "-m", "segvol", "predict", "--help"]) for _ in range(args.repeats)]
        runs = [first_line(predict) for _ in range(args.repeats)]
    torch_s = statistics.median(torch_times)
    help_s = statistics.median(help_times)
    line_s = statistics.median(r[0] for r in runs)
    total_s = statistics.median(r[1] for r in runs)
    print(f"python -c 'import torch'        median {torch_s:6.2f} s")
    print(
        f"segvol predict --help           median {help_s:6.2f} s  ratio to torch import {help_s / torch_s:5.2f}"
        f"  goal < 1 s: {'met' if help_s < 1 else 'NOT met'}"
    )
    print(
        f"first progress line             median {line_s:6.2f} s  ratio to torch import {line_s / torch_s:5.2f}"
        f"  goal < 3 s: {'met' if line_s < 3 else 'NOT met'}"
    )
    print(f"whole tiny prediction           median {total_s:6.2f} s  ratio to torch import {total_s / torch_s:5.2f}")
    print(f"first line: {runs[0][2]}")


if __name__ == "__main__":
    main()
