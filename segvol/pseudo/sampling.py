"""Training-side helpers for the pseudo-label branch (docs/method.md#pseudo-labels, "use in training").

Pure functions on one sample's pseudo-label map, numpy or torch alike (the result has the type
of the input; ids are non-negative, 0 = no segment):
choose a target segment, its tight box, and the box prompt's target, which also
takes in every other segment lying mostly inside the box.
"""

from __future__ import annotations

import numpy as np
import torch


def _is_torch(array) -> bool:
    return isinstance(array, torch.Tensor)


def segment_ids(pseudo) -> np.ndarray | torch.Tensor:
    """Sorted non-zero ids present in `pseudo` (any shape)."""
    ids = torch.unique(pseudo) if _is_torch(pseudo) else np.unique(pseudo)
    return ids[ids != 0]


def pick_segment(pseudo, generator) -> int:
    """A uniformly random non-zero id present in `pseudo`, or 0 when it has none.

    Args:
        pseudo: (D, H, W) integer ids (numpy or torch), 0 = no segment.
        generator: `numpy.random.Generator` or `torch.Generator`; the only source of randomness.
    """
    ids = segment_ids(pseudo)
    if len(ids) == 0:
        return 0
    if isinstance(generator, torch.Generator):
        index = int(torch.randint(len(ids), (1,), generator=generator))
    elif isinstance(generator, np.random.Generator):
        index = int(generator.integers(len(ids)))
    else:
        raise ValueError(
            f"generator must be a numpy.random.Generator or torch.Generator, got {type(generator).__name__}"
        )
    return int(ids[index])


def segment_box(mask):
    """Tight inclusive box (d0, h0, w0, d1, h1, w1) of a (D, H, W) mask; all -1 when empty.

    Returns int64 numpy (6,) for numpy input, a long tensor for torch input (the `boxes` layout
    of `SegVol.decode`).
    """
    if _is_torch(mask):
        coords = torch.nonzero(mask)
        if coords.shape[0] == 0:
            return torch.full((6,), -1, dtype=torch.long, device=mask.device)
        return torch.cat([coords.min(0).values, coords.max(0).values])
    coords = np.argwhere(np.asarray(mask))
    if coords.shape[0] == 0:
        return np.full(6, -1, dtype=np.int64)
    return np.concatenate([coords.min(0), coords.max(0)]).astype(np.int64)


def box_target(pseudo, segment: int, coverage: float = 0.9):
    """Box prompt and target for segment `segment` of `pseudo`.

    The box is the segment's tight box; the target is the segment together with every other
    segment whose share of voxels inside the box is above `coverage` (intersection / segment
    size -- the released code calls it IoU).

    Returns:
        box: (6,) inclusive (d0, h0, w0, d1, h1, w1), as `segment_box`.
        target: (D, H, W) bool mask.
    """
    chosen = pseudo == segment
    box = segment_box(chosen)
    if int(box[0]) < 0:
        raise ValueError(f"segment {segment} is not present in the pseudo-label map")
    d0, h0, w0, d1, h1, w1 = (int(value) for value in box)
    inside = pseudo[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1]
    if _is_torch(pseudo):
        flat, flat_inside = pseudo.reshape(-1).long(), inside.reshape(-1).long()
        total = torch.bincount(flat)
        within = torch.bincount(flat_inside, minlength=total.shape[0])
        covered = (within.double() / total.clamp(min=1).double()) > coverage
        covered[0] = False
        covered[segment] = True
        return box, covered[pseudo.long()]
    flat = np.asarray(pseudo).ravel().astype(np.int64)
    total = np.bincount(flat)
    within = np.bincount(np.asarray(inside).ravel().astype(np.int64), minlength=total.size)
    covered = within / np.maximum(total, 1) > coverage
    covered[0] = False
    covered[segment] = True
    return box, covered[np.asarray(pseudo).astype(np.int64)]
