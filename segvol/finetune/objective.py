"""The fine-tuning loss of one batch (docs/method.md#training), in two schedules.

Shared embedding (`finetune.shared_embedding: true`, ours): the image embedding is computed
ONCE per batch; every (sample, category) pair present in the batch is decoded from it with each
of the six prompt combinations, plus `pseudo_passes` pseudo-label passes; one backward, one
optimizer step per batch. Encoder cost: 1 forward/backward per batch.

Per category (`shared_embedding: false`, the released loop): for every category present in the
batch, the image encoder runs again, all samples are decoded with that category's prompts (six
combinations + the pseudo passes), and an optimizer step follows. Encoder cost: K forward/
backward passes and K optimizer steps per batch of K categories; each step also repeats the
pseudo passes.

Both take the loss of a pair as Dice + BCE, sum it over the six combinations, and skip
categories absent from a sample by masking their loss (never by feeding empty prompts).
With `finetune.corrective_clicks`, each combination's prediction is refined by a few simulated
corrective clicks (and, with `finetune.mask_prompt`, the previous round's logits) before its loss is
taken (`segvol.finetune.corrective`); `clicks=0` is the decode above, unchanged.
Normalizers are global (over all DDP ranks) and multiplied by the world size, so DDP's gradient
average equals the gradient of one process holding the combined batch.
"""

from __future__ import annotations

import torch
from torch import nn

from segvol.finetune.corrective import decode_with_clicks
from segvol.finetune.losses import dice_bce

# (text, box, points) switches of the six prompt combinations trained every step
PROMPT_COMBINATIONS: tuple[tuple[bool, bool, bool], ...] = (
    (True, False, True),  # points + text
    (True, True, False),  # box + text
    (True, False, False),  # text
    (False, True, False),  # box
    (False, False, True),  # points
    (False, True, True),  # box + points
)


class FinetuneObjective(nn.Module):
    """Wraps the SegVol model so that DDP sees the whole loss computation as one forward."""

    def __init__(self, model: nn.Module, pseudo_weight: float = 0.1, mask_prompt: bool = False):
        super().__init__()
        self.model = model
        self.pseudo_weight = float(pseudo_weight)
        self.mask_prompt = bool(mask_prompt)  # corrective rounds feed the previous logits to the mask branch

    def forward(
        self,
        batch: dict,
        categories: list[str],
        pair_count: float,
        sample_count: float,
        scale: float = 1.0,
        category: int | None = None,
        combinations: tuple[int, ...] = tuple(range(len(PROMPT_COMBINATIONS))),
        clicks: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: collated `FinetuneSamples` items on the model's device.

        pair_count: number of present (sample, category) pairs over all ranks (of `category`
        only, when given); sample_count: samples over all ranks; scale: world size; clicks:
        corrective-click rounds before each supervised loss (`segvol.finetune.corrective`).
        Returns (loss, {"supervised": ..., "pseudo": ...}).
        """
        model = self.model
        embedding = model.encode_image(batch["image"])  # (B, C, d, h, w)
        if category is None:
            supervised = self._supervised_shared(embedding, batch, categories, combinations, clicks)
        else:
            supervised = self._supervised_category(embedding, batch, categories, category, combinations, clicks)
        supervised = supervised * (scale / max(pair_count, 1.0))
        pseudo = self._pseudo(embedding, batch) * (scale / max(sample_count, 1.0))
        loss = supervised + self.pseudo_weight * pseudo
        return loss, {"supervised": float(supervised.detach()), "pseudo": float(pseudo.detach())}

    # -- supervised ---------------------------------------------------------------------------

    def _decode_combinations(self, combinations, embedding, text, boxes, points, point_labels, target, weight, clicks):
        total = embedding.new_zeros(())
        for use_text, use_box, use_points in (PROMPT_COMBINATIONS[i] for i in combinations):
            prompts = {
                "text": text if use_text else None,
                "boxes": boxes if use_box else None,
                "points": (points, point_labels) if use_points else None,
            }
            if clicks:
                logits = decode_with_clicks(
                    self.model, embedding, **prompts, target=target, rounds=clicks, mask_prompt=self.mask_prompt
                )
            else:
                logits = self.model.decode(embedding, **prompts)
            total = total + (dice_bce(logits[:, 0], target) * weight).sum()
        return total

    def _supervised_shared(self, embedding, batch, categories, combinations, clicks):
        text = self.model.encode_text(categories)  # (K, C)
        present = batch["present"]  # (B, K)
        sample_index, category_index = present.nonzero(as_tuple=True)
        weight = torch.ones(len(sample_index), device=embedding.device)
        if len(sample_index) == 0:
            # keep every parameter in the graph (DDP) with a zero-weight stand-in pair
            sample_index = category_index = torch.zeros(1, dtype=torch.long, device=present.device)
            weight = torch.zeros(1, device=embedding.device)
        return self._decode_combinations(
            combinations,
            embedding[sample_index],
            text[category_index],
            batch["boxes"][sample_index, category_index],
            batch["points"][sample_index, category_index],
            batch["point_labels"][sample_index, category_index],
            batch["labels"][sample_index, category_index],
            weight,
            clicks,
        )

    def _supervised_category(self, embedding, batch, categories, category, combinations, clicks):
        text = self.model.encode_text([categories[category]])  # (1, C)
        b = embedding.shape[0]
        weight = batch["present"][:, category].to(embedding.dtype)
        return self._decode_combinations(
            combinations,
            embedding,
            text.expand(b, -1),
            batch["boxes"][:, category],
            batch["points"][:, category],
            batch["point_labels"][:, category],
            batch["labels"][:, category],
            weight,
            clicks,
        )

    # -- pseudo labels ------------------------------------------------------------------------

    def _pseudo(self, embedding, batch):
        total = embedding.new_zeros(())
        if self.pseudo_weight == 0 or "pseudo_valid" not in batch:
            return total
        valid = batch["pseudo_valid"]  # (B, P)
        for p in range(valid.shape[1]):
            if not bool(valid[:, p].any()):
                continue  # nothing to learn; DDP copes via find_unused_parameters
            weight = valid[:, p].to(embedding.dtype)
            if p % 2 == 0:
                logits = self.model.decode(
                    embedding, points=(batch["pseudo_points"][:, p], batch["pseudo_point_labels"][:, p])
                )
            else:
                logits = self.model.decode(embedding, boxes=batch["pseudo_boxes"][:, p])
            total = total + (dice_bce(logits[:, 0], batch["pseudo_targets"][:, p]) * weight).sum()
        return total
