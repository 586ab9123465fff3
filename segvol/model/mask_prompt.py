"""3-D mask prompt (docs/model.md#mask-prompt): a previous or existing mask becomes a dense embedding.

segment-anything's prompt encoder turns a low-resolution mask into a dense embedding with two
stride-2 convolutions and a 1x1 projection; `MaskPromptEncoder3D` is the same in 3-D. Its output
is *added* to the prompt encoder's dense embedding (the learned no-mask embedding), and its last
convolution starts at zero, so an attached but untrained branch leaves every output of the
released network bit for bit as it was. The released checkpoint's `prompt_encoder.mask_downscaling`
is 2-D, never used by the released model, and stays untouched: this branch is a separate module
that is absent by default and lives in its own file beside the model file.

    from segvol.model.mask_prompt import attach_mask_prompt
    attach_mask_prompt(model)                          # zero-initialised: outputs unchanged
    logits = model.decode(emb, boxes=boxes, points=points,
                          mask_prompt=previous_logits)  # (B, 1, D, H, W) logits at the model input size
    checkpoint.save(model, "model.safetensors")        # + model.mask_prompt.safetensors (segvol.model.checkpoint)

Shapes for `base` (input 32 x 256 x 256, token grid 8 x 16 x 16, width 768):
mask logits (B, 1, 32, 256, 256) -> clamp to +-10, / 10 -> area resize (B, 1, 32, 64, 64)
(`ModelConfig.low_res_size`, the decoder's own low-resolution grid) -> Conv3d k2 s2 (B, 4, 16, 32, 32)
-> LayerNorm, GELU -> Conv3d k2 s2 (B, 16, 8, 16, 16) -> LayerNorm, GELU -> Conv3d 1x1x1 (B, 768, 8, 16, 16).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segvol.model.layers import ChannelLayerNorm

# Mask-prompt logits are clamped to +-MASK_LOGIT_LIMIT; a binary mask is given as +limit inside,
# -limit outside (sigmoid(10) = 0.99995), so a confident previous prediction and a binary mask look alike.
MASK_LOGIT_LIMIT = 10.0
# Key prefix of the branch in a model's state dict, and in its own file.
PREFIX = "mask_prompt_encoder."
SUFFIX = ".mask_prompt.safetensors"


class MaskPromptEncoder3D(nn.Module):
    """Mask logits at the model input size -> dense embedding (B, embed_dim, d, h, w).

    Args:
        embed_dim: width C of the image embedding.
        image_embedding_size: token grid (d, h, w); the mask is area-resized to 4x that
            (the decoder's low-resolution grid) and downscaled 4x by two stride-2 convolutions.
        mask_in_chans: channels after the second convolution (`ModelConfig.mask_in_chans`, 16 as in SAM).
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int, int], mask_in_chans: int = 16) -> None:
        super().__init__()
        self.image_embedding_size = tuple(int(n) for n in image_embedding_size)
        self.low_res_size = tuple(4 * n for n in self.image_embedding_size)
        self.downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        # Zero output until trained: an attached branch changes nothing (see the module docstring).
        nn.init.zeros_(self.downscaling[-1].weight)
        nn.init.zeros_(self.downscaling[-1].bias)

    @property
    def trained(self) -> bool:
        """False while the last convolution is still all zero (its output is then exactly 0)."""
        last = self.downscaling[-1]
        return bool(last.weight.detach().ne(0).any() or last.bias.detach().ne(0).any())

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) logits (any real values; > 0 = inside) -> (B, embed_dim, d, h, w).

        (D, H, W) is normally the model input size; any size is area-resized to `low_res_size`.
        """
        weight = self.downscaling[0].weight
        x = mask_logits.to(weight.device, torch.float32).clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT)
        if tuple(x.shape[2:]) != self.low_res_size:
            x = F.interpolate(x, size=self.low_res_size, mode="area")
        return self.downscaling((x / MASK_LOGIT_LIMIT).to(weight.dtype))


def build_mask_prompt(config) -> MaskPromptEncoder3D:
    """A zero-initialised branch for a `ModelConfig`."""
    return MaskPromptEncoder3D(config.hidden_size, config.grid_size, config.mask_in_chans)


def attach_mask_prompt(model: nn.Module) -> MaskPromptEncoder3D:
    """Give a SegVol a zero-initialised mask-prompt branch (kept when it has one); returns the branch."""
    branch = getattr(model, "mask_prompt_encoder", None)
    if branch is None:
        branch = build_mask_prompt(model.config).to(model.device)
        model.mask_prompt_encoder = branch
    return branch


def mask_prompt_is_trained(model) -> bool:
    """Whether ``model`` has a mask-prompt branch whose output is not identically zero."""
    branch = getattr(model, "mask_prompt_encoder", None)
    return isinstance(branch, MaskPromptEncoder3D) and branch.trained


def mask_prompt_path(model_path: str | os.PathLike) -> Path:
    """Where the branch of the model file ``model_path`` lives: ``<stem>.mask_prompt.safetensors`` beside it
    (written and read by `segvol.model.checkpoint.save`/`load`, or `save_mask_prompt`/`load_mask_prompt` there)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SUFFIX)
