"""Felzenszwalb-Huttenlocher pseudo labels for every case of a dataset store.

Each case's image is resized to `grid` ('area'), segmented with the FH criterion (`segvol`:
the released variant, or `classic`), cleaned (tiny segments dropped, opening + closing,
small components dropped), overlaid with its ground-truth categories (fresh ids above the FH
ids) and resized back to the image grid (nearest). The output store holds per case `pseudo`
int32 (D, H, W) and attrs n_segments, segment_sizes, gt_ids.

example:
  segvol pseudo --zarr data/zarr/abdomen_a.zarr --out data/pseudo/abdomen_a.zarr \\
      --jobs 2 --params '{"criterion": "segvol", "grid": [32, 256, 256]}'
"""

from __future__ import annotations

import argparse
import logging

from segvol.cli_options import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zarr", required=True, metavar="STORE", help="dataset store (data/zarr/<dataset>.zarr)")
    parser.add_argument(
        "--out", required=True, metavar="PSEUDO_STORE", help="output store (data/pseudo/<dataset>.zarr)"
    )
    add_common_arguments(parser, params="pseudo", jobs=True)


def run(args: argparse.Namespace) -> int:
    from segvol.progress import progress_bar
    from segvol.pseudo.store import open_dataset, write_pseudo_store
    from segvol.settings import stage_settings

    settings = stage_settings("pseudo", args.params)
    n_cases = len(open_dataset(args.zarr).attrs["cases"])

    def progress(results):
        return progress_bar(results, total=n_cases, desc="pseudo labels", unit="case", disable=args.quiet)

    summary = write_pseudo_store(args.zarr, args.out, settings, threads=args.jobs, progress=progress)
    counts = list(summary.values())
    logging.getLogger("segvol.pseudo").info(
        "%d cases -> %s (FH segments per case: %s..%s)",
        len(counts),
        args.out,
        min(counts, default=0),
        max(counts, default=0),
    )
    return 0
