"""Slice-wise evaluation of a 2-D promptable model on a 3-D volume."""

from __future__ import annotations

import numpy as np

from segvol.evaluate.baselines.clicks import CLICKS, central_point, click_correction
from segvol.evaluate.methods import Method
from segvol.evaluate.prompts import GroundTruthPrompt
from segvol.pseudo.sampling import segment_box


class SliceSegmenter:
    """A 2-D promptable model: `set_image(slice)` then `predict(points, labels, box, previous)`.

    slice: (H, W) float in [0, 1]; points (N, 2) as (h, w); box (h0, w0, h1, w1) inclusive;
    previous: the low-resolution logits it returned last time (or None).
    Returns (logits (H, W), low-resolution logits to feed back).
    """

    def set_image(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def predict(self, points, labels, box, previous):
        raise NotImplementedError


class SliceWiseMethod(Method):
    """A 2-D model applied on every slice where the category is present, prompted per slice."""

    def __init__(self, name: str, segmenter: SliceSegmenter, prompt: str, clicks: int = CLICKS):
        if prompt not in ("point", "box"):
            raise ValueError(f"{name}: a slice-wise baseline takes a 'point' or 'box' prompt, not {prompt!r}")
        self.name, self.segmenter, self.prompt, self.clicks = name, segmenter, prompt, clicks

    @property
    def model(self):
        """The segmenter's network (parameters counted in Table 6)."""
        return self.segmenter.model

    def predict(self, volume, spacing, prompt: GroundTruthPrompt):
        if prompt.truth is None:
            raise ValueError(f"{self.name}: slice-wise prompts need the ground truth (prompt.truth)")
        mask = np.zeros(volume.shape, dtype=bool)
        for index in np.flatnonzero(prompt.truth.any(axis=(1, 2))):
            truth = prompt.truth[index]
            self.segmenter.set_image(volume[index])
            if self.prompt == "box":
                _, h0, w0, _, h1, w1 = segment_box(truth[None] > 0).tolist()
                logits, _ = self.segmenter.predict(None, None, (h0, w0, h1, w1), None)
                mask[index] = logits > 0
            else:
                state = {"low": None}

                def predict(points, labels, previous, state=state):
                    logits, state["low"] = self.segmenter.predict(points, labels, None, state["low"])
                    return logits

                mask[index], _ = click_correction(predict, truth, central_point(truth), self.clicks)
        return mask
