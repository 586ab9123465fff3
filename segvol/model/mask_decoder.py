"""Mask decoder (docs/model.md#mask-decoder): two-way transformer, x4 upscaling, hypernetwork masks, text similarity.

For `base`: image embedding (B, 768, 8, 16, 16) -> low-res mask logits (B, 1, 32, 64, 64).

The second upscaling convolution runs, on the CPU at inference, as one matrix product (`PatchConvTranspose3d`):
the same numbers as `nn.ConvTranspose3d` (bit for bit on the CPUs we measured; the network's
fidelity tests hold either way) in two thirds of the time (`base`, one thread: 0.14 s instead of
0.22 s of a 0.55 s decode), since oneDNN's convolution spends much of its time converting its
channels-last output to the contiguous layout. The first one stays a convolution: as a matrix
product it sums its 768 inputs in another order (results differ by ~1e-6).
"""

from __future__ import annotations

import torch
from torch import nn

from segvol.model.image_skip import SkipFusion
from segvol.model.layers import MLP
from segvol.model.transformer import TwoWayTransformer


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """A kernel-2 stride-2 `nn.ConvTranspose3d` (same parameters and keys) computed, on the CPU in
    full precision and without autograd (inference), as ``(B, d*h*w, C_in) @ (C_in, C_out*8)`` and a
    rearrangement: each input voxel becomes its own 2x2x2 block of output voxels. Elsewhere (training,
    a GPU, autocast) the plain convolution.

    (B, C_in, d, h, w) -> (B, C_out, 2d, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training keeps the convolution: the matrix product's weight gradients sum in another order
        # (~1e-4 apart), which would change every trained model of the workflow.
        plain = x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
        if plain or torch.is_grad_enabled():
            return super().forward(x)
        b, c_in, *grid = x.shape
        c_out = self.out_channels
        out = torch.matmul(x.reshape(b, c_in, -1).transpose(1, 2), self.weight.reshape(c_in, c_out * 8))
        out += self.bias.repeat_interleave(8)  # (B, d*h*w, C_out*8), column = channel*8 + (kd, kh, kw)
        out = out.reshape(b, *grid, c_out, 2, 2, 2).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(b, c_out, *(2 * n for n in grid))


class MaskDecoder3D(nn.Module):
    """Predicts the mask logits of mask token 0 from image and prompt embeddings.

    Tokens fed to the transformer: [iou_token, mask_tokens x num_mask_tokens, sparse prompts].
    Only mask token 0 is decoded (the released model never asks for multimask output), so the
    other hypernetwork MLPs and the IoU head keep their weights for compatibility but are not
    evaluated; they receive no gradient.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        image_embedding_size: tuple[int, int, int],
        num_mask_tokens: int = 4,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_mask_tokens
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        upscaled_shape = (transformer_dim // 4, *(2 * g for g in image_embedding_size))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            # Normalizes over the whole (C/4, 2d, 2h, 2w) map with an element-wise affine of that
            # shape, as released; it ties the decoder to one input size.
            nn.LayerNorm(upscaled_shape),
            nn.GELU(),
            PatchConvTranspose3d(transformer_dim // 4, transformer_dim // 8),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, num_mask_tokens, iou_head_depth)
        self.txt_align_upscaled_embedding = nn.Linear(transformer_dim, transformer_dim // 8)
        # ModelConfig.image_skip_channels (not in the released network): image features at mask resolution
        self.skip_fusion = SkipFusion(transformer_dim // 8, skip_channels) if skip_channels else None

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-res logits (B, 1, 4d, 4h, 4w).

        image_embeddings (B, C, d, h, w); image_pe (1, C, d, h, w); sparse (B, Ns, C);
        dense (B, C, d, h, w); text_embedding (B, C) or None (adds the text-similarity map);
        skip (B, k, 4d, 4h, 4w) image features (only with skip_channels k).
        """
        b = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)], dim=1)

        src = image_embeddings + dense_prompt_embeddings
        hs, src = self.transformer(src, image_pe, tokens)
        mask_token_out = hs[:, 1, :]

        src = src.transpose(1, 2).reshape(image_embeddings.shape)
        upscaled = self.output_upscaling(src)  # (B, C/8, 4d, 4h, 4w)
        if self.skip_fusion is not None:
            upscaled = self.skip_fusion(upscaled, skip)
        c, *low_res = upscaled.shape[1:]
        upscaled = upscaled.reshape(b, c, -1)

        hyper_in = self.output_hypernetworks_mlps[0](mask_token_out)  # (B, C/8)
        if text_embedding is not None:
            # The released text branch adds a raw dot product t . upscaled to the logits (not a
            # gate); since h . up + t . up = (h + t) . up, one product serves both.
            hyper_in = hyper_in + self.txt_align_upscaled_embedding(text_embedding)
        masks = torch.bmm(hyper_in.unsqueeze(1), upscaled)  # (B, 1, N)
        return masks.reshape(b, 1, *low_res)
