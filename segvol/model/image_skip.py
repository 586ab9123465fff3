"""Image skip of the tiny model (ModelConfig.image_skip_channels): intensity features at mask resolution.

The released decoder sees the image only through the ViT's tokens (one per 4x16x16 patch for `base`),
so every voxel of a mask must be recovered from its token. A model trained from scratch in CPU minutes
does not get that far: it learns where the box is long before it learns what is inside it. The skip
computes a few intensity features of the image at the decoder's mask resolution (4x the token grid)
with two 3x3x3 convolutions; the decoder mixes them into its upscaled map before the hypernetwork
product (segvol.model.mask_decoder). Off (0 channels) for `base`, which stays the released network.

So that every caller can keep treating an image embedding as one tensor (batched, indexed, cached per
window), the features travel packed into extra channels of the embedding: (B, k, 4d, 4h, 4w) as
(B, 64 k, d, h, w), each token carrying the 4x4x4 cell of mask voxels it upsamples to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPSCALE = 4  # the decoder's mask logits are 4x the token grid per axis


class ImageSkip(nn.Module):
    """(B, 1, D, H, W) image -> (B, 64 k, d, h, w) packed features; `unpack` gives (B, k, 4d, 4h, 4w)."""

    def __init__(
        self, channels: int, spatial_size: tuple[int, int, int], patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__()
        if any(p % UPSCALE for p in patch_size):
            raise ValueError(
                f"ModelConfig: image_skip_channels needs a patch_size divisible by {UPSCALE}, got {tuple(patch_size)}"
            )
        self.channels = int(channels)
        self.pool = tuple(p // UPSCALE for p in patch_size)
        self.grid_size = tuple(s // p for s, p in zip(spatial_size, patch_size))
        self.conv1 = nn.Conv3d(in_channels, self.channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(self.channels, self.channels, kernel_size=3, padding=1)

    @property
    def packed_channels(self) -> int:
        return self.channels * UPSCALE**3

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(image, self.pool) if max(self.pool) > 1 else image
        x = self.conv2(F.gelu(self.conv1(x)))  # (B, k, 4d, 4h, 4w)
        b, k = x.shape[:2]
        d, h, w = self.grid_size
        x = x.reshape(b, k, d, UPSCALE, h, UPSCALE, w, UPSCALE).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, k * UPSCALE**3, d, h, w)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, 64 k, d, h, w) -> (B, k, 4d, 4h, 4w)."""
        b = packed.shape[0]
        d, h, w = self.grid_size
        x = packed.reshape(b, self.channels, UPSCALE, UPSCALE, UPSCALE, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, self.channels, UPSCALE * d, UPSCALE * h, UPSCALE * w)


class SkipFusion(nn.Module):
    """Mixes the skip features into the decoder's upscaled map: up + conv1x1(GELU(conv1x1([up, skip])))."""

    def __init__(self, upscaled_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(upscaled_channels + skip_channels, upscaled_channels, kernel_size=1)
        self.out = nn.Conv3d(upscaled_channels, upscaled_channels, kernel_size=1)

    def forward(self, upscaled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """upscaled (B, c, 4d, 4h, 4w), skip (B, k, 4d, 4h, 4w) -> (B, c, 4d, 4h, 4w)."""
        return upscaled + self.out(F.gelu(self.mix(torch.cat([upscaled, skip.to(upscaled.dtype)], dim=1))))
