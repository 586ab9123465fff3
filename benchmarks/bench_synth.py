"""Time phantom generation and writing: `python benchmarks/bench_synth.py [--cases N]`.

Prints the median seconds per case of each step at the default `shape_max`, for the train and
external populations. The goal is under 1-2 s per case on one core.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 160, 160])
    args = parser.parse_args(argv)

    import nibabel as nib

    from segvol.synth.appearance import DOMAINS
    from segvol.synth.dataset import _single_threaded_blas, to_nifti
    from segvol.synth.phantom import case_rng, make_phantom

    make_phantom(case_rng(0, "warmup", 0), DOMAINS["train"], args.shape)
    with tempfile.TemporaryDirectory() as folder, _single_threaded_blas():
        for role in ("train", "external"):
            generate, write, cpu = [], [], []
            for index in range(args.cases):
                start, start_cpu = time.perf_counter(), time.process_time()
                phantom = make_phantom(case_rng(0, f"bench_{role}", index), DOMAINS[role], args.shape)
                middle = time.perf_counter()
                cpu.append(time.process_time() - start_cpu)
                nib.save(to_nifti(phantom.hu, phantom.affine), Path(folder) / "image.nii.gz")
                nib.save(to_nifti(phantom.tissue, phantom.affine), Path(folder) / "label.nii.gz")
                write.append(time.perf_counter() - middle)
                generate.append(middle - start)
            g, w, c = statistics.median(generate), statistics.median(write), statistics.median(cpu)
            print(
                f"{role:9s} shape<={tuple(args.shape)}  generate {g:.2f} s wall / {c:.2f} s CPU  "
                f"write {w:.2f} s  total {g + w:.2f} s/case wall  (median of {args.cases}; "
                f"goal < 2 s: {'ok' if g + w < 2 else 'SLOW'}; wall includes waiting for a busy CPU)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
