"""Write procedural abdominal CT phantoms as a raw dataset folder (the embedded demo's data).

Each case is a NIfTI CT volume in HU (int16, anisotropic spacing in the affine) plus a label
map whose categories come from the dataset's `labels` list, so label spaces are partial and
inconsistent across datasets just like public ones. Role `external` draws from a shifted
population (contrast timing, scanner noise/blur, field of view, organ size); role
`unlabelled` writes images only. Output is deterministic per (seed, dataset, case index).

example:
  segvol synth --dataset abdomen_a --out data/raw/abdomen_a --seed 2023 \\
      --params '{"datasets": {"abdomen_a": {"role": "train", "n_cases": 4,
                 "labels": ["liver", "spleen", "kidney", "liver tumor"]}}}'
"""

from __future__ import annotations

import argparse

from segvol.cli_options import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="name of an entry of synth.datasets")
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    add_common_arguments(parser, params="synth", seed="global seed")


def run(args: argparse.Namespace) -> int:
    from segvol.synth.dataset import synthesize_dataset

    synthesize_dataset(args.dataset, args.out, args.seed, args.params, progress=not args.quiet)
    return 0
