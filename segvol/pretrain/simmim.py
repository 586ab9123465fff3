"""SimMIM masked image modelling for the 3D ViT image encoder (docs/model.md#image-encoder: mask ratio 0.6).

A random 60 % of mask patches (each a whole number of ViT patches) has its patch embedding
replaced by one learned mask token before the position embedding and the transformer blocks;
a 1x1x1 convolution maps every output token to the voxels of its patch, a 3D pixel shuffle puts
them back in place, and the L1 loss is taken over the masked voxels only.

The mask token enters through a forward hook on the encoder's patch projection, so the encoder
itself stays exactly the module that fine-tuning and inference use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def find_patch_projection(encoder: nn.Module) -> nn.Module:
    """The module whose output are the patch embeddings (before position embeddings).

    MONAI-style ViTs (and ours, key-compatible with SegVol) name it
    `patch_embedding.patch_embeddings`; a `patch_embed.proj` (timm/SAM style) is accepted too.
    """
    for name in ("patch_embedding.patch_embeddings", "patch_embedding.proj", "patch_embed.proj", "patch_embed"):
        try:
            return encoder.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError("cannot find the patch projection of the image encoder for SimMIM masking")


def random_patch_mask(
    batch: int,
    grid: Sequence[int],
    mask_units: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, d, h, w) bool over the ViT token grid; True = masked.

    Masking is drawn over the coarser grid of mask patches (`mask_units` tokens per axis each)
    and then expanded, so that whole mask patches are hidden. Exactly round(ratio * n) mask
    patches are hidden per sample.
    """
    coarse = [math.ceil(g / u) for g, u in zip(grid, mask_units)]
    count = math.prod(coarse)
    hidden = int(round(ratio * count))
    scores = torch.rand(batch, count, generator=generator)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, count, dtype=torch.bool)
    mask.scatter_(1, order[:, :hidden], True)
    mask = mask.view(batch, *coarse)
    for axis, unit in enumerate(mask_units):
        mask = mask.repeat_interleave(unit, dim=axis + 1)
    return mask[:, : grid[0], : grid[1], : grid[2]].contiguous()


def patchify_mask(mask: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, d, h, w) token mask -> (B, 1, D, H, W) voxel mask."""
    voxels = mask
    for axis, size in enumerate(patch_size):
        voxels = voxels.repeat_interleave(size, dim=axis + 1)
    return voxels[:, None]


def unpatchify(tokens: torch.Tensor, patch_size: Sequence[int], channels: int = 1) -> torch.Tensor:
    """(B, c*pd*ph*pw, d, h, w) -> (B, c, d*pd, h*ph, w*pw): a 3D pixel shuffle."""
    b, _, d, h, w = tokens.shape
    pd, ph, pw = patch_size
    x = tokens.view(b, channels, pd, ph, pw, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, channels, d * pd, h * ph, w * pw)


def tokens_to_grid(output, grid: Sequence[int]) -> torch.Tensor:
    """Encoder output (tuple, (B, N, C) tokens or (B, C, d, h, w) grid) -> (B, C, d, h, w)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 5:
        return output
    b, n, c = output.shape
    return output.transpose(1, 2).reshape(b, c, *grid)


class SimMIM(nn.Module):
    """Image encoder + learned mask token + light voxel decoder.

    encoder: maps (B, 1, D, H, W) -> tokens (B, N, C) / grid (B, C, d, h, w) (tuples allowed).
    Its parameters keep their own names under `image_encoder.` in this module's state dict.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int,
        spatial_size: Sequence[int],
        patch_size: Sequence[int],
        mask_patch_size: Sequence[int] | None = None,
        mask_ratio: float = 0.6,
    ):
        super().__init__()
        self.image_encoder = encoder
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        mask_patch_size = tuple(mask_patch_size or self.patch_size)
        for m, p in zip(mask_patch_size, self.patch_size):
            if m % p:
                raise ValueError(
                    f"mask_patch_size {list(mask_patch_size)} must be a multiple of "
                    f"the ViT patch {list(self.patch_size)}"
                )
        self.mask_units = tuple(m // p for m, p in zip(mask_patch_size, self.patch_size))
        self.mask_ratio = float(mask_ratio)
        self.grid = tuple(s // p for s, p in zip(self.spatial_size, self.patch_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Conv3d(embed_dim, math.prod(self.patch_size), kernel_size=1)
        self._projection = find_patch_projection(encoder)
        self._active_mask: torch.Tensor | None = None
        self._projection.register_forward_hook(self._replace_masked)

    def _replace_masked(self, module, inputs, output):
        mask = self._active_mask
        if mask is None:
            return output
        token = self.mask_token.to(output.dtype)
        if output.dim() == 3:  # (B, N, C) tokens in row-major (d, h, w) order
            keep = (~mask).flatten(1)[..., None].to(output.dtype)
            return output * keep + token * (1 - keep)
        keep = (~mask)[:, None].to(output.dtype)  # (B, C, d, h, w) grid
        return output * keep + token.view(1, -1, 1, 1, 1) * (1 - keep)

    def random_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_patch_mask(batch, self.grid, self.mask_units, self.mask_ratio, generator)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 1, D, H, W) in [0, 1], mask (B, d, h, w) bool -> (loss, reconstruction (B, 1, D, H, W))."""
        self._active_mask = mask.to(image.device)
        try:
            features = tokens_to_grid(self.image_encoder(image), self.grid)
        finally:
            self._active_mask = None
        reconstruction = unpatchify(self.decoder(features), self.patch_size)
        voxel_mask = patchify_mask(mask.to(image.device), self.patch_size).to(reconstruction.dtype)
        error = F.l1_loss(reconstruction, image, reduction="none")
        loss = (error * voxel_mask).sum() / voxel_mask.sum().clamp_min(1.0)
        return loss, reconstruction

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """`image_encoder.*` tensors only (what fine-tuning loads)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("image_encoder.")}
