"""ViTDet-style image encoder of SAM in 2-D or 3-D: windowed attention, decomposed relative
positions, a convolutional neck; optionally SAM-Med2D's adapter layer in every block.

image (B, in_chans, *[img_size] * spatial_dims) -> embedding (B, out_chans, *[img_size / 16] * spatial_dims).
SAM-Med2D: (B, 3, 256, 256) -> (B, 256, 16, 16).  SAM-Med3D: (B, 1, 128, 128, 128) -> (B, 384, 8, 8, 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segvol.evaluate.baselines.sam.convolutions import conv
from segvol.model.layers import ChannelLayerNorm, MLPBlock

# Parameter names of the relative position tables, by axis, as in the released checkpoints.
REL_POS_NAMES = {2: ("rel_pos_h", "rel_pos_w"), 3: ("rel_pos_d", "rel_pos_h", "rel_pos_w")}


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, *grid, C) -> (B * windows, *[window] * n, C), zero-padding the grid to a multiple of `window`.

    The padded tokens take part in attention (as in the released models), so they are kept.
    """
    batch, *grid, channels = x.shape
    pads = [(window - size % window) % window for size in grid]
    if any(pads):
        flat = [0, 0]
        for pad in reversed(pads):
            flat += [0, pad]
        x = F.pad(x, flat)
    padded = tuple(size + pad for size, pad in zip(grid, pads))
    n = len(grid)
    split = [batch]
    for size in padded:
        split += [size // window, window]
    x = x.reshape(*split, channels)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
    return x.permute(*order).reshape(-1, *[window] * n, channels), padded


def window_unpartition(windows: torch.Tensor, window: int, padded: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * windows, *[window] * n, C) -> (B, *grid, C)."""
    n = len(grid)
    counts = [size // window for size in padded]
    batch = windows.shape[0] // math.prod(counts)
    x = windows.reshape(batch, *counts, *[window] * n, windows.shape[-1])
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    x = x.permute(*order, 1 + 2 * n).reshape(batch, *padded, windows.shape[-1])
    return x[(slice(None), *(slice(0, size) for size in grid))]


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with decomposed relative positions.

    x (B, *grid, C) -> (B, *grid, C); one table (2 * size - 1, C / heads) per axis.
    """

    def __init__(self, dim: int, num_heads: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.grid = tuple(grid)
        for name, size in zip(REL_POS_NAMES[len(grid)], grid):
            setattr(self, name, nn.Parameter(torch.zeros(2 * size - 1, head_dim)))

    def relative_bias(self, q: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """q (B*heads, N, c) -> the additive bias (B*heads, N, N) of the decomposed relative positions."""
        if tuple(grid) != self.grid:
            raise ValueError(f"attention over a {tuple(grid)} grid, but its relative positions are for {self.grid}")
        n = len(grid)
        letters = "xyz"[:n]
        queries = q.reshape(q.shape[0], *grid, q.shape[-1])
        bias = torch.zeros(q.shape[0], *grid, *grid, dtype=q.dtype, device=q.device)
        for axis, (name, size) in enumerate(zip(REL_POS_NAMES[n], grid)):
            offsets = torch.arange(size, device=q.device)
            table = getattr(self, name)[offsets[:, None] - offsets[None, :] + size - 1]  # (q, k, c)
            along = torch.einsum(f"b{letters}c,{letters[axis]}kc->b{letters}k", queries, table.to(q.dtype))
            shape = [1] * n
            shape[axis] = size
            bias = bias + along.reshape(q.shape[0], *grid, *shape)
        return bias.reshape(q.shape[0], math.prod(grid), math.prod(grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, *grid, dim = x.shape
        tokens = math.prod(grid)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
        attention = (q * self.scale) @ k.transpose(-2, -1) + self.relative_bias(q, grid)
        out = attention.softmax(dim=-1) @ v  # (B*heads, N, c)
        out = out.reshape(batch, self.num_heads, *grid, -1).movedim(1, -2).reshape(batch, *grid, dim)
        return self.proj(out)


class AdapterLayer(nn.Module):
    """SAM-Med2D's adapter: a channel gate from the pooled tokens, then a stride-2 conv / transposed
    conv with a residual, then LayerNorm. tokens (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.permute(0, 3, 1, 2)
        gate = self.channel(x.mean(dim=(2, 3)))
        x = x + self.spatial(x * gate[:, :, None, None])
        return self.norm(x.permute(0, 2, 3, 1))


class Block(nn.Module):
    """Pre-norm transformer block; window attention unless `window` is 0 (global attention).

    tokens (B, *grid, C) -> (B, *grid, C). With an adapter (SAM-Med2D) the adapter runs beside
    the MLP on the same normalised tokens.
    """

    def __init__(self, dim: int, num_heads: int, grid: Sequence[int], window: int, adapter: bool) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid if window == 0 else (window,) * len(grid))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, 4 * dim, nn.GELU)
        if adapter:
            self.Adapter = AdapterLayer(dim)  # the attribute name is the checkpoint's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            grid = x.shape[1:-1]
            windows, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(windows), self.window, padded, grid)
        else:
            x = self.attn(x)
        x = shortcut + x
        normed = self.norm2(x)
        x = x + self.mlp(normed)
        if hasattr(self, "Adapter"):
            x = x + self.Adapter(normed)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patches: (B, in, *image) -> channels-last tokens (B, *grid, dim)."""

    def __init__(self, spatial_dims: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = conv(spatial_dims)(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).movedim(1, -1)


class ImageEncoderViT(nn.Module):
    """ViT-B backbone with absolute positions, `global_attn_indexes` global blocks, window 14 elsewhere."""

    def __init__(
        self,
        spatial_dims: int,
        img_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        out_chans: int,
        global_attn_indexes: Sequence[int],
        patch_size: int = 16,
        window_size: int = 14,
        adapter: bool = False,
    ) -> None:
        super().__init__()
        if adapter and spatial_dims != 2:
            raise ValueError("the adapter layer exists only in the 2-D encoder (SAM-Med2D)")
        self.img_size = img_size
        grid = (img_size // patch_size,) * spatial_dims
        self.patch_embed = PatchEmbed(spatial_dims, patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, grid, 0 if i in global_attn_indexes else window_size, adapter)
            for i in range(depth)
        )
        conv_nd = conv(spatial_dims)
        self.neck = nn.Sequential(
            conv_nd(embed_dim, out_chans, kernel_size=1, bias=False),
            ChannelLayerNorm(out_chans),
            conv_nd(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            ChannelLayerNorm(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.movedim(-1, 1))
