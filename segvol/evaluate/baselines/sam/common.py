"""Building blocks shared by the 2-D and 3-D SAM components."""

from __future__ import annotations

import torch
from torch import nn


def conv(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def transposed_conv(spatial_dims: int) -> type[nn.Module]:
    """nn.ConvTranspose2d or nn.ConvTranspose3d."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) map (SAM's LayerNorm2d / LayerNorm3d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)
