"""Mask decoder (docs/model.md#mask-decoder): two-way transformer, x4 upscaling, hypernetwork masks, text similarity.

For `base`: image embedding (B, 768, 8, 16, 16) -> low-res mask logits (B, 1, 32, 64, 64).
"""

from __future__ import annotations

import torch
from torch import nn

from segvol.model.image_skip import SkipFusion
from segvol.model.layers import MLP
from segvol.model.transformer import TwoWayTransformer


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
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
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
