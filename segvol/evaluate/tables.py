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


def table3(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per inference mode: median Dice over (case, category) and median ms per case.

    per_case needs columns case, dataset, mode, dice and `case_seconds` (all categories of a case).
    """
    order = {"resize": 0, "window": 1, "zoom": 2}
    labels = {"resize": "resize", "window": "sliding window", "zoom": "zoom-out-zoom-in"}
    rows = []
    for mode, block in per_case.groupby("mode"):
        per_case_time = block.drop_duplicates(["dataset", "case"])["case_seconds"]
        rows.append({
            "strategy": labels.get(mode, mode),
            "mode": mode,
            "median_dice": float(np.nanmedian(block["dice"])),
            "mean_dice": float(np.nanmean(block["dice"])),
            "median_ms_per_case": float(np.median(per_case_time) * 1000.0),
            "cases": int(block[["dataset", "case"]].drop_duplicates().shape[0]),
            "scores": int(block["dice"].notna().sum()),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("mode", key=lambda m: m.map(order).fillna(9)).reset_index(drop=True)


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
