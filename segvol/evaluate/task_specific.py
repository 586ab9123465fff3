"""Appendix C of the paper: SegVol against task-specific models on each dataset's test split.

  taskspecific  per-case Dice/NSD of SegVol and the task-specific models of one store (its test split)
  fig9          Fig 9: violins of per-case Dice per dataset, SegVol vs each task-specific model
  table7        Table 7: SegVol vs nnU-Net on the lesion categories, with the average Dice difference
"""

from __future__ import annotations

import logging
import re

import pandas as pd

log = logging.getLogger("segvol.evaluate")

# Category names that are lesions (Table 7's rows): tumours, cancers, nodules, cysts, metastases.
LESION = re.compile(r"tumou?r|lesion|cancer|nodule|cyst|metasta|neoplasm|carcinoma", re.IGNORECASE)
ORDER = ["SegVol", "nnU-Net", "SwinUNETR", "3D UX-Net"]


def add_subcommands(commands, common) -> None:
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    p = commands.add_parser(
        "taskspecific", formatter_class=fmt, help="Dice/NSD of SegVol and task-specific models on a test split",
        description="Score SegVol (prompt `evaluate.prompt`, zoom-out-zoom-in) and the task-specific models\n"
        "trained on this store (`segvol taskspecific`) on the store's test split.\n\nExample:\n"
        "  segvol evaluate taskspecific --checkpoint models/finetune/segvol/model.safetensors \\\n"
        "      --zarr data/zarr/abdomen_a.zarr --models models/taskspecific/nnunet/abdomen_a \\\n"
        "      models/taskspecific/uxnet/abdomen_a --out results/taskspecific/abdomen_a.parquet")
    p.add_argument("--checkpoint", required=True, help="SegVol checkpoint")
    p.add_argument("--zarr", required=True, help="dataset store; its test split is scored")
    p.add_argument("--models", nargs="+", required=True, help="task-specific model folders of this dataset")
    p.add_argument("--out", required=True, help="per-case parquet")
    common(p)

    p = commands.add_parser(
        "fig9", formatter_class=fmt, help="Fig 9: per-dataset Dice violins, SegVol vs task-specific models",
        description="Fig 9 from `evaluate taskspecific` outputs.\n\nExample:\n"
        "  segvol evaluate fig9 --cases results/taskspecific/*.parquet --out results/fig9.csv \\\n"
        "      --png results/figures/fig9_taskspecific.png")
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--out", required=True, help="CSV: median/mean Dice per dataset and method")
    p.add_argument("--png", required=True)
    common(p, model=False)

    p = commands.add_parser(
        "table7", formatter_class=fmt, help="Table 7: SegVol vs nnU-Net on lesion categories",
        description="Table 7 from `evaluate taskspecific` outputs.\n\nExample:\n"
        "  segvol evaluate table7 --cases results/taskspecific/*.parquet --out results/table7.csv")
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--out", required=True)
    common(p, model=False)


def run_taskspecific(args, settings) -> int:
    from pathlib import Path

    from segvol.evaluate.baselines.task_specific import TaskSpecificMethod
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.stores import dataset_name, open_store

    root = open_store(args.zarr)
    store_name = dataset_name(root, args.zarr)
    baselines = [TaskSpecificMethod(folder) for folder in args.models]
    for method, folder in zip(baselines, args.models):
        if method.dataset != store_name:
            raise ValueError(f"{folder}: trained on {method.dataset!r}, not on {store_name!r} ({args.zarr})")
    methods = [SegVolMethod(load_segvol(args.checkpoint), prompt=settings["prompt"], mode="zoom",
                            overlap=settings["overlap"]), *baselines]
    rows, skipped = score_store(args.zarr, methods, seed=args.seed, split="test",
                                tolerance_mm=settings["nsd_tolerance_mm"], progress=True)
    metadata = {"store": str(Path(args.zarr)), "models": list(args.models), "skipped": skipped.to_dict("records")}
    write_parquet(rows, args.out, metadata)
    log.info("wrote %d rows to %s", len(rows), args.out)
    return 0


def _read(paths) -> pd.DataFrame:
    from pathlib import Path

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: per-case scores not found (an `evaluate taskspecific` output)")
    frames = [pd.read_parquet(path) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _methods(per_case: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(per_case["method"])) if len(per_case) else []
    return [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]


def fig9_summary(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method): median and mean Dice over every (case, category) of the test split."""
    from segvol.evaluate.metrics import summarize

    summary = summarize(per_case, ["dataset", "method"])
    order = {m: i for i, m in enumerate(_methods(per_case))}
    return summary.sort_values(["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c) \
        .reset_index(drop=True)


def run_fig9(args, settings) -> int:
    from segvol.evaluate import plots
    from segvol.evaluate.tables import write_csv

    per_case = _read(args.cases)
    pooled = per_case.assign(category="all categories")
    plots.violins(pooled, _methods(per_case), args.png,
                  "SegVol vs task-specific models: per-case Dice on each test split (Fig 9)")
    summary = fig9_summary(per_case)
    write_csv(summary, args.out)
    log.info("Fig 9:\n%s", summary.to_string(index=False))
    return 0


def table7(per_case: pd.DataFrame, reference: str = "SegVol", other: str = "nnU-Net") -> pd.DataFrame:
    """Rows (dataset, lesion category) + an `Average` row: median Dice of both and `difference` (reference - other).

    Pairs count only where both methods scored the same (case, category); the Average row is the
    mean of the rows above, as the paper's "+14.76 %" average.
    """
    columns = ["dataset", "category", reference, other, "difference", "n"]
    lesions = per_case[per_case["category"].map(lambda c: bool(LESION.search(str(c))))].dropna(subset=["dice"])
    pivot = lesions.pivot_table(index=["dataset", "category", "case"], columns="method", values="dice")
    if reference not in pivot or other not in pivot:
        return pd.DataFrame(columns=columns)
    pairs = pivot[[reference, other]].dropna()
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    grouped = pairs.groupby(level=["dataset", "category"], sort=True)
    table = grouped.median().reset_index()
    table["difference"] = table[reference] - table[other]
    table["n"] = grouped.size().to_numpy()
    average = {"dataset": "Average", "category": "", reference: table[reference].mean(),
               other: table[other].mean(), "difference": table["difference"].mean(), "n": int(table["n"].sum())}
    return pd.concat([table, pd.DataFrame([average])], ignore_index=True)[columns]


def run_table7(args, settings) -> int:
    from segvol.evaluate.tables import write_csv

    per_case = _read(args.cases)
    table = table7(per_case)
    if table.empty:
        log.warning("Table 7 is empty: no lesion category scored by both SegVol and nnU-Net in %s", args.cases)
    write_csv(table, args.out)
    log.info("Table 7:\n%s", table.to_string(index=False))
    return 0


HANDLERS = {"taskspecific": run_taskspecific, "fig9": run_fig9, "table7": run_table7}
