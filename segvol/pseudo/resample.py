"""Resizing between the image grid and the pseudo-label grid.

Down: torch 'area' (adaptive average pooling), what MONAI `Resized(mode="area")` does in the
released pipeline. Up/back for label ids: 'nearest' with torch's index rule, done as a numpy
gather so that integer ids never pass through floats.
"""

from __future__ import annotations

import numpy as np


def resize_area(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(..., D, H, W) -> (..., *shape) float32, torch `interpolate(mode="area")` per leading index."""
    import torch

    array = np.asarray(array, dtype=np.float32)
    lead = array.shape[:-3]
    flat = torch.from_numpy(np.ascontiguousarray(array.reshape((-1, 1) + array.shape[-3:])))
    resized = torch.nn.functional.interpolate(flat, size=tuple(int(s) for s in shape), mode="area")
    return resized.numpy().reshape(lead + tuple(shape))


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index under torch's legacy 'nearest': floor(i * in/out) in float32."""
    if size_in == size_out:
        return np.arange(size_out)
    scale = np.float32(size_in / size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize_nearest(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(D, H, W) integer ids -> `shape`, same dtype, nearest neighbour."""
    gather = [nearest_indices(n_in, n_out) for n_in, n_out in zip(labels.shape, shape)]
    return labels[np.ix_(*gather)]
