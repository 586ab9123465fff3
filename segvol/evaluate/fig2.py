"""Fig 2: violin plots of per-case Dice per task and method (from Table 2's per-case rows).

Example:
  segvol evaluate fig2 --per-case results/table2_per_case.parquet --png results/figures/fig2_violin.png
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--per-case", required=True)
    parser.add_argument("--png", required=True)
    evaluation_flags(parser, model=False)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.tables import table_columns

    per_case = pd.read_parquet(args.per_case)
    present = set(per_case["method"]) if len(per_case) else set()
    methods = [m for m in table_columns(settings["methods"]) if m in present]
    plots.violins(per_case, methods, args.png, "Per-case Dice on the external test sets (Fig 2)")
    return 0
