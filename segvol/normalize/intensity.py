"""Foreground intensity normalization of CT volumes (facts §6.1), memory-lean.

    t      = mean of all voxels
    kept   = voxels > t                                   ("foreground")
    lo, hi = 0.05th / 99.95th percentiles of kept (numpy's linear interpolation)
    mu, sd = mean / std of kept
    x      = (clip(x, lo, hi) - mu) / max(sd, 1e-8)
    x      = (x - min x) / max(max x - min x, 1e-8)        -> [0, 1]

Temporaries: one boolean mask and one copy of the kept voxels in the input dtype (released
before the float32 output is allocated), so the peak stays near input + float32 output.
"""

from __future__ import annotations

import numpy as np

LOWER_PERCENTILE = 0.05
UPPER_PERCENTILE = 99.95
EPSILON = 1e-8
_BLOCK = 1 << 22  # elements per block for the float64 sums (32 MiB of float64)


def _blockwise_mean(values: np.ndarray) -> float:
    flat = values.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, _BLOCK):
        total += float(flat[start : start + _BLOCK].sum(dtype=np.float64))
    return total / flat.size


def _blockwise_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std in float64, two passes over blocks (no full float64 temporary)."""
    flat = values.reshape(-1)
    count = flat.size
    mean = _blockwise_mean(flat)
    squares = 0.0
    for start in range(0, count, _BLOCK):
        block = flat[start : start + _BLOCK].astype(np.float64)
        block -= mean
        squares += float(np.dot(block, block))
    return mean, float(np.sqrt(squares / count))


def foreground_statistics(hu: np.ndarray) -> dict:
    """The §6.1 statistics of a raw CT volume: threshold, lower, upper, mean, std (floats)."""
    hu = np.asarray(hu)
    if hu.size == 0:
        raise ValueError("cannot normalize an empty volume")
    if not (np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)):
        raise ValueError(f"cannot normalize voxels of type {hu.dtype}")
    threshold = _blockwise_mean(hu)
    if not np.isfinite(threshold):
        raise ValueError("volume contains NaN or infinite values")
    kept = hu[hu > threshold]
    if kept.size == 0:
        raise ValueError(f"volume is constant ({threshold:g} everywhere): no foreground to normalize")
    mean, std = _blockwise_mean_std(kept)
    # overwrite_input: `kept` is our own temporary, so percentile may partition it in place.
    lower, upper = np.percentile(kept, [LOWER_PERCENTILE, UPPER_PERCENTILE], overwrite_input=True)
    return {"threshold": float(threshold), "lower": float(lower), "upper": float(upper),
            "mean": mean, "std": std}


def foreground_normalize(hu: np.ndarray, stats: dict | None = None) -> np.ndarray:
    """Raw CT (any shape, HU as stored) -> float32 in [0, 1], per facts §6.1 then min-max.

    Raises ValueError for NaN/inf voxels and for constant volumes (nothing above the mean).
    """
    hu = np.asarray(hu)
    stats = stats or foreground_statistics(hu)
    out = hu.astype(np.float32)  # the only full-size allocation
    np.clip(out, np.float32(stats["lower"]), np.float32(stats["upper"]), out=out)
    out -= np.float32(stats["mean"])
    out /= np.float32(max(stats["std"], EPSILON))
    low, high = float(out.min()), float(out.max())
    out -= np.float32(low)
    out /= np.float32(max(high - low, EPSILON))
    return out
