"""Dice + BCE on mask logits, per item, so that absent categories can be masked out (docs/method.md#training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target (N, D, H, W) (soft targets allowed) -> (N,) Dice loss + mean BCE per item.

    Dice = 1 - 2 sum(p y) / (sum p + sum y + 1) on sigmoid probabilities (smoothing in the
    denominator only, as released); computed per item rather than over a squeezed batch.
    """
    logits = logits.float().flatten(1)
    target = target.float().flatten(1)
    probability = torch.sigmoid(logits)
    dice = 1.0 - 2.0 * (probability * target).sum(1) / (probability.sum(1) + target.sum(1) + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    return dice + bce
