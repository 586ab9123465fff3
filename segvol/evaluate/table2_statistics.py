"""Table 2 statistics: the bootstrap confidence interval of every cell's median and, against SegVol on the same
cases, the paired Wilcoxon test (`segvol.evaluate.statistics`).

Example:
  segvol evaluate statistics --per-case results/table2_per_case.parquet --out results/table2_statistics.csv
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--per-case", required=True, help="Table 2's per-case rows")
    parser.add_argument("--out", required=True)
    evaluation_flags(parser, model=False)


def run(args, settings) -> int:
    from segvol.evaluate.tables import write_csv

    per_case = pd.read_parquet(args.per_case)
    write_csv(table2_statistics(per_case), args.out)
    return 0


def table2_statistics(per_case: pd.DataFrame, reference: str = "SegVol", seed: int = 0) -> pd.DataFrame:
    """Table 2's cells with their uncertainty: one row per (dataset, category, method).

    Columns: `median`, `ci_low`/`ci_high` (bootstrap 95 % interval of the median), `n` (cases), and
    against `reference` on the same cases: `median_difference` (reference - method), `wilcoxon_p`
    (paired, two-sided) and `n_pairs`. The reference's own rows leave the paired columns empty.
    """
    from segvol.evaluate.statistics import median_interval, paired_wilcoxon

    rows = []
    keys = ["dataset", "category", "method"]
    for (dataset, category, method), block in per_case.groupby(keys, sort=False):
        interval = median_interval(block["dice"].to_numpy(), seed=seed)
        row = {
            "dataset": dataset,
            "category": category,
            "method": method,
            "median": interval.median,
            "ci_low": interval.low,
            "ci_high": interval.high,
            "n": interval.n,
            "median_difference": np.nan,
            "wilcoxon_p": np.nan,
            "n_pairs": 0,
        }
        if method != reference:
            mine = block.set_index("case")["dice"]
            theirs = per_case[
                (per_case["dataset"] == dataset)
                & (per_case["category"] == category)
                & (per_case["method"] == reference)
            ].set_index("case")["dice"]
            common = mine.index.intersection(theirs.index)
            if len(common):
                test = paired_wilcoxon(theirs.loc[common].to_numpy(), mine.loc[common].to_numpy())
                row.update(median_difference=test.median_difference, wilcoxon_p=test.p_value, n_pairs=test.n)
        rows.append(row)
    return pd.DataFrame(
        rows, columns=[*keys, "median", "ci_low", "ci_high", "n", "median_difference", "wilcoxon_p", "n_pairs"]
    )
