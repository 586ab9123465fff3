"""Segmentation metrics of the paper's evaluation: Dice, the official smoothed Dice and NSD.

Empty-ground-truth policy (one place, used everywhere):
- ground truth empty and prediction empty -> Dice NaN ("nothing to segment": the case is skipped
  and excluded from medians, like the official evaluation, which never prompts an absent category);
- ground truth empty and prediction non-empty -> Dice 0 (every predicted voxel is a false positive);
- ground truth non-empty and prediction empty -> Dice 0.
NSD follows the same rule (MONAI returns NaN for two empty masks and 0 when one is empty).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def _binary_pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} does not match ground truth shape {truth.shape}")
    return prediction, truth


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|P∩G| / (|P| + |G|) of two binary masks of the same shape; NaN when both are empty."""
    prediction, truth = _binary_pair(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return float("nan")
    overlap = int(np.logical_and(prediction, truth).sum())
    return 2.0 * overlap / total


def dice_official(prediction: np.ndarray, truth: np.ndarray) -> float:
    """The released SegVol helper's Dice: 2|P∩G| / (|P| + |G| + 1); 0 for two empty masks (docs/method.md#evaluation).

    Reported next to `dice` only for comparison: the +1 lowers the score of small structures.
    """
    prediction, truth = _binary_pair(prediction, truth)
    overlap = int(np.logical_and(prediction, truth).sum())
    return 2.0 * overlap / (int(prediction.sum()) + int(truth.sum()) + 1)


def normalized_surface_dice(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> float:
    """Normalized surface Dice at `tolerance_mm` (MONAI `compute_surface_dice`, edge voxels as surface).

    prediction, truth: binary (D, H, W) masks; spacing: voxel size in mm in the same (D, H, W) order.
    NaN when both masks are empty, 0 when exactly one is.
    """
    import torch
    from monai.metrics import compute_surface_dice

    prediction, truth = _binary_pair(prediction, truth)
    if prediction.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"NSD needs 3-D masks and a 3-value spacing, got {prediction.shape} and {spacing}")
    if not prediction.any() and not truth.any():
        return float("nan")
    if prediction.any() != truth.any():
        return 0.0
    # Only the masks' bounding box (plus one voxel, so that edges and distances inside it are those of
    # the whole volume) reaches MONAI: same value, a fraction of the memory of whole-volume one-hots.
    prediction, truth = _crop_to_union(prediction, truth, margin=1)

    # MONAI wants one-hot batches (B, C, ...); channel 0 is a background it is told to ignore.
    def one_hot(mask: np.ndarray) -> torch.Tensor:
        foreground = torch.from_numpy(mask)
        return torch.stack([~foreground, foreground])[None].float()

    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own internal use of a deprecated argument on every call.
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(
            one_hot(prediction),
            one_hot(truth),
            class_thresholds=[float(tolerance_mm)],
            include_background=False,
            spacing=[float(s) for s in spacing],
        )
    return float(value.reshape(-1)[0])


def _crop_to_union(prediction: np.ndarray, truth: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, grown by `margin` voxels (within the volume)."""
    union = prediction | truth
    window = []
    for axis in range(union.ndim):
        occupied = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        window.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + margin + 1, union.shape[axis])))
    window = tuple(window)
    return prediction[window], truth[window]


def summarize(scores, by: Sequence[str], value: str = "dice"):
    """Per-group median (the paper's table cell) plus mean, std and count of non-NaN scores.

    scores: a tidy pandas DataFrame; returns one row per group with columns
    `median`, `mean`, `std`, `n` (NaN scores are skipped, see the module's empty-GT policy).
    """
    grouped = scores.dropna(subset=[value]).groupby(list(by), sort=False)[value]
    return grouped.agg(median="median", mean="mean", std="std", n="count").reset_index()
