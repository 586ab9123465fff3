"""SAM's prompt encoder in 2-D or 3-D: random-Fourier point encodings, learned point kinds,
a convolutional mask encoder.

points (B, N, n) in input-image pixels with labels (B, N) in {-1, 0, 1}; boxes (B, 2n) (2-D only);
masks (B, 1, *[4 * grid]) -> sparse (B, N', C) and dense (B, C, *grid) embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segvol.evaluate.baselines.sam.convolutions import conv
from segvol.model.layers import ChannelLayerNorm


class FourierPositionEncoding(nn.Module):
    """coords in [0, 1] (..., n) -> (..., C): sin/cos of a fixed random projection.

    2-D: [sin, cos] of C/2 frequencies (SAM). 3-D: [sin, cos, sin] of C/3 (SAM-Med3D's choice).
    """

    def __init__(self, spatial_dims: int, embed_dim: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.register_buffer(
            "positional_encoding_gaussian_matrix", torch.randn(spatial_dims, embed_dim // spatial_dims)
        )

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        waves = (torch.sin, torch.cos)
        return torch.cat([waves[i % 2](projected) for i in range(self.spatial_dims)], dim=-1)

    def grid(self, size: tuple[int, ...]) -> torch.Tensor:
        """The encoding of every cell centre of a `size` grid: (C, *size).

        The released models take coordinate 0 along axis 1 and coordinate 1 along axis 0 (SAM's
        (x, y) for an (H, W) image; kept as is in SAM-Med3D), so the grid does the same.
        """
        device = self.positional_encoding_gaussian_matrix.device
        centres = [(torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s for s in size]
        mesh = torch.meshgrid(*centres, indexing="ij")
        order = [1, 0] + list(range(2, len(size)))
        coords = torch.stack([mesh[axis] for axis in order], dim=-1)
        return self.encode(coords).movedim(-1, 0)


class PromptEncoder(nn.Module):
    """`point_kinds` learned embeddings: [negative, positive] (+ [box corner 0, box corner 1] in 2-D)."""

    def __init__(
        self,
        spatial_dims: int,
        embed_dim: int,
        embedding_size: int,
        input_size: int,
        point_kinds: int,
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim
        self.grid_size = (embedding_size,) * spatial_dims
        self.input_size = input_size
        self.pe_layer = FourierPositionEncoding(spatial_dims, embed_dim)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(point_kinds))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        conv_nd = conv(spatial_dims)
        self.mask_downscaling = nn.Sequential(
            conv_nd(1, mask_in_chans // 4, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans // 4),
            nn.GELU(),
            conv_nd(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans),
            nn.GELU(),
            conv_nd(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """(1, C, *grid): the positional encoding of the image embedding's cells."""
        return self.pe_layer.grid(self.grid_size)[None]

    def _points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords = coords.float() + 0.5  # pixel centres
        if pad:  # without a box, a "not a point" token stands in for it
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, coords.shape[2])], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self.pe_layer.encode(coords / self.input_size)
        embedding = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == 0)[..., None] * self.point_embeddings[0].weight
        return embedding + (labels == 1)[..., None] * self.point_embeddings[1].weight

    def _boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        if len(self.point_embeddings) < 4:
            raise ValueError("this model was not trained with box prompts")
        corners = (boxes.float() + 0.5).reshape(-1, 2, self.spatial_dims)
        embedding = self.pe_layer.encode(corners / self.input_size)
        corner_kinds = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return embedding + corner_kinds

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.no_mask_embed.weight.device
        batch = next((t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None), 1)
        sparse = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            sparse.append(self._points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, *[1] * self.spatial_dims)
            dense = dense.expand(batch, -1, *self.grid_size)
        return torch.cat(sparse, dim=1), dense
