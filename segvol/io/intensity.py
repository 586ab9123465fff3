"""Foreground intensity normalization of CT volumes (docs/method.md#intensity-normalization), fast and memory-lean.

    t      = mean of all voxels
    kept   = voxels > t                                   ("foreground")
    lo, hi = 0.05th / 99.95th percentiles of kept (numpy's default linear interpolation)
    mu, sd = mean / std of kept
    z      = (clip(x, lo, hi) - mu) / max(sd, 1e-8)
    out    = (z - min z) / max(max z - min z, 1e-8)        -> float32 in [0, 1]

Two facts make this cheap:
* Integer CT (the usual int16/int32 HU) has few distinct values, so all statistics come exactly
  from a histogram built block by block: no boolean mask, no copy of the kept voxels.
* min z and max z need no pass over the output: some voxel is <= t < lo (nothing above the mean
  would be impossible) and the largest voxel is kept and >= hi, so after clipping the extremes
  are exactly lo and hi. The final map is therefore a per-voxel function of global constants and
  can be applied slab by slab (`apply_normalization`), e.g. shard by shard while writing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LOWER_PERCENTILE = 0.05
UPPER_PERCENTILE = 99.95
EPSILON = 1e-8
_BLOCK = 1 << 22  # voxels per block of the blockwise passes (16-32 MiB temporaries)
_MAX_HISTOGRAM_BINS = 1 << 22  # integer volumes spanning more values use the generic path


def _blocks(values: np.ndarray):
    flat = values.reshape(-1)
    for start in range(0, flat.size, _BLOCK):
        yield flat[start : start + _BLOCK]


def _percentiles_from_histogram(values: np.ndarray, counts: np.ndarray, quantiles) -> list[float]:
    """numpy's 'linear' percentiles of the multiset {values[i] repeated counts[i] times}."""
    total = int(counts.sum())
    ends = np.cumsum(counts)  # order statistic k (0-based) is values[searchsorted(ends, k, 'right')]
    result = []
    for q in quantiles:
        position = q / 100.0 * (total - 1)
        below = int(np.floor(position))
        fraction = position - below
        above = min(below + 1, total - 1)
        low = float(values[np.searchsorted(ends, below, side="right")])
        high = float(values[np.searchsorted(ends, above, side="right")])
        result.append(low + (high - low) * fraction)
    return result


def _integer_statistics(hu: np.ndarray) -> dict | None:
    low = min(int(block.min()) for block in _blocks(hu))
    high = max(int(block.max()) for block in _blocks(hu))
    if high - low + 1 > _MAX_HISTOGRAM_BINS:
        return None
    counts = np.zeros(high - low + 1, dtype=np.int64)
    for block in _blocks(hu):
        counts += np.bincount((block.astype(np.int64) - low), minlength=counts.size)
    values = np.arange(low, high + 1, dtype=np.float64)
    threshold = float(np.dot(counts, values) / counts.sum())
    keep = values > threshold
    kept_values, kept_counts = values[keep], counts[keep]
    present = kept_counts > 0
    kept_values, kept_counts = kept_values[present], kept_counts[present]
    if kept_counts.size == 0:
        return {"threshold": threshold, "kept": 0}
    n = float(kept_counts.sum())
    mean = float(np.dot(kept_counts, kept_values) / n)
    std = float(np.sqrt(np.dot(kept_counts, (kept_values - mean) ** 2) / n))
    lower, upper = _percentiles_from_histogram(kept_values, kept_counts, [LOWER_PERCENTILE, UPPER_PERCENTILE])
    return {"threshold": threshold, "lower": lower, "upper": upper, "mean": mean, "std": std, "kept": int(n)}


def _generic_statistics(hu: np.ndarray) -> dict:
    total = 0.0
    for block in _blocks(hu):
        total += float(block.sum(dtype=np.float64))
    threshold = total / hu.size
    if not np.isfinite(threshold):
        raise ValueError("volume contains NaN or infinite values")
    kept = hu[hu > threshold]
    if kept.size == 0:
        return {"threshold": threshold, "kept": 0}
    mean = sum(float(block.sum(dtype=np.float64)) for block in _blocks(kept)) / kept.size
    squares = 0.0
    for block in _blocks(kept):
        deviation = block.astype(np.float64) - mean
        squares += float(np.dot(deviation, deviation))
    # overwrite_input: `kept` is our own temporary, so percentile may partition it in place.
    lower, upper = np.percentile(kept, [LOWER_PERCENTILE, UPPER_PERCENTILE], overwrite_input=True)
    return {
        "threshold": threshold,
        "lower": float(lower),
        "upper": float(upper),
        "mean": mean,
        "std": float(np.sqrt(squares / kept.size)),
        "kept": int(kept.size),
    }


def foreground_statistics(hu: np.ndarray) -> dict:
    """The foreground statistics of a raw CT volume: threshold, lower, upper, mean, std, kept (count).

    Raises ValueError for empty, non-numeric, NaN/inf or constant volumes.
    """
    hu = np.asarray(hu)
    if hu.size == 0:
        raise ValueError("cannot normalize an empty volume")
    if hu.dtype == bool or not (np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)):
        raise ValueError(f"cannot normalize voxels of type {hu.dtype}")
    stats = _integer_statistics(hu) if np.issubdtype(hu.dtype, np.integer) else None
    if stats is None:
        stats = _generic_statistics(hu)
    if stats["kept"] == 0:
        raise ValueError(f"volume is constant ({stats['threshold']:g} everywhere): no foreground to normalize")
    return stats


def _output_range(stats: dict) -> tuple[np.float32, np.float32]:
    """min z and max z, computed with the very float32 operations applied to each voxel."""
    extremes = np.array([stats["lower"], stats["upper"]], dtype=np.float32)
    extremes -= np.float32(stats["mean"])
    extremes /= np.float32(max(stats["std"], EPSILON))
    return extremes[0], extremes[1]


def apply_normalization(hu: np.ndarray, stats: dict, out: np.ndarray | None = None) -> np.ndarray:
    """Map any slab of the volume `stats` came from to its final float32 [0, 1] values.

    Per voxel, in float32: x = float32(hu); clip to [lower, upper]; (x - mean) / std; then
    (z - min z) / (max z - min z). One compiled pass (`_normalize_voxels`); the same float32
    operations in the same order as numpy's blockwise clip/subtract/divide, so the values are
    bit-identical to them (tests/test_store_format.py compares with that numpy sequence) at
    about 8x the speed, which matters now that stores normalize on every read.
    """
    hu = np.ascontiguousarray(hu)
    if out is None:
        out = np.empty(hu.shape, dtype=np.float32)
    if not out.flags.c_contiguous:
        raise ValueError("`out` must be contiguous")
    z_low, z_high = _output_range(stats)
    lower, upper = np.float32(stats["lower"]), np.float32(stats["upper"])
    mean, scale = np.float32(stats["mean"]), np.float32(max(stats["std"], EPSILON))
    span = np.float32(max(float(z_high) - float(z_low), EPSILON))
    _normalize_voxels(hu.reshape(-1), out.reshape(-1), lower, upper, mean, scale, z_low, span)
    return out


@njit(cache=True, nogil=True)
def _normalize_voxels(source, target, lower, upper, mean, scale, z_low, span):  # pragma: no cover (compiled)
    for index in range(source.size):
        value = np.float32(source[index])
        if value < lower:  # NaN compares false both ways and stays NaN, as with np.clip
            value = lower
        elif value > upper:
            value = upper
        value = (value - mean) / scale
        target[index] = (value - z_low) / span


def foreground_normalize(hu: np.ndarray, stats: dict | None = None) -> np.ndarray:
    """Raw CT (any shape, HU as stored) -> float32 in [0, 1], per docs/method.md#intensity-normalization.

    Raises ValueError for NaN/inf voxels and for constant volumes (nothing above the mean).
    """
    hu = np.ascontiguousarray(hu)
    stats = stats or foreground_statistics(hu)
    return apply_normalization(hu, stats)
