"""Convert one raw dataset folder (dataset.json + NIfTI/NRRD/MHA/DICOM cases) into a normalized Zarr store.

Every case is reoriented to the canonical (D, H, W) = (S, A, R) array order (no resampling),
stored as int16 HU with its foreground normalization to [0, 1] applied on read, and its label map becomes one
uint8 channel per category (category names unified, e.g. "postcava" -> "inferior vena cava").
Train datasets get a seeded 80/20 split, external ones are all "test", unlabelled ones all
"train". The store appears only when every case succeeded.

example:
  segvol normalize --raw data/raw/abdomen_a --out data/zarr/abdomen_a.zarr --seed 2023 \\
      --params '{"test_fraction": 0.2, "chunks": [32, 128, 128], "shards": [128, 512, 512]}'
"""

from __future__ import annotations

from segvol.cli_options import add_common_arguments


def add_arguments(parser):
    parser.add_argument("--raw", required=True, help="dataset folder holding dataset.json")
    parser.add_argument("--out", required=True, help="output store, e.g. data/zarr/<dataset>.zarr")
    add_common_arguments(parser, params="normalize", seed="seed of the train/test split")


def run(args) -> int:
    from segvol.normalize.convert import build_store
    from segvol.settings import stage_settings

    settings = stage_settings("normalize", args.params)
    out = build_store(args.raw, args.out, args.seed, settings, progress=not args.quiet)
    print(out)
    return 0
