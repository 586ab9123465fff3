"""Reading evaluation cases from a dataset Zarr store (CONTRIBUTING.md, "Zarr store contract"),
through the checked read path of `segvol.io.store` (a corrupt chunk is an error, never a score)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    """One labelled case. image: (D, H, W) float32 in [0, 1]; labels: (C, D, H, W) bool."""

    dataset: str
    case: str
    image: np.ndarray
    labels: np.ndarray
    categories: list[str]
    spacing: tuple[float, float, float]


def open_store(path: str | Path):
    """A dataset store read through the integrity checks of `segvol.io.store`."""
    from segvol.io.store import open_store as open_checked_store

    return open_checked_store(path)


def dataset_name(store, path: str | Path = "") -> str:
    return store.name


def select_cases(store, split: str) -> list[str]:
    """Case ids of `split`: "all" (external test sets), "test" or "train" (the stored split)."""
    if split == "all":
        return store.cases
    if split not in store.split:
        raise ValueError(f"{store.path}: store has no '{split}' split (root attribute 'split' lacks it)")
    return list(store.split[split])


def read_case(store, case: str, path: str | Path = "") -> Case:
    """Load one case (checked against its integrity record) and check it against the contract."""
    path = store.path
    group = store.case(case)
    if "labels" not in group:
        raise ValueError(f"{path}/{case}: no 'labels' array; evaluation needs a labelled store")
    image = np.asarray(group["image"][...], dtype=np.float32)
    labels = np.asarray(group["labels"][...]) > 0
    categories = store.categories
    if image.ndim != 3:
        raise ValueError(f"{path}/{case}/image: expected (D, H, W), got shape {image.shape}")
    if labels.ndim != 4 or labels.shape[1:] != image.shape or labels.shape[0] != len(categories):
        raise ValueError(
            f"{path}/{case}/labels: shape {labels.shape} does not match image {image.shape}"
            f" with {len(categories)} categories"
        )
    if not np.isfinite(image).all():
        raise ValueError(f"{path}/{case}/image: contains NaN or infinite values")
    spacing = tuple(float(s) for s in group.attrs.get("spacing", (1.0, 1.0, 1.0)))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"{path}/{case}: invalid spacing {spacing}")
    return Case(store.name, case, image, labels, categories, spacing)


def iter_cases(path: str | Path, split: str = "all", limit: int | None = None) -> Iterator[Case]:
    root = open_store(path)
    for index, case in enumerate(select_cases(root, split)):
        if limit is not None and index >= limit:
            return
        yield read_case(root, case, path)
