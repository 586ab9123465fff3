"""Appendix C of the paper: per-case Dice/NSD of SegVol and the task-specific models (nnU-Net, SwinUNETR, 3D
UX-Net, trained on this store by `segvol taskspecific`) on a store's test split; Fig 9 and Table 7 read them.

Example:
  segvol evaluate taskspecific --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/abdomen_a.zarr --models models/taskspecific/nnunet/abdomen_a \\
      models/taskspecific/uxnet/abdomen_a --out results/taskspecific/abdomen_a.parquet
"""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True, help="SegVol checkpoint")
    parser.add_argument("--zarr", required=True, help="dataset store; its test split is scored")
    parser.add_argument("--models", nargs="+", required=True, help="task-specific model folders of this dataset")
    parser.add_argument("--out", required=True, help="per-case parquet")
    evaluation_flags(parser)


# the columns of Fig 9, in this order; other methods follow
ORDER = ["SegVol", "nnU-Net", "SwinUNETR", "3D UX-Net"]


def run(args, settings) -> int:
    from pathlib import Path

    from segvol.evaluate.baselines.taskspecific import TaskSpecificMethod
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.stores import dataset_name, open_store

    root = open_store(args.zarr)
    store_name = dataset_name(root, args.zarr)
    baselines = [TaskSpecificMethod(folder) for folder in args.models]
    for method, folder in zip(baselines, args.models):
        if method.dataset != store_name:
            raise ValueError(f"{folder}: trained on {method.dataset!r}, not on {store_name!r} ({args.zarr})")
    methods = [
        SegVolMethod(load_segvol(args.checkpoint), prompt=settings["prompt"], mode="zoom", overlap=settings["overlap"]),
        *baselines,
    ]
    rows, skipped = score_store(
        args.zarr, methods, seed=args.seed, split="test", tolerance_mm=settings["nsd_tolerance_mm"], progress=True
    )
    metadata = {"store": str(Path(args.zarr)), "models": list(args.models), "skipped": skipped.to_dict("records")}
    write_parquet(rows, args.out, metadata)
    log.info("wrote %d rows to %s", len(rows), args.out)
    return 0


def read_cases(paths) -> pd.DataFrame:
    """The rows of `segvol evaluate taskspecific` outputs, concatenated."""
    from pathlib import Path

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: per-case scores not found (an `evaluate taskspecific` output)")
    frames = [pd.read_parquet(path) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def method_order(per_case: pd.DataFrame) -> list[str]:
    """The methods of `per_case` in the order of `ORDER`, then any other in order of appearance."""
    present = list(dict.fromkeys(per_case["method"])) if len(per_case) else []
    return [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]
