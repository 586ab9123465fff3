"""A canonical CT volume that is intensity-normalized when read (docs/method.md#intensity-normalization).

Inference used to normalize the whole CT up front into a float32 copy: 629 MB for a
600x512x512 scan, on top of the HU it came from. The normalization is a per-voxel function of
global statistics (`segvol.io.intensity.apply_normalization`), so normalizing the few parts
inference reads (slabs for the foreground box, the zoom-out samples, each window) gives the very
same float32 values, bit for bit, while memory holds only the HU: as stored, or as int16 when
an integer CT fits (half the float32 volume).

`NormalizedVolume` offers the few tensor operations `segvol.infer.zoom` uses on a volume
(``shape``, indexing, ``index_select``, ``new_empty``/``new_zeros``); each read returns a new
float32 CPU tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segvol.io.intensity import apply_normalization, foreground_statistics


class NormalizedVolume:
    """``(D, H, W)`` raw HU plus their foreground statistics; reads give normalized float32 in [0, 1].

    Args:
        hu: canonical ``(D, H, W)`` HU array (integer or float; never modified, may be a view).
        stats: `segvol.io.intensity.foreground_statistics` of the WHOLE volume ``hu`` belongs to
            (default: computed from ``hu``). Raises ValueError for constant or non-finite volumes.
    """

    dtype = torch.float32
    device = torch.device("cpu")
    ndim = 3

    def __init__(self, hu: np.ndarray, stats: dict | None = None) -> None:
        if hu.ndim != 3:
            raise ValueError(f"a normalized volume needs (D, H, W) HU, got shape {tuple(hu.shape)}")
        self.hu = hu
        self.stats = stats if stats is not None else foreground_statistics(hu)
        self.foreground = None  # inclusive foreground box, cached by segvol.infer.zoom (it reads every voxel)

    @classmethod
    def compact(cls, hu: np.ndarray) -> NormalizedVolume:
        """From HU that may be stored wider than needed: integer HU that fit int16 are kept as int16
        (a copy; exact, since every int16 value is the same float32 either way)."""
        stats = foreground_statistics(hu)
        if np.issubdtype(hu.dtype, np.integer) and hu.dtype.itemsize > 2:
            info = np.iinfo(np.int16)
            if info.min <= int(hu.min()) and int(hu.max()) <= info.max:
                hu = hu.astype(np.int16)
        return cls(hu, stats)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.hu.shape)

    def _normalized(self, hu: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(apply_normalization(hu, self.stats))

    def __getitem__(self, index) -> torch.Tensor:
        return self._normalized(self.hu[index])

    def crop(self, slices: Sequence[slice]) -> NormalizedVolume:
        """The part under ``slices``, still lazy (a view of the HU, same statistics)."""
        return NormalizedVolume(self.hu[tuple(slices)], self.stats)

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        return self._normalized(np.take(self.hu, index.cpu().numpy(), axis=dim))

    def new_empty(self, size) -> torch.Tensor:
        return torch.empty(tuple(size), dtype=self.dtype)

    def new_zeros(self, size) -> torch.Tensor:
        return torch.zeros(tuple(size), dtype=self.dtype)

    def to(self, device=None, dtype=None) -> NormalizedVolume:
        if (device is not None and torch.device(device).type != "cpu") or dtype not in (None, torch.float32):
            raise ValueError("a normalized volume is read on the CPU as float32")
        return self

    def numpy(self) -> np.ndarray:
        """The whole volume normalized (as big as the float32 copy this class avoids: for tests)."""
        return self[...].numpy()
