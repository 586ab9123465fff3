"""Sliding windows on a fixed lattice, patch extraction with zero padding, and logit stitching.

The lattice is computed here rather than with MONAI's `dense_patch_slices` and its private
`_get_scan_interval`: importing `monai.data` costs ~10 s and ~400 MB on every `segvol predict`
(it pulls in transformers), for ten lines of arithmetic. `window_starts` reproduces MONAI's
positions exactly (tested against MONAI in tests/test_infer_geometry.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    """One window: voxels ``start .. start + size - 1`` of a volume (start may be negative = padding)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start, self.size))

    def intersects(self, box: np.ndarray) -> bool:
        """Whether the inclusive box ``(d0, h0, w0, d1, h1, w1)`` shares a voxel with the window."""
        return all(box[a] < self.stop[a] and box[a + 3] >= self.start[a] for a in range(3))

    def overlap(self, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Slices of (volume, window) that cover the window's part inside a volume of ``shape``."""
        volume_slices, window_slices = [], []
        for start, size, extent in zip(self.start, self.size, shape):
            lo, hi = max(start, 0), min(start + size, extent)
            volume_slices.append(slice(lo, hi))
            window_slices.append(slice(lo - start, hi - start))
        return tuple(volume_slices), tuple(window_slices)


def window_lattice(shape: Sequence[int], window: Sequence[int], overlap: float = 0.5) -> list[Window]:
    """All windows of a sliding-window pass over a volume of ``shape``.

    Positions follow MONAI's sliding-window inferer: the volume is padded symmetrically up to
    the window size where it is smaller, the stride is ``int(window * (1 - overlap))`` and the
    last window of each axis sits flush with the end. The lattice depends only on the volume,
    so windows (and their image embeddings) are shared by every prompt.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    shape, window = tuple(int(s) for s in shape), tuple(int(w) for w in window)
    padded = tuple(max(s, w) for s, w in zip(shape, window))
    pad_before = tuple((p - s) // 2 for p, s in zip(padded, shape))
    per_axis = [
        [start - pad for start in window_starts(p, w, overlap)] for p, w, pad in zip(padded, window, pad_before)
    ]
    return [Window((d, h, w), window) for d in per_axis[0] for h in per_axis[1] for w in per_axis[2]]


def window_starts(extent: int, size: int, overlap: float) -> list[int]:
    """Start positions of windows of ``size`` along an axis of ``extent >= size`` voxels.

    MONAI's rule: stride ``max(int(size * (1 - overlap)), 1)`` (the whole extent when the window
    covers it), windows at ``0, stride, 2 * stride, ...`` while they fit, and a last one flush
    with the end; repeated positions appear once.
    """
    stride = max(int(size * (1 - overlap)), 1) if extent > size else 1
    count = -(-(extent - size) // stride) + 1 if extent > size else 1  # ceil division
    starts = [min(i * stride, extent - size) for i in range(count)]
    return sorted(set(starts))


def extract_window(volume: torch.Tensor, window: Window) -> torch.Tensor:
    """The ``(D, H, W)`` patch of ``volume`` under ``window``, zero where it leaves the volume."""
    patch = volume.new_zeros(window.size)
    volume_slices, window_slices = window.overlap(volume.shape)
    patch[window_slices] = volume[volume_slices]
    return patch


class LogitStitcher:
    """Average window logits of one prompt into a volume, in place and on the CPU.

    Given every window up front, it sets the voxels they reach to -0.0 and counts them; each
    window then adds its logits in place, and `finish` divides by the count. Since -0.0 + v == v
    for every float v, this is bit for bit the rule "the first window that reaches a voxel
    overwrites the value there (the coarse zoom-out logits), later ones add to it", in half the
    passes over memory and without temporaries of the window's size. Voxels no window reaches
    keep their coarse logits. Memory: one int16 counter per voxel of the volume.
    """

    def __init__(self, target: torch.Tensor, windows: Sequence[Window]) -> None:
        self.target = target
        self.count = torch.zeros(target.shape, dtype=torch.int16)
        self.reached = None  # inclusive bounding box of the voxels some window reaches
        for window in windows:
            volume_slices, _ = window.overlap(target.shape)
            if any(s.start >= s.stop for s in volume_slices):
                continue
            self.count[volume_slices] += 1
            target[volume_slices] = -0.0
            box = np.array([s.start for s in volume_slices] + [s.stop - 1 for s in volume_slices])
            self.reached = (
                box
                if self.reached is None
                else np.concatenate([np.minimum(self.reached[:3], box[:3]), np.maximum(self.reached[3:], box[3:])])
            )

    def add(self, window: Window, logits: torch.Tensor) -> None:
        """Add a window's ``(d, h, w)`` logits (one of the windows given at construction, once)."""
        volume_slices, window_slices = window.overlap(self.target.shape)
        self.target[volume_slices] += logits[window_slices].to(self.target.dtype)

    def finish(self, slab: int = 16) -> None:
        if self.reached is None:
            return
        h, w = (slice(int(self.reached[a]), int(self.reached[a + 3]) + 1) for a in (1, 2))
        for first in range(int(self.reached[0]), int(self.reached[3]) + 1, slab):  # x / 1 == x: no mask needed
            d = slice(first, min(first + slab, int(self.reached[3]) + 1))
            self.target[d, h, w] /= self.count[d, h, w].clamp(min=1)
