"""Lesion-wise counts in the evaluation: per-case rows of `segvol evaluate cases`, Table 2's lesion rows."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import zarr

from segvol.cli import main
from segvol.evaluate.cases import score_store, write_parquet
from segvol.evaluate.lesions import LESION_COLUMNS, components, lesion_table
from segvol.evaluate.methods import Method

CATEGORIES = ["liver", "liver tumor", "kidney tumor"]
SHAPE = (12, 16, 24)


def write_store(path, dataset="ext_lesions"):
    """Two cases: liver tumour = 2 cubes in case_000, 3 in case_001 (one small); one kidney tumour each."""
    root = zarr.open_group(str(path), mode="w")
    cases = ["case_000", "case_001"]
    for index, case in enumerate(cases):
        labels = np.zeros((len(CATEGORIES), *SHAPE), np.uint8)
        labels[0, 1:11, 1:15, 1:12] = 1
        labels[1, 2:6, 2:6, 2:6] = 1
        labels[1, 2:5, 9:12, 2:5] = 1
        if index == 1:
            labels[1, 8:10, 2:4, 8:10] = 1
        labels[2, 3:8, 4:9, 15:20] = 1
        group = root.create_group(case)
        group.create_array("image", data=(0.2 + 0.3 * labels[0] + 0.4 * labels[1]).astype(np.float32))
        group.create_array("labels", data=labels)
        group.attrs["spacing"] = [2.0, 1.0, 1.0]
    root.attrs.update(
        {
            "dataset": dataset,
            "role": "external",
            "modality": "CT",
            "categories": CATEGORIES,
            "cases": cases,
            "split": {"train": cases, "test": [], "seed": 0, "test_fraction": 0.0},
            "format_version": 1,
        }
    )
    return path


class DropsTheSmallest(Method):
    """The truth without its smallest component when it has several; with two, also a false blob far away."""

    name, prompt = "SegVol", "box"

    def predict(self, volume, spacing, prompt):
        labels, count = components(prompt.truth)
        mask = prompt.truth.copy()
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            mask[labels == 1 + int(np.argmin(sizes))] = False
        if count == 2:
            mask[9:11, 12:15, 20:23] = True
        return mask


def test_cases_count_lesions_of_lesion_categories_and_table2_pools_them(tmp_path):
    rows, _ = score_store(write_store(tmp_path / "ext_lesions.zarr"), [DropsTheSmallest()])
    counts = rows.set_index(["case", "category"])
    liver_tumor = counts.loc[("case_000", "liver tumor")]
    assert (
        liver_tumor["lesion_reference"],
        liver_tumor["lesion_detected"],
        liver_tumor["lesion_missed"],
        liver_tumor["lesion_predicted"],
        liver_tumor["lesion_false_positives"],
    ) == (2, 1, 1, 2, 1)
    liver_tumor = counts.loc[("case_001", "liver tumor")]
    assert (
        liver_tumor["lesion_reference"],
        liver_tumor["lesion_detected"],
        liver_tumor["lesion_predicted"],
        liver_tumor["lesion_false_positives"],
    ) == (3, 2, 2, 0)
    kidney_tumor = counts.loc[("case_000", "kidney tumor")]
    assert (kidney_tumor["lesion_reference"], kidney_tumor["lesion_detected"]) == (1, 1)
    assert counts.loc[("case_000", "liver"), list(LESION_COLUMNS)].isna().all()  # an organ is not counted

    table = lesion_table(rows, ["SegVol", "MedSAM"]).set_index("category")
    assert list(table.index) == ["liver tumor", "kidney tumor", "All lesions"]
    assert set(table["method"]) == {"SegVol"}  # a method without rows gets none, never invented numbers
    liver_tumor = table.loc["liver tumor"]
    assert (
        liver_tumor["cases"],
        liver_tumor["reference"],
        liver_tumor["detected"],
        liver_tumor["missed"],
        liver_tumor["predicted"],
        liver_tumor["false_positives"],
    ) == (2, 5, 3, 2, 4, 1)
    assert liver_tumor["sensitivity"] == pytest.approx(3 / 5)  # pooled; the mean of the cases' rates is 7/12
    assert liver_tumor["precision"] == pytest.approx(3 / 4)
    assert liver_tumor["f1"] == pytest.approx(6 / (6 + 1 + 2))
    pooled = table.loc["All lesions"]
    assert (pooled["cases"], pooled["reference"], pooled["detected"], pooled["false_positives"]) == (2, 7, 5, 1)


def test_table2_csv_is_unchanged_and_old_case_files_get_a_warning(tmp_path, caplog):
    rows, _ = score_store(write_store(tmp_path / "ext_lesions.zarr"), [DropsTheSmallest()])
    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    write_parquet(rows, new)
    write_parquet(rows.drop(columns=list(LESION_COLUMNS)), old)  # as `segvol evaluate cases` wrote it before

    def table2(cases, name):
        out = tmp_path / name
        assert (
            main(
                [
                    "evaluate",
                    "table2",
                    "--cases",
                    str(cases),
                    "--out",
                    str(out / "table2.csv"),
                    "--per-case",
                    str(out / "per_case.parquet"),
                    "--methods",
                    str(out / "methods.json"),
                    "--lesions",
                    str(out / "table2_lesions.csv"),
                    "--params",
                    '{"methods": ["SegVol"]}',
                ]
            )
            == 0
        )
        return out

    with caplog.at_level(logging.WARNING, logger="segvol.evaluate"):
        before = table2(old, "before")
    assert "4 per-case rows of lesion categories have no lesion-wise counts" in caplog.text
    assert pd.read_csv(before / "table2_lesions.csv").empty
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segvol.evaluate"):
        after = table2(new, "after")
    assert "lesion-wise counts" not in caplog.text
    assert (after / "table2.csv").read_bytes() == (before / "table2.csv").read_bytes()

    lesions = pd.read_csv(after / "table2_lesions.csv")
    assert list(lesions.columns[:4]) == ["dataset", "category", "method", "cases"]
    assert list(lesions["category"]) == ["liver tumor", "kidney tumor", "All lesions"]
    assert math.isclose(lesions.loc[0, "sensitivity"], 0.6) and lesions.loc[0, "missed"] == 2
