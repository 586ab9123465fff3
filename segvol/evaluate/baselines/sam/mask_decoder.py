"""SAM's mask decoder in 2-D or 3-D: a two-way transformer between output/prompt tokens and image
tokens, x4 transposed-conv upscaling, one hypernetwork per mask token, an IoU head.

image embedding (B, C, *grid), its PE (1, C, *grid), sparse prompts (B, N, C), dense prompts
(B, C, *grid) -> mask logits (B, M, *[4 * grid]) and predicted IoU (B, M); M = 3 with
`multimask`, else 1 (mask token 0).
"""

from __future__ import annotations

import torch
from torch import nn

from segvol.evaluate.baselines.sam.convolutions import transposed_conv
from segvol.model.layers import MLP, ChannelLayerNorm
from segvol.model.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self, spatial_dims: int, transformer_dim: int, num_multimask_outputs: int = 3, iou_head_hidden_dim: int = 256
    ) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        up = transposed_conv(spatial_dims)
        self.output_upscaling = nn.Sequential(
            up(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            ChannelLayerNorm(transformer_dim // 4),
            nn.GELU(),
            up(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        image = image_embeddings
        if image.shape[0] != batch:
            image = image.repeat_interleave(batch, dim=0)
        image = image + dense_prompt_embeddings
        pe = image_pe.expand(batch, *image_pe.shape[1:])
        hidden, image_tokens = self.transformer(image, pe, tokens)
        grid = image.shape[2:]
        image = image_tokens.transpose(1, 2).reshape(batch, -1, *grid)
        upscaled = self.output_upscaling(image)  # (B, C/8, *4grid)
        hyper = torch.stack(
            [mlp(hidden[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, tokens, C/8)
        masks = (hyper @ upscaled.flatten(2)).reshape(batch, -1, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hidden[:, 0])
        chosen = slice(1, None) if multimask else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]
