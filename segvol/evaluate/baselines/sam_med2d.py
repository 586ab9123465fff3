"""SAM-Med2D on one slice, prepared as its released predictor does.

- The slice (in [0, 1]) becomes 8-bit-range RGB, normalised with ImageNet mean/std, and is
  stretched to 256 x 256 with nearest-neighbour resampling.
- Points (h, w) and boxes are scaled by 256 / size per axis and given as (x, y) = (w, h).
- Three candidate masks are decoded and the one with the highest predicted IoU is kept; its
  64 x 64 logits are fed back as the mask prompt of the next click.
- Logits are resized bilinearly to 256 x 256, then to the slice's size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from segvol.evaluate.baselines.sam import PromptableSam, load
from segvol.evaluate.baselines.slicewise import SliceSegmenter

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_sam_med2d(source: str | os.PathLike) -> PromptableSam:
    """SAM-Med2D ViT-B with its released weights (`sam-med2d_b.pth` or a safetensors copy)."""
    return load("sam-med2d", source)


class SamMed2DSegmenter(SliceSegmenter):
    def __init__(self, model: PromptableSam) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device  # inputs go where the model is; results come back to the CPU
        self.size = model.img_size
        self.embedding = None

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape
        pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None] * 255.0
        mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
        std = torch.tensor(IMAGENET_STD)[None, :, None, None]
        normalised = (pixels.expand(1, 3, *image.shape) - mean) / std
        resized = F.interpolate(normalised, size=(self.size, self.size), mode="nearest")
        with torch.inference_mode():
            self.embedding = self.model.encode(resized.to(self.device))

    def _xy(self, hw: np.ndarray) -> torch.Tensor:
        """(..., 2) (h, w) pixel indices of the slice -> (..., 2) (x, y) in the 256-px input."""
        height, width = self.shape
        hw = np.asarray(hw, dtype=np.float32)
        return torch.from_numpy(np.stack([hw[..., 1] * self.size / width, hw[..., 0] * self.size / height], -1))

    def predict(self, points, labels, box, previous):
        if self.embedding is None:
            raise RuntimeError("set_image must be called before predict")
        kwargs = {}
        if points is not None:
            kwargs["points"] = self._xy(points)[None]
            kwargs["labels"] = torch.as_tensor(np.asarray(labels), dtype=torch.long)[None]
        if box is not None:
            h0, w0, h1, w1 = box
            kwargs["box"] = self._xy(np.array([[h0, w0], [h1, w1]])).reshape(1, 4)
        kwargs = {name: value.to(self.device) for name, value in kwargs.items()}
        with torch.inference_mode():
            masks, iou = self.model.decode(self.embedding, mask=previous, multimask=True, **kwargs)
            best = masks[:, int(iou[0].argmax())][:, None]  # (1, 1, 64, 64)
            logits = F.interpolate(best, size=(self.size, self.size), mode="bilinear", align_corners=False)
            logits = F.interpolate(logits, size=self.shape, mode="bilinear", align_corners=False)
        return logits[0, 0].cpu().numpy(), best
