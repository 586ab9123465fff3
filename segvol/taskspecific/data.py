"""Training cases of a dataset store for the task-specific models (the store's own 80/20 split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def training_cases(store_path: str | Path, split: str = "train"):
    """(NormalizedStore, case ids of `split`), every case checked to carry labels."""
    from segvol.io.store import open_store

    store = open_store(store_path)
    cases = list(store.split.get(split) or [])
    if not cases:
        raise ValueError(f"{store_path}: the '{split}' split is empty; nothing to train a task-specific model on")
    for case in cases:
        if "labels" not in store.case(case):
            raise ValueError(f"{store_path}/{case}: no 'labels' array; task-specific training needs labels")
    return store, cases


def load_cases(store_path: str | Path, split: str = "train"):
    """All cases of `split` in memory: list of (image (D, H, W) float32, labels (C, D, H, W) uint8, spacing)."""
    store, cases = training_cases(store_path, split)
    loaded = []
    for case in cases:
        group = store.case(case)
        spacing = tuple(float(s) for s in store.case_attrs(case).get("spacing", (1.0, 1.0, 1.0)))
        loaded.append(
            (np.asarray(group["image"][...], np.float32), np.asarray(group["labels"][...], np.uint8), spacing)
        )
    return store, loaded
