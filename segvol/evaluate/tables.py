"""What every table shares: Table 2's method columns and the writers of CSV tables and JSON sidecars
(atomic, with the provenance sidecar of `segvol.provenance`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from segvol.evaluate.baselines import BASELINE_PROMPTS, column_name

if TYPE_CHECKING:
    import pandas as pd


def table_columns(methods: Sequence[str]) -> list[str]:
    """Table 2's method columns in order: SegVol, then one per (baseline, prompt)."""
    columns = []
    for method in methods:
        if method == "SegVol":
            columns.append("SegVol")
        else:
            columns.extend(column_name(method, prompt) for prompt in BASELINE_PROMPTS[method])
    return columns


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
