"""Table 2 (median Dice per dataset/category/method) and Table 3 (inference strategies)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from segvol.evaluate.baselines import BASELINE_PROMPTS, column_name


def table_columns(methods: Sequence[str]) -> list[str]:
    """Table 2's method columns in order: SegVol, then one per (baseline, prompt)."""
    columns = []
    for method in methods:
        if method == "SegVol":
            columns.append("SegVol")
        else:
            columns.extend(column_name(method, prompt) for prompt in BASELINE_PROMPTS[method])
    return columns


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
        row = {"dataset": dataset, "category": category, "method": method, "median": interval.median,
               "ci_low": interval.low, "ci_high": interval.high, "n": interval.n,
               "median_difference": np.nan, "wilcoxon_p": np.nan, "n_pairs": 0}
        if method != reference:
            mine = block.set_index("case")["dice"]
            theirs = per_case[(per_case["dataset"] == dataset) & (per_case["category"] == category)
                              & (per_case["method"] == reference)].set_index("case")["dice"]
            common = mine.index.intersection(theirs.index)
            if len(common):
                test = paired_wilcoxon(theirs.loc[common].to_numpy(), mine.loc[common].to_numpy())
                row.update(median_difference=test.median_difference, wilcoxon_p=test.p_value, n_pairs=test.n)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "median", "ci_low", "ci_high", "n", "median_difference",
                                       "wilcoxon_p", "n_pairs"])


def table3(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per inference mode: median Dice over (case, category) and median ms per case.

    per_case needs columns case, dataset, mode, dice and `case_seconds` (all categories of a case).
    """
    from segvol.evaluate.statistics import median_interval

    order = {"resize": 0, "window": 1, "zoom": 2}
    labels = {"resize": "resize", "window": "sliding window", "zoom": "zoom-out-zoom-in"}
    rows = []
    for mode, block in per_case.groupby("mode"):
        per_case_time = block.drop_duplicates(["dataset", "case"])["case_seconds"]
        interval = median_interval(block["dice"].to_numpy())
        rows.append({
            "strategy": labels.get(mode, mode),
            "mode": mode,
            "median_dice": float(np.nanmedian(block["dice"])),
            "ci_low": interval.low,
            "ci_high": interval.high,
            "mean_dice": float(np.nanmean(block["dice"])),
            "median_ms_per_case": float(np.median(per_case_time) * 1000.0),
            "cases": int(block[["dataset", "case"]].drop_duplicates().shape[0]),
            "scores": int(block["dice"].notna().sum()),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values("mode", key=lambda m: m.map(order).fillna(9)).reset_index(drop=True)
    frame["paper_claim"] = ""
    if {"zoom", "window"} <= set(frame["mode"]):
        frame.loc[frame["mode"] == "zoom", "paper_claim"] = zoom_claim(frame)
    return frame


PAPER_TABLE3 = {"zoom": 0.7298, "window": 0.6529}


def zoom_claim(table: pd.DataFrame) -> str:
    """Whether this run shows the paper's Table 3 claim (zoom-out-zoom-in beats the sliding window
    at less cost), with the numbers of both."""
    row = table.set_index("mode")
    zoom, window = row.loc["zoom", "median_dice"], row.loc["window", "median_dice"]
    cheaper = row.loc["zoom", "median_ms_per_case"] < row.loc["window", "median_ms_per_case"]
    holds = zoom > window
    return (f"paper: zoom-out-zoom-in {PAPER_TABLE3['zoom']:.4f} > sliding window {PAPER_TABLE3['window']:.4f}; "
            f"here: {zoom:.4f} {'>' if holds else '<='} {window:.4f} ({'holds' if holds else 'does not hold'}),"
            f" {'cheaper' if cheaper else 'not cheaper'} per case")


def scaling_claim(summary: pd.DataFrame, tolerance: float = 0.02) -> str:
    """Whether Dice rises with the number of training datasets (the paper's Fig 3a), with numbers."""
    if len(summary) < 2:
        return "one run only: no trend to compare with the paper"
    ordered = summary.sort_values("n_datasets", kind="stable")
    first, last = ordered.iloc[0], ordered.iloc[-1]
    change = float(last["median_dice"] - first["median_dice"])
    trend = "rises" if change > tolerance else "falls" if change < -tolerance else "is flat"
    verdict = "holds" if trend == "rises" else "does not hold"
    return (f"paper: Dice rises with more datasets; here it {trend}: {first['median_dice']:.2f} with "
            f"{int(first['n_datasets'])} -> {last['median_dice']:.2f} with {int(last['n_datasets'])} ({verdict})")


def write_csv(frame: pd.DataFrame, path) -> None:
    from segvol.io.atomic import atomic_path

    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, float_format="%.4f")
    from segvol.provenance import write_sidecar

    write_sidecar(path)


def write_json(payload, path) -> None:
    import json

    from segvol.io.atomic import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
