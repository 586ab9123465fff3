"""Reading evaluation cases from a dataset Zarr store (CONTRIBUTING.md, "Zarr store contract")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    """Open a dataset store read-only, with a clear error when it is missing or not a dataset store."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Zarr store not found")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a folder that is not a group
        raise ValueError(f"{path}: not a readable Zarr group ({error})") from error
    for key in ("categories", "cases"):
        if key not in root.attrs:
            raise ValueError(f"{path}: root attribute '{key}' is missing; not a dataset store")
    return root


def dataset_name(root, path: str | Path) -> str:
    return str(root.attrs.get("dataset") or Path(path).name.removesuffix(".zarr"))


def select_cases(root, split: str) -> list[str]:
    """Case ids of `split`: "all" (external test sets), "test" or "train" (the stored split)."""
    cases = list(root.attrs["cases"])
    if split == "all":
        return cases
    stored = root.attrs.get("split") or {}
    if split not in stored:
        raise ValueError(f"store has no '{split}' split (root attribute 'split' lacks it)")
    return list(stored[split])


def read_case(root, case: str, path: str | Path = "") -> Case:
    """Load one case and check it against the contract (shapes, grid, finiteness)."""
    if case not in root:
        raise ValueError(f"{path}: case '{case}' is listed but has no group")
    group = root[case]
    if "labels" not in group:
        raise ValueError(f"{path}/{case}: no 'labels' array; evaluation needs a labelled store")
    image = np.asarray(group["image"][...], dtype=np.float32)
    labels = np.asarray(group["labels"][...]) > 0
    categories = list(root.attrs["categories"])
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
    return Case(dataset_name(root, path), case, image, labels, categories, spacing)


def iter_cases(path: str | Path, split: str = "all", limit: int | None = None) -> Iterator[Case]:
    root = open_store(path)
    for index, case in enumerate(select_cases(root, split)):
        if limit is not None and index >= limit:
            return
        yield read_case(root, case, path)
