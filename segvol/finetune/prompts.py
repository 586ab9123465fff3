"""Training prompts drawn from (soft) label masks (docs/method.md#prompt-generation).

Coordinates are voxel indices (d, h, w) in the model-input frame; boxes are
(d0, h0, w0, d1, h1, w1) inclusive; point labels 1 = positive, 0 = negative, -1 = padding with
coordinates (-1, -1, -1).
"""

from __future__ import annotations

import numpy as np
import torch

from segvol.pseudo.sampling import segment_box

POINTS_PER_PROMPT = 21  # 1 + up to 10 positives + up to 10 negatives


def _pick(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` rows of `candidates` without replacement (all of them when there are fewer)."""
    if count <= 0 or len(candidates) == 0:
        return candidates[:0]
    if len(candidates) <= count:
        return candidates
    return candidates[rng.choice(len(candidates), size=count, replace=False)]


def sample_points(
    mask: torch.Tensor,
    rng: np.random.Generator,
    n_positive: int,
    n_negative: int,
    total: int = POINTS_PER_PROMPT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, H, W) soft mask -> coords (total, 3) float, labels (total,) long.

    One random positive (label > 0.9) first, then `n_positive` more positives and `n_negative`
    negatives (label < 0.1), each without replacement; padded with ignore points to `total`.
    An empty mask gives only ignore points.
    """
    values = mask.detach().cpu().numpy()
    positives = np.argwhere(values > 0.9)
    negatives = np.argwhere(values < 0.1)
    chosen, labels = [], []
    if len(positives):
        chosen.append(positives[rng.integers(len(positives))][None])
        labels.append(1)
        extra = _pick(positives, n_positive, rng)
        chosen.append(extra)
        labels.extend([1] * len(extra))
        extra = _pick(negatives, n_negative, rng)
        chosen.append(extra)
        labels.extend([0] * len(extra))
    coords = np.concatenate(chosen, axis=0) if chosen else np.zeros((0, 3), dtype=np.int64)
    coords, labels = coords[:total], labels[:total]
    pad = total - len(coords)
    coords = np.concatenate([coords.astype(np.float32), -np.ones((pad, 3), dtype=np.float32)])
    label_array = np.asarray(labels + [-1] * pad, dtype=np.int64)
    return torch.from_numpy(coords), torch.from_numpy(label_array)


def tight_box(
    mask: torch.Tensor, threshold: float = 0.5, jitter: int = 0, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """(D, H, W) mask -> (6,) float inclusive box of voxels above `threshold`; all -1 if empty.

    With `jitter` > 0 every coordinate moves by an integer in [-jitter, jitter], clamped to the
    volume (upper clamp is the size, as the released generator).
    """
    box = segment_box(mask > threshold).float()
    if box[0] < 0:
        return box
    if jitter > 0 and rng is not None:
        box = box + torch.from_numpy(rng.integers(-jitter, jitter + 1, size=6).astype(np.float32))
        limits = torch.tensor(list(mask.shape) * 2, dtype=torch.float32)
        box = torch.minimum(box.clamp_min(0.0), limits)
    return box
