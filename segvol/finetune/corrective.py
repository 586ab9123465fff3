"""Corrective-click training (`finetune.corrective_clicks`): the model is trained on the clicks it is
scored with.

Released-style training (`segvol.finetune.prompts`) draws its points at random from the label. A user
of an interactive tool clicks where the prediction is wrong instead, and the released model was never
trained on such a click (docs/method.md#training). Here, within a training step and for each prompt
combination of `segvol.finetune.objective`:

1. ``rounds`` is drawn in ``0 .. corrective_clicks`` from (seed, step) alone (the same on every rank
   and after a resume), as the iterative training of SAM-Med3D and nnInteractive samples its number
   of simulated interactions;
2. each round predicts without gradient from the combination's prompts plus the clicks so far, and
   places the next click where the evaluation protocol places it (`segvol.infer.clicks`: the deepest
   voxel of the largest error region, positive in a miss, negative in a false positive);
3. with `finetune.mask_prompt`, the model has a 3-D mask-prompt branch (`segvol.model.mask_prompt`) and
   each round also gets the previous round's logits as its mask prompt, which is how `Session` and the
   interactive protocol prompt a refinement; the branch is trained only here;
4. the loss (Dice + BCE) is taken on the final prediction only, with gradient through the image
   embedding and every prompt encoder.

Rounds = 0 is the released-style decode, so ``corrective_clicks: 0`` (the default, the paper's recipe)
leaves training bit for bit as it was.
"""

from __future__ import annotations

import numpy as np
import torch

from segvol.infer.clicks import corrective_click


def click_rounds(seed: int, step: int, most: int) -> int:
    """Corrective rounds of optimizer step ``step``: uniform in ``0 .. most``, from (seed, step) alone."""
    if most <= 0:
        return 0
    return int(np.random.default_rng([seed, step, 23]).integers(0, most + 1))


def place_clicks(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per sample.

    logits: (B, D, H, W) predictions (> 0 inside); target: (B, D, H, W) soft labels (> 0.5 inside).
    Returns coords (B, 1, 3) float and labels (B, 1) long (1 positive, 0 negative; -1 with coordinates
    -1 where the prediction is already right, an ignored point).
    """
    predicted = (logits.detach() > 0).cpu().numpy()
    truth = (target.detach() > 0.5).cpu().numpy()
    coords = -np.ones((len(predicted), 1, 3), dtype=np.float32)
    labels = -np.ones((len(predicted), 1), dtype=np.int64)
    for b in range(len(predicted)):
        click = corrective_click(predicted[b], truth[b])
        if click is not None:
            coords[b, 0], labels[b, 0] = click[0], click[1]
    return torch.from_numpy(coords).to(logits.device), torch.from_numpy(labels).to(logits.device)


def decode_with_clicks(
    model,
    embedding: torch.Tensor,
    text: torch.Tensor | None,
    boxes: torch.Tensor | None,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    target: torch.Tensor,
    rounds: int,
    mask_prompt: bool,
) -> torch.Tensor:
    """The prediction after ``rounds`` corrective clicks: (B, 1, D, H, W) logits, with gradient.

    embedding (B, C, d, h, w), text (B, C), boxes (B, 6), points ((B, N, 3), (B, N)) as `SegVol.decode`
    takes them (any of the three None); target (B, D, H, W). Each round appends one click to the points.
    """
    previous = None
    for _ in range(rounds):
        with torch.no_grad():
            logits = model.decode(embedding, text=text, boxes=boxes, points=points, mask_prompt=previous)
        coords, labels = place_clicks(logits[:, 0].float(), target)
        if points is None:
            points = (coords, labels)
        else:
            points = (torch.cat([points[0], coords.to(points[0].dtype)], 1), torch.cat([points[1], labels], 1))
        if mask_prompt:
            previous = logits.float()
    return model.decode(embedding, text=text, boxes=boxes, points=points, mask_prompt=previous)
