"""3D ViT image encoder (docs/model.md#image-encoder): the MONAI 0.9 ViT used by SegVol, parameter-name compatible.

Shapes for `base`: image (B, 1, 32, 256, 256) -> 2048 tokens of width 768 -> grid (B, 768, 8, 16, 16).

Precision: "fp32" (default) computes what the released network computes. "bf16" is an opt-in for
inference (`ImageEncoderViT3D.set_precision`): the linear layers' weights are converted to
bfloat16 once and the matmuls (projections, attention, MLP) run in bfloat16 under autocast, while
the position embedding, the residual stream, the layer norms and the output stay
float32. Converting the weights once, not per call as plain autocast does, saves a cast of all
86M encoder weights per encoder call (benchmarks/bench_encoder.py measures both; docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16")


class PatchFlatten(nn.Module):
    """(B, C, D, H, W) -> (B, d*h*w, p_d*p_h*p_w*C) non-overlapping patches.

    Tokens are row-major over the (d, h, w) patch grid; each patch vector is flattened in
    (p_d, p_h, p_w, c) order, which the released perceptron weights expect.
    """

    def __init__(self, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, depth, height, width = x.shape
        pd, ph, pw = self.patch_size
        x = x.reshape(b, c, depth // pd, pd, height // ph, ph, width // pw, pw)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, d, h, w, p_d, p_h, p_w, c
        return x.reshape(b, (depth // pd) * (height // ph) * (width // pw), pd * ph * pw * c)


class PatchEmbedding(nn.Module):
    """Perceptron patch embedding plus a learned absolute position embedding.

    Parameters: `patch_embeddings.1.{weight,bias}` (hidden, prod(patch)*C) and
    `position_embeddings` (1, n_tokens, hidden). Index 0 of `patch_embeddings` is parameter-free.
    """

    def __init__(self, in_channels: int, spatial_size, patch_size, hidden_size: int) -> None:
        super().__init__()
        n_tokens = 1
        patch_dim = in_channels
        for size, patch in zip(spatial_size, patch_size):
            n_tokens *= size // patch
            patch_dim *= patch
        self.patch_embeddings = nn.Sequential(PatchFlatten(patch_size), nn.Linear(patch_dim, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_tokens, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, n_tokens, hidden)."""
        return self.patch_embeddings(x) + self.position_embeddings


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused bias-free `qkv` projection.

    The qkv output is laid out [q | k | v], each [head0 | head1 | ...] (MONAI's layout).
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, C/heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ViTMLP(nn.Module):
    """linear1 -> exact GELU -> linear2."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)). (B, N, C) -> (B, N, C)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.mlp = ViTMLP(hidden_size, mlp_dim)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """Plain 3D ViT without class token: (B, C, D, H, W) -> (B, hidden, d, h, w) token grid."""

    def __init__(
        self,
        spatial_size: tuple[int, int, int],
        patch_size: tuple[int, int, int],
        in_channels: int = 1,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.spatial_size = tuple(spatial_size)
        self.grid_size = tuple(s // p for s, p in zip(spatial_size, patch_size))
        self.patch_embedding = PatchEmbedding(in_channels, spatial_size, patch_size, hidden_size)
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, mlp_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.apply(_init_vit_weights)
        # Optional (B, C, D, H, W) -> (B, n_tokens, hidden) token correction added to the patch
        # tokens (segvol.model.embedding_adapter); None keeps the released parameter names only.
        self.extra_embedding: nn.Module | None = None
        self.precision = "fp32"

    def set_precision(self, precision: str) -> ImageEncoderViT3D:
        """Switch to "bf16" inference (see the module docstring); "fp32" keeps the released numerics.

        bf16 converts the linear weights in place: to go back to exact fp32 results, reload the
        weights. Meant for inference; gradients of bf16 weights are not what training expects.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == self.precision:
            return self
        if precision == "fp32":
            raise ValueError("this image encoder already runs in bf16: reload the weights for fp32 results")
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.to(torch.bfloat16)
        self.precision = precision
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, hidden, d, h, w), in x's dtype."""
        if self.precision == "fp32":
            return self._encode(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self._encode(x).to(x.dtype)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embedding(x)
        if self.extra_embedding is not None:
            tokens = tokens + self.extra_embedding(x)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid_size)


def _init_vit_weights(module: nn.Module) -> None:
    # Same scheme as MONAI's ViT, so a from-scratch model starts like the released one did.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
