"""Fig 3a: data scaling, Dice of the `first<N>` fine-tuning runs and of `segvol` (all datasets).

Example:
  segvol evaluate fig3a --cases results/scaling/first1.parquet results/scaling/segvol.parquet --total 3 \\
      --out results/fig3a_scaling.csv --png results/figures/fig3a_scaling.png
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--cases", nargs="+", required=True, help="`cases --label <run>` outputs, one per run")
    parser.add_argument("--total", type=int, required=True, help="number of training datasets of the `segvol` run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--png", required=True)
    evaluation_flags(parser, model=False)


def run_number(run: str, total: int) -> int:
    if run == "segvol":
        return total
    match = re.fullmatch(r"first(\d+)", run)
    if not match:
        raise ValueError(f"run name {run!r} is neither 'segvol' nor 'first<N>'")
    return int(match.group(1))


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.statistics import median_interval
    from segvol.evaluate.tables import write_csv

    rows = []
    for path in args.cases:
        frame = pd.read_parquet(path).dropna(subset=["dice"])
        for run, block in frame.groupby("method"):
            dice = block["dice"].to_numpy()
            interval = median_interval(dice)
            rows.append(
                {
                    "run": run,
                    "n_datasets": run_number(run, args.total),
                    "median_dice": np.median(dice),
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "q25": np.quantile(dice, 0.25),
                    "q75": np.quantile(dice, 0.75),
                    "mean_dice": dice.mean(),
                    "scores": len(dice),
                }
            )
    summary = pd.DataFrame(
        rows, columns=["run", "n_datasets", "median_dice", "ci_low", "ci_high", "q25", "q75", "mean_dice", "scores"]
    )
    summary = summary.sort_values("n_datasets", kind="stable").reset_index(drop=True)
    claim = scaling_claim(summary)
    summary["paper_claim"] = claim
    log.info("Fig 3a: %s", claim)
    write_csv(summary, args.out)
    plots.lines(
        summary,
        "n_datasets",
        "median_dice",
        args.png,
        f"Data scaling (Fig 3a): more training datasets\n{claim}",
        "training datasets",
        "median Dice (interquartile band)",
        low="q25",
        high="q75",
        label="run",
    )
    return 0


def scaling_claim(summary: pd.DataFrame, tolerance: float = 0.02) -> str:
    """Whether Dice rises with the number of training datasets (the paper's Fig 3a), with numbers."""
    if len(summary) < 2:
        return "one run only: no trend to compare with the paper"
    ordered = summary.sort_values("n_datasets", kind="stable")
    first, last = ordered.iloc[0], ordered.iloc[-1]
    change = float(last["median_dice"] - first["median_dice"])
    trend = "rises" if change > tolerance else "falls" if change < -tolerance else "is flat"
    verdict = "holds" if trend == "rises" else "does not hold"
    return (
        f"paper: Dice rises with more datasets; here it {trend}: {first['median_dice']:.2f} with "
        f"{int(first['n_datasets'])} -> {last['median_dice']:.2f} with {int(last['n_datasets'])} ({verdict})"
    )
