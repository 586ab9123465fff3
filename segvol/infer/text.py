"""Embed a run's category names once, then let go of the language backbone that embedded them.

`segvol predict` knows every category name before the first image. The frozen backbone of the
text encoder (docs/model.md#text-encoder; CLIP: 63 M parameters, 250 MB of float32) is needed
only to embed those names, yet it stayed resident through every image. `release_text_backbone`
embeds them (the text encoder caches the pooled backbone features per name) and swaps the
backbone for `ReleasedBackbone`, so `encode_text` of those names gives the very same embeddings
and any other name fails with one clear line instead of a silent re-load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ReleasedBackbone(nn.Module):
    """Stands in for a text backbone dropped after embedding ``texts``."""

    def __init__(self, texts: Sequence[str]) -> None:
        super().__init__()
        self.texts = sorted(set(texts))

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"the text backbone was released after embedding {self.texts}; "
            "no other category name can be embedded by this model"
        )


def release_text_backbone(model: nn.Module, texts: Sequence[str]) -> None:
    """Embed ``texts`` with ``model.text_encoder``, then drop its backbone (in place).

    Models without a `segvol.model.text_encoder.TextEncoder` (stand-ins, foreign models) are
    left as they are. Moving the model afterwards (``.to``) empties the feature cache, after
    which no name can be embedded: release only once the model is where it will run.
    """
    from segvol.model.text_encoder import TextEncoder

    text_encoder = getattr(model, "text_encoder", None)
    if not isinstance(text_encoder, TextEncoder):
        return
    with torch.no_grad():
        for text in sorted(set(texts)):
            # one name per call, as `segvol predict` asks for them: a batch of names is padded to
            # the longest, which changes the features in their last bits
            text_encoder.pooled_features([text])
    setattr(text_encoder, "clip_text_model" if text_encoder.kind == "clip" else "backbone", ReleasedBackbone(texts))
