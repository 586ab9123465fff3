"""Fig 9: violins of per-case Dice per dataset, SegVol vs each task-specific model, from
`segvol evaluate taskspecific` outputs.

Example:
  segvol evaluate fig9 --cases results/taskspecific/*.parquet --out results/fig9.csv \\
      --png results/figures/fig9_taskspecific.png
"""

from __future__ import annotations

import logging

import pandas as pd

from segvol.evaluate.taskspecific import method_order, read_cases

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="CSV: median/mean Dice per dataset and method")
    parser.add_argument("--png", required=True)
    evaluation_flags(parser, model=False)


def fig9_summary(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method): median and mean Dice over every (case, category) of the test split."""
    from segvol.evaluate.metrics import summarize

    summary = summarize(per_case, ["dataset", "method"])
    order = {m: i for i, m in enumerate(method_order(per_case))}
    return summary.sort_values(
        ["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c
    ).reset_index(drop=True)


def run(args, settings) -> int:
    from segvol.evaluate import plots
    from segvol.evaluate.tables import write_csv

    per_case = read_cases(args.cases)
    pooled = per_case.assign(category="all categories")
    plots.violins(
        pooled,
        method_order(per_case),
        args.png,
        "SegVol vs task-specific models: per-case Dice on each test split (Fig 9)",
    )
    summary = fig9_summary(per_case)
    write_csv(summary, args.out)
    log.info("Fig 9:\n%s", summary.to_string(index=False))
    return 0
