"""Fig 3b: Dice of each prompt combination (text, point, box, point+text, box+text).

Example:
  segvol evaluate fig3b --cases results/prompts/abdomen_a.parquet --out results/fig3b_prompts.csv \\
      --png results/figures/fig3b_prompts.png
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--cases", nargs="+", required=True, help="`cases --prompts ...` outputs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--png", required=True)
    evaluation_flags(parser, model=False)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.prompts import PROMPT_KINDS
    from segvol.evaluate.tables import write_csv

    frame = pd.concat([pd.read_parquet(p) for p in args.cases], ignore_index=True).dropna(subset=["dice"])
    summary = (
        frame.groupby(["category", "prompt"], sort=False)["dice"]
        .agg(median_dice="median", mean_dice="mean", scores="count")
        .reset_index()
    )
    overall = (
        frame.groupby("prompt", sort=False)["dice"]
        .agg(median_dice="median", mean_dice="mean", scores="count")
        .reset_index()
    )
    overall.insert(0, "category", "All")
    from segvol.evaluate.statistics import grouped_intervals

    summary = summary.merge(grouped_intervals(frame, ["category", "prompt"]), how="left")
    overall = overall.merge(grouped_intervals(frame, ["prompt"]), how="left")
    summary = pd.concat([summary, overall], ignore_index=True)
    order = [k for k in PROMPT_KINDS if k in set(summary["prompt"])]
    write_csv(summary, args.out)
    plots.grouped_bars(
        summary,
        "category",
        "prompt",
        "median_dice",
        args.png,
        "Prompt combinations (Fig 3b), internal test splits",
        "median Dice",
        palette=plots.PROMPT_COLOURS,
        series_order=order,
    )
    return 0
