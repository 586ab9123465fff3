"""A mask prompt on a volume's grid, cut and resampled for each view the model decodes.

A trained mask-prompt branch (`segvol.model.mask_prompt`) takes, per view, ``(1, D, H, W)``
logits on the model-input grid. `MaskPrompt` holds the mask once, on the canonical volume (only
inside its bounding box), and gives each view its part:

- a zoom-in window sees the mask's voxels under it, unresampled (windows are at full resolution);
- the zoom-out view sees the mask at the voxels the zoom-out image samples (the same
  nearest-exact indices as `segvol.infer.zoom.resize_nearest_exact`), so mask and image agree voxel
  for voxel.

Values are logits (a previous prediction) or a boolean mask, which reads as +-`MASK_LOGIT_LIMIT`;
outside the stored box the mask reads ``-MASK_LOGIT_LIMIT`` (outside the object).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from segvol.infer.geometry import box_slices, nearest_exact_indices
from segvol.model.mask_prompt import MASK_LOGIT_LIMIT

_tokens = itertools.count()


class MaskPrompt:
    """A mask on a volume: ``values`` inside the inclusive box ``region`` (volume voxels).

    Args:
        region: ``(d0, h0, w0, d1, h1, w1)`` inclusive, in voxels of the volume.
        values: ``region``-sized bool mask or float32 logits (> 0 inside).
    Each instance has a ``token`` that names it in the decoder memo: a new mask is a new prompt.
    """

    def __init__(self, region: Sequence[int], values: torch.Tensor) -> None:
        self.region = np.asarray(region, dtype=np.int64)
        self.values = torch.as_tensor(values)
        expected = tuple(int(n) for n in self.region[3:] - self.region[:3] + 1)
        if tuple(self.values.shape) != expected:
            raise ValueError(f"mask values {tuple(self.values.shape)} do not fill the region {self.region.tolist()}")
        self.token = next(_tokens)

    @classmethod
    def from_mask(cls, mask: np.ndarray | torch.Tensor) -> MaskPrompt | None:
        """From a ``(D, H, W)`` binary mask of the whole volume; None when it has no voxel."""
        mask = torch.as_tensor(np.asarray(mask) != 0)
        found = [torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != axis))).flatten() for axis in range(3)]
        if any(len(f) == 0 for f in found):
            return None
        region = np.array([int(f[0]) for f in found] + [int(f[-1]) for f in found], dtype=np.int64)
        return cls(region, mask[box_slices(region)].clone())

    @property
    def is_binary(self) -> bool:
        return self.values.dtype == torch.bool

    def logits(self) -> torch.Tensor:
        """The region's values as float32 logits (a boolean mask as +-MASK_LOGIT_LIMIT)."""
        if self.is_binary:
            return torch.where(self.values, MASK_LOGIT_LIMIT, -MASK_LOGIT_LIMIT).to(torch.float32)
        return self.values.to(torch.float32)

    def _sampled(self, indices: list[np.ndarray]) -> torch.Tensor:
        """Values at volume voxels ``indices[0] x indices[1] x indices[2]`` (each sorted ascending)."""
        out = torch.full(tuple(len(i) for i in indices), -MASK_LOGIT_LIMIT, dtype=torch.float32)
        where, picks = [], []
        for axis, index in enumerate(indices):
            inside = np.nonzero((index >= self.region[axis]) & (index <= self.region[axis + 3]))[0]
            if len(inside) == 0:
                return out
            where.append(slice(int(inside[0]), int(inside[-1]) + 1))  # sorted indices: a contiguous run
            picks.append(torch.from_numpy(index[inside] - self.region[axis]))
        part = self.values.index_select(0, picks[0]).index_select(1, picks[1]).index_select(2, picks[2])
        if self.is_binary:
            part = torch.where(part, MASK_LOGIT_LIMIT, -MASK_LOGIT_LIMIT)
        out[tuple(where)] = part.to(torch.float32)
        return out

    def window(self, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """``size`` logits of the window whose voxel 0 is volume voxel ``start`` (may lie outside)."""
        return self._sampled([np.arange(int(s), int(s) + int(n)) for s, n in zip(start, size)])

    def zoom_out(self, crop_box: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """``size`` logits of the zoom-out view: the crop ``crop_box`` (volume voxels) resized nearest-exact."""
        crop_box = np.asarray(crop_box, dtype=np.int64)
        return self._sampled(
            [
                int(crop_box[a]) + nearest_exact_indices(int(crop_box[a + 3] - crop_box[a] + 1), int(size[a]))
                for a in range(3)
            ]
        )
