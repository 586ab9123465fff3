"""Table 2: median Dice per (dataset, category) and method, merged from `segvol evaluate cases` outputs;
with --lesions also its lesion rows counted lesion by lesion (`segvol.evaluate.lesions`), in a CSV of
their own so that the Dice table keeps its columns.

Example:
  segvol evaluate table2 --cases results/cases/*.parquet --out results/table2.csv \\
      --per-case results/table2_per_case.parquet --methods results/table2_methods.json \\
      --lesions results/table2_lesions.csv
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--cases", nargs="+", required=True, help="outputs of `segvol evaluate cases`")
    parser.add_argument("--out", required=True, help="table CSV")
    parser.add_argument("--per-case", required=True, help="all per-case rows, one parquet")
    parser.add_argument("--methods", required=True, help="JSON sidecar: per column ran/not run and why, means")
    parser.add_argument(
        "--lesions",
        default=None,
        help="CSV of the lesion rows, lesion-wise: detected/missed lesions, false positives,"
        " sensitivity, precision, F1 per method (segvol.evaluate.lesions); not written when omitted",
    )
    evaluation_flags(parser, model=False)


def run(args, settings) -> int:
    from segvol.evaluate.cases import read_parquet_metadata, write_parquet
    from segvol.evaluate.metrics import summarize
    from segvol.evaluate.tables import table_columns, write_csv, write_json

    columns = table_columns(settings["methods"])
    frames, reasons, skipped = [], {}, []
    for path in args.cases:
        frames.append(pd.read_parquet(path))
        meta = read_parquet_metadata(path)
        for column, reason in meta.get("methods", {}).items():
            reasons.setdefault(column, {})[meta.get("store", path)] = reason
        skipped += meta.get("skipped", [])
    per_case = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table = table2(per_case, columns)
    sidecar = {
        "columns": {c: reasons.get(c, {"-": "not run: not evaluated"}) for c in columns},
        "skipped": skipped,
        "aggregation": "cell = median Dice over cases; Average = mean of the dataset's category medians;"
        " both-empty masks are skipped (NaN), see segvol.evaluate.metrics",
        "means": summarize(per_case, ["dataset", "category", "method"]).to_dict("records") if len(per_case) else [],
        "nsd_medians": summarize(per_case, ["dataset", "category", "method"], "nsd").to_dict("records")
        if len(per_case)
        else [],
    }
    write_parquet(per_case, args.per_case)
    write_json(sidecar, args.methods)
    if args.lesions:
        from segvol.evaluate.lesions import write_lesion_table

        lesions = write_lesion_table(per_case, columns, args.lesions)
        log.info("Table 2, lesion-wise:\n%s", lesions.to_string(index=False))
    write_csv(table, args.out)
    log.info("Table 2:\n%s", table.to_string(index=False))
    return 0


def table2(per_case: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows (dataset, category) + an `Average` row per dataset; cells = median Dice over cases.

    The Average row is the mean of that dataset's category medians (the paper's layout); a
    method without rows keeps an empty column — never an invented number.
    """
    scored = per_case.dropna(subset=["dice"])
    medians = scored.groupby(["dataset", "category", "method"], sort=False)["dice"].median().unstack("method")
    medians = medians.reindex(columns=list(columns))
    blocks = []
    for dataset, block in medians.groupby(level="dataset", sort=False):
        block = block.reset_index()
        average = {"dataset": dataset, "category": "Average", **block[list(columns)].mean(skipna=True).to_dict()}
        blocks.append(pd.concat([block, pd.DataFrame([average])], ignore_index=True))
    if not blocks:
        return pd.DataFrame(columns=["dataset", "category", *columns])
    result = pd.concat(blocks, ignore_index=True)[["dataset", "category", *columns]]
    return result
