"""The SAM-Med2D and SAM-Med3D architectures and their released checkpoints.

| name | input | encoder | prompts | embedding | low-res masks |
| --- | --- | --- | --- | --- | --- |
| `sam-med2d` | (B, 3, 256, 256) | ViT-B 2-D + adapters, out 256 | points, box, mask | 256 x 16^2 | 64^2 |
| `sam-med3d` | (B, 1, 128, 128, 128) | ViT-B 3-D, out 384 | points, mask (no box) | 384 x 8^3 | 32^3 |

Both: patch 16, depth 12, 12 heads, global attention in blocks 2, 5, 8, 11 and 14-wide windows
elsewhere (the 3-D 8^3 grid is zero-padded to one 14^3 window, as in the release).
Checkpoints: SAM-Med2D `sam-med2d_b.pth` ({'model': ...}); SAM-Med3D `sam_med3d_turbo.pth`
({'model_state_dict': ...}, with training options beside it). Parameter names are those of the
releases; `load_checkpoint` reads them without unpickling code and loads strictly.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from segvol.evaluate.baselines.sam.image_encoder import ImageEncoderViT
from segvol.evaluate.baselines.sam.mask_decoder import MaskDecoder
from segvol.evaluate.baselines.sam.prompt_encoder import PromptEncoder

VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sam-med2d": dict(spatial_dims=2, img_size=256, in_chans=3, prompt_dim=256, adapter=True, point_kinds=4, **VIT_B),
    "sam-med3d": dict(spatial_dims=3, img_size=128, in_chans=1, prompt_dim=384, adapter=False, point_kinds=2, **VIT_B),
}
# Buffers some releases save that are constants here (ImageNet mean/std of the preprocessing).
_CONSTANT_KEYS = ("pixel_mean", "pixel_std")


class PromptableSam(nn.Module):
    """image_encoder + prompt_encoder + mask_decoder; `encode` once per image, `decode` per prompt."""

    def __init__(
        self,
        spatial_dims: int,
        img_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes,
        prompt_dim: int,
        adapter: bool,
        point_kinds: int,
        window_size: int = 14,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.img_size = img_size
        self.image_encoder = ImageEncoderViT(
            spatial_dims,
            img_size,
            in_chans,
            embed_dim,
            depth,
            num_heads,
            prompt_dim,
            global_attn_indexes,
            window_size=window_size,
            adapter=adapter,
        )
        self.prompt_encoder = PromptEncoder(spatial_dims, prompt_dim, img_size // 16, img_size, point_kinds)
        self.mask_decoder = MaskDecoder(spatial_dims, prompt_dim)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, *[img_size]) -> (B, prompt_dim, *[img_size / 16])."""
        return self.image_encoder(image)

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embedding (1, C, *grid) and prompts -> (low-res logits (1, M, *[4 grid]), IoU (1, M)).

        points (1, N, n) in input pixels with labels (1, N) (1 positive, 0 negative); box (1, 2n);
        mask (1, 1, *[4 grid]) low-res logits of a previous prediction.
        """
        sparse, dense = self.prompt_encoder(None if points is None else (points, labels), box, mask)
        return self.mask_decoder(embedding, self.prompt_encoder.dense_pe(), sparse, dense, multimask)


def build(name: str, **overrides: Any) -> PromptableSam:
    """The `name` architecture ("sam-med2d", "sam-med3d") with random weights; overrides shrink it for tests."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return PromptableSam(**{**ARCHITECTURES[name], **overrides}).eval()


def load(name: str, source: str | os.PathLike) -> PromptableSam:
    """The `name` architecture with the weights of `source` (a file or hf://owner/repo/file), eval mode.

    The file is read before the network is built, so a missing or unreadable one fails at once.
    """
    state = _read_state(source)
    return _load_state(build(name), state, source)


def load_checkpoint(model: PromptableSam, source: str | os.PathLike) -> PromptableSam:
    """Load a released checkpoint (or a safetensors copy) into `model` strictly; returns it in eval mode."""
    return _load_state(model, _read_state(source), source)


def _read_state(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    from segvol.model.checkpoint import read_weights

    state = read_weights(source)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if key not in _CONSTANT_KEYS}


def _load_state(model: PromptableSam, state: dict[str, torch.Tensor], source) -> PromptableSam:
    from segvol.model.checkpoint import key_differences

    differences = key_differences(model.state_dict(), state)
    if differences:
        raise ValueError(f"{source}: not a checkpoint of this architecture: {'; '.join(differences)}")
    model.load_state_dict(state, strict=True)
    return model.eval()
