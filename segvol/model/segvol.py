"""SegVol: image encoder + prompt encoder + mask decoder + text encoder (docs/model.md).

    emb = model.encode_image(image)               # (B, 1, D, H, W) in [0, 1] -> (B, C, d, h, w)
    txt = model.encode_text(["liver", "spleen"])  # (K, C)
    logits = model.decode(emb, text=txt, boxes=boxes, points=(coords, labels))  # (B, 1, D, H, W)
    logits = model.decode(emb, boxes=boxes, mask_prompt=previous_logits)  # with a mask-prompt branch

Prompt coordinates are voxel indices (d, h, w) in the model-input frame `config.spatial_size`.
To decode K prompt sets from one image, pass an embedding of batch 1 (it is broadcast) or
expand it to K yourself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segvol.model.config import ModelConfig
from segvol.model.image_encoder import ImageEncoderViT3D
from segvol.model.mask_decoder import MaskDecoder3D
from segvol.model.mask_prompt import MaskPromptEncoder3D
from segvol.model.prompt_encoder import PromptEncoder3D
from segvol.model.text_encoder import TextEncoder

Points = tuple[torch.Tensor, torch.Tensor]


class SegVol(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        text_encoder: TextEncoder,
        image_skip: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.mask_decoder = mask_decoder
        self.prompt_encoder = prompt_encoder
        self.text_encoder = text_encoder
        # Optional 3-D mask-prompt branch (segvol.model.mask_prompt.attach_mask_prompt): absent by
        # default, so the state dict holds exactly the released keys; saved in its own file.
        self.mask_prompt_encoder: MaskPromptEncoder3D | None = None
        self.image_skip = image_skip  # ModelConfig.image_skip_channels > 0 only

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) intensities in [0, 1] -> (B, hidden, d, h, w)."""
        expected = (self.config.in_channels, *self.config.spatial_size)
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or tuple(image.shape[1:]) != expected:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"encode_image expects a (B, {', '.join(map(str, expected))}) tensor, got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"encode_image expects a floating-point image, got {image.dtype}")
        if not torch.isfinite(image).all():
            raise ValueError("encode_image: the image contains NaN or infinite values")
        image = image.to(self.device, self.image_encoder.norm.weight.dtype)
        embedding = self.image_encoder(image)
        if self.image_skip is None:
            return embedding
        return torch.cat([embedding, self.image_skip(image).to(embedding.dtype)], dim=1)

    def encode_text(self, names: Sequence[str]) -> torch.Tensor:
        """K category names -> (K, hidden). The language backbone is frozen and cached per name."""
        return self.text_encoder(list(names) if not isinstance(names, str) else names)

    def decode(
        self,
        image_embedding: torch.Tensor,
        text: torch.Tensor | Sequence[str] | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
        mask_prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits (B, 1, D, H, W) at the model input size.

        image_embedding: (B, hidden, d, h, w), or (1, ...) broadcast to the prompts' batch.
        text: (B, hidden) from encode_text, or B category names. boxes: (B, 6) float
        (d0, h0, w0, d1, h1, w1) inclusive voxel indices. points: ((B, N, 3) float, (B, N) long
        labels in {-1 ignore, 0 negative, 1 positive}). mask_prompt: (B, 1, D, H, W) float logits
        on the model-input grid (what `decode` returns, e.g. the previous round's prediction; a
        binary mask as +10 inside / -10 outside), only with a mask-prompt branch (docs/model.md#mask-prompt).
        """
        if text is not None and not isinstance(text, torch.Tensor):
            text = self.encode_text(text)
        batch = self._check_prompts(image_embedding, text, boxes, points, mask_prompt)
        if image_embedding.shape[0] != batch:
            image_embedding = image_embedding.expand(batch, -1, -1, -1, -1)
        device = image_embedding.device
        if boxes is not None:
            boxes = boxes.to(device)
        if points is not None:
            points = (points[0].to(device), points[1].to(device))
        if text is not None:
            text = text.to(device, image_embedding.dtype)
        sparse, dense = self.prompt_encoder(points, boxes, text, batch)
        if mask_prompt is not None:
            dense = dense + self.mask_prompt_encoder(mask_prompt.to(device))
        skip = None
        if self.image_skip is not None:
            hidden = self.config.hidden_size
            skip = self.image_skip.unpack(image_embedding[:, hidden:])
            image_embedding = image_embedding[:, :hidden]
        low_res = self.mask_decoder(
            image_embedding,
            self.prompt_encoder.get_dense_pe().to(image_embedding.dtype),
            sparse.to(image_embedding.dtype),
            dense.to(image_embedding.dtype),
            text_embedding=text,
            skip=skip,
        )
        return F.interpolate(low_res, size=self.config.spatial_size, mode="trilinear", align_corners=False)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor | Sequence[str] | None = None,
        boxes: torch.Tensor | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """encode_image + decode: (B, 1, D, H, W) image -> (B, 1, D, H, W) logits."""
        return self.decode(self.encode_image(image), text=text, boxes=boxes, points=points)

    def _check_prompts(self, image_embedding, text, boxes, points, mask_prompt=None) -> int:
        cfg = self.config
        expected = (cfg.embedding_channels, *cfg.grid_size)
        if image_embedding.ndim != 5 or tuple(image_embedding.shape[1:]) != expected:
            raise ValueError(f"decode expects an image embedding (B, {expected}), got {tuple(image_embedding.shape)}")
        sizes = {}
        if text is not None:
            if text.ndim != 2 or text.shape[1] != cfg.hidden_size:
                raise ValueError(f"text embedding must be (B, {cfg.hidden_size}), got {tuple(text.shape)}")
            sizes["text"] = text.shape[0]
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[1] != 6:
                raise ValueError(f"boxes must be (B, 6) (d0, h0, w0, d1, h1, w1), got {tuple(boxes.shape)}")
            if not torch.isfinite(boxes).all():
                raise ValueError("boxes contain NaN or infinite values")
            sizes["boxes"] = boxes.shape[0]
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise ValueError("points must be a (coords (B, N, 3), labels (B, N)) pair")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[2] != 3 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    "points must be coords (B, N, 3) and labels (B, N), "
                    f"got {tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            if not torch.isfinite(coords).all():
                raise ValueError("point coordinates contain NaN or infinite values")
            if ((labels < -1) | (labels > 1)).any():
                raise ValueError("point labels must be -1 (ignore), 0 (negative) or 1 (positive)")
            sizes["points"] = coords.shape[0]
        if mask_prompt is not None:
            if self.mask_prompt_encoder is None:
                raise ValueError(
                    "decode got a mask_prompt but the model has no mask-prompt branch "
                    "(segvol.model.mask_prompt.attach_mask_prompt)"
                )
            if mask_prompt.ndim != 5 or mask_prompt.shape[1] != 1:
                raise ValueError(f"mask_prompt must be (B, 1, D, H, W) logits, got {tuple(mask_prompt.shape)}")
            if not torch.isfinite(mask_prompt).all():
                raise ValueError("mask_prompt contains NaN or infinite values")
            sizes["mask_prompt"] = mask_prompt.shape[0]
        if not sizes:
            raise ValueError("decode needs at least one prompt: text, boxes, points or a mask")
        batches = set(sizes.values())
        if len(batches) != 1:
            raise ValueError(f"prompt batch sizes differ: {sizes}")
        batch = batches.pop()
        if image_embedding.shape[0] not in (1, batch):
            raise ValueError(
                f"image embedding batch {image_embedding.shape[0]} does not match the prompts' batch {batch} "
                "(pass batch 1 to share one embedding, or expand it)"
            )
        return batch
