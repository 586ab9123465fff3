"""Table 7: SegVol vs nnU-Net on the lesion categories, with the average Dice difference, from
`segvol evaluate taskspecific` outputs.

Example:
  segvol evaluate table7 --cases results/taskspecific/*.parquet --out results/table7.csv
"""

from __future__ import annotations

import logging

import pandas as pd

from segvol.evaluate.lesions import is_lesion
from segvol.evaluate.taskspecific import read_cases

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    evaluation_flags(parser, model=False)


def table7(per_case: pd.DataFrame, reference: str = "SegVol", other: str = "nnU-Net") -> pd.DataFrame:
    """Rows (dataset, lesion category) + an `Average` row: median Dice of both and `difference` (reference - other).

    Pairs count only where both methods scored the same (case, category); the Average row is the
    mean of the rows above, as the paper's "+14.76 %" average.
    """
    columns = ["dataset", "category", reference, other, "difference", "n"]
    lesions = per_case[per_case["category"].map(is_lesion)].dropna(subset=["dice"])
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
    average = {
        "dataset": "Average",
        "category": "",
        reference: table[reference].mean(),
        other: table[other].mean(),
        "difference": table["difference"].mean(),
        "n": int(table["n"].sum()),
    }
    return pd.concat([table, pd.DataFrame([average])], ignore_index=True)[columns]


def run(args, settings) -> int:
    from segvol.evaluate.tables import write_csv

    per_case = read_cases(args.cases)
    table = table7(per_case)
    if table.empty:
        log.warning("Table 7 is empty: no lesion category scored by both SegVol and nnU-Net in %s", args.cases)
    write_csv(table, args.out)
    log.info("Table 7:\n%s", table.to_string(index=False))
    return 0
