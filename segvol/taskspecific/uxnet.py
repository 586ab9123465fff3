"""3D UX-Net (Lee et al., ICLR 2023), written from the paper.

Encoder: a 7^3 stride-2 stem, then four stages of UX blocks (depthwise 7^3 convolution ->
LayerNorm -> "depthwise convolution scaling": two 1^3 convolutions grouped per channel with GELU,
layer scale and a residual), stride-2 2^3 downsampling between stages. Decoder: UNETR's, from
MONAI's blocks (`UnetrBasicBlock` skips, `UnetrUpBlock` up-sampling, `UnetOutBlock` head).
The published configuration (depths 2-2-2-2, widths 48-96-192-384, hidden 768) has 53.0 M
parameters; `tests/test_taskspecific.py` counts ours against it.

Shapes: input (B, in_channels, D, H, W) with D, H, W divisible by 16 -> logits (B, out_channels, D, H, W);
stage i output (B, widths[i], D / 2^(i+1), H / 2^(i+1), W / 2^(i+1)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, D, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class UXBlock(nn.Module):
    """(B, C, D, H, W) -> same shape: x + gamma * DCS(LN(DWConv7(x)))."""

    def __init__(self, channels: int, kernel_size: int = 7, expansion: int = 4, layer_scale: float = 1e-6):
        super().__init__()
        self.depthwise = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = ChannelsFirstLayerNorm(channels)
        self.expand = nn.Conv3d(channels, expansion * channels, 1, groups=channels)
        self.act = nn.GELU()
        self.project = nn.Conv3d(expansion * channels, channels, 1, groups=channels)
        self.gamma = nn.Parameter(layer_scale * torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.project(self.act(self.expand(self.norm(self.depthwise(x)))))


class UXNetEncoder(nn.Module):
    """(B, in, D, H, W) -> four feature maps at 1/2, 1/4, 1/8, 1/16 resolution."""

    def __init__(self, in_channels: int, depths: Sequence[int], widths: Sequence[int]):
        super().__init__()
        self.downsample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv3d(in_channels, widths[0], 7, stride=2, padding=3), ChannelsFirstLayerNorm(widths[0])
                )
            ]
        )
        for i in range(len(widths) - 1):
            self.downsample.append(
                nn.Sequential(ChannelsFirstLayerNorm(widths[i]), nn.Conv3d(widths[i], widths[i + 1], 2, stride=2))
            )
        self.stages = nn.ModuleList(nn.Sequential(*[UXBlock(w) for _ in range(d)]) for d, w in zip(depths, widths))
        self.norms = nn.ModuleList(ChannelsFirstLayerNorm(w) for w in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for down, stage, norm in zip(self.downsample, self.stages, self.norms):
            x = stage(down(x))
            features.append(norm(x))
        return features


class UXNet(nn.Module):
    """3D UX-Net: UX-block encoder + UNETR decoder. (B, in, D, H, W) -> (B, out, D, H, W)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        norm_name: str = "instance",
    ):
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        super().__init__()
        self.encoder = UXNetEncoder(in_channels, depths, widths)

        def basic(cin, cout):
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)

        def up(cin, cout):
            return UnetrUpBlock(
                3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True
            )

        self.skip0 = basic(in_channels, widths[0])  # full resolution, from the image
        self.skips = nn.ModuleList(basic(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.bottleneck = basic(widths[-1], hidden_size)
        self.ups = nn.ModuleList(
            [up(hidden_size, widths[-1])] + [up(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1))]
        )
        self.last = basic(widths[0], widths[0])
        self.head = UnetOutBlock(3, widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        skips = [self.skip0(x)] + [block(f) for block, f in zip(self.skips, features[:-1])]
        y = self.bottleneck(features[-1])
        for block, skip in zip(self.ups, reversed(skips)):
            y = block(y, skip)
        return self.head(self.last(y))
