"""3D prompt encoder (docs/model.md#prompt-encoder): points, one box and text become sparse tokens; dense = no-mask.

Coordinates are voxel indices (d, h, w) in the model-input frame `input_image_size`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segvol.model.layers import ChannelLayerNorm


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding of normalized 3D coordinates.

    `positional_encoding_gaussian_matrix` (3, num_pos_feats) is random at init and belongs to
    the weights: a model must load it from its checkpoint, never draw it again.

    Conventions (see ModelConfig.coordinate_convention):
    - "released": sparse (p0, p1, p2) -> (p0/H, p1/D, p2/W); dense cell (i, j, k) ->
      ((j+.5)/h, (i+.5)/d, (k+.5)/w). Inconsistent, but the released weights were trained so.
    - "dhw": sparse -> (p0/D, p1/H, p2/W); dense -> ((i+.5)/d, (j+.5)/h, (k+.5)/w).
    """

    def __init__(self, num_pos_feats: int, coordinate_convention: str = "released", scale: float = 1.0) -> None:
        super().__init__()
        self.coordinate_convention = coordinate_convention
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coordinates in [0, 1] -> (..., 2*num_pos_feats), sin half first."""
        coords = 2 * coords - 1
        coords = 2 * math.pi * (coords @ self.positional_encoding_gaussian_matrix.to(coords.dtype))
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, grid_size: tuple[int, int, int]) -> torch.Tensor:
        """PE of every cell centre of the (d, h, w) token grid -> (2*num_pos_feats, d, h, w)."""
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in grid_size]
        i, j, k = torch.meshgrid(*axes, indexing="ij")
        if self.coordinate_convention == "released":
            coords = torch.stack([j, i, k], dim=-1)
        else:
            coords = torch.stack([i, j, k], dim=-1)
        return self._encode(coords).permute(3, 0, 1, 2)

    def sparse(self, coords: torch.Tensor, input_size: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, 3) voxel coordinates (already shifted to voxel centres) -> (B, N, 2*num_pos_feats)."""
        if self.coordinate_convention == "released":
            divisor = (input_size[1], input_size[0], input_size[2])
        else:
            divisor = tuple(input_size)
        scale = coords.new_tensor(divisor)
        return self._encode(coords.to(torch.float32) / scale)


class PromptEncoder3D(nn.Module):
    """Sparse tokens [points (+pad)] [box min corner, box max corner] [text] and a dense embedding.

    Point labels: 1 positive, 0 negative, -1 ignore (its coordinates are not used; it becomes the
    learned `not_a_point_embed` token). One padding point is appended when points come without a
    box. Mask prompts are not supported; `mask_downscaling` (2D, unused) exists only so that the
    released checkpoint keys load.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int = 16,
        coordinate_convention: str = "released",
        patch_size: tuple[int, int, int] | None = None,
    ) -> None:
        """patch_size: give it to add the dense box prompt (ModelConfig.dense_box_prompt)."""
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2, coordinate_convention)
        # 0 negative point, 1 positive point, 2 box min corner, 3 box max corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            ChannelLayerNorm(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        if self.patch_size is not None:
            self.box_dense_embed = nn.Embedding(1, embed_dim)

    def box_coverage(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 6) inclusive voxel boxes -> (B, d, h, w): share of each token's patch inside the box.

        Empty boxes (all -1) cover nothing.
        """
        coverage = None
        for axis, (cells, patch) in enumerate(zip(self.image_embedding_size, self.patch_size)):
            start = torch.arange(cells, device=boxes.device, dtype=torch.float32) * patch
            low = boxes[:, axis, None].float()
            high = boxes[:, axis + 3, None].float() + 1
            share = (torch.minimum(high, start + patch) - torch.maximum(low, start)).clamp(min=0) / patch
            share = share.reshape(share.shape[0], *[cells if a == axis else 1 for a in range(3)])
            coverage = share if coverage is None else coverage * share
        return coverage

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image tokens: (1, embed_dim, d, h, w). Do not modify it in place.

        It depends only on the Gaussian matrix, so it is computed once per value of that buffer
        (the same tensor as a fresh computation, bit for bit; base: ~1.5M sines and cosines per decode).
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (matrix.device, matrix.dtype, matrix.data_ptr(), matrix._version)
        cached = getattr(self, "_dense_pe", None)
        if cached is None or cached[0] != key:
            cached = (key, self.pe_layer.dense(self.image_embedding_size).unsqueeze(0))
            self._dense_pe = cached
        return cached[1]

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 3) float, (B, N) long -> (B, N(+1), embed_dim)."""
        coords = coords.to(torch.float32) + 0.5  # voxel index -> voxel centre
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.pe_layer.sparse(coords, self.input_image_size)
        ignore = (labels == -1).unsqueeze(-1)
        embedding = torch.where(ignore, self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == 0).unsqueeze(-1) * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1).unsqueeze(-1) * self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 6) (d0, h0, w0, d1, h1, w1) inclusive voxel indices -> (B, 2, embed_dim)."""
        corners = boxes.to(torch.float32).reshape(-1, 2, 3) + 0.5
        embedding = self.pe_layer.sparse(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_embed

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        text_embedding: torch.Tensor | None,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> sparse (B, N_tokens, embed_dim), dense (B, embed_dim, d, h, w).

        points: ((B, N, 3) float, (B, N) long) | None; boxes: (B, 6) | None;
        text_embedding: (B, embed_dim) | None.
        """
        device = self.no_mask_embed.weight.device
        tokens = []
        if points is not None:
            tokens.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if text_embedding is not None:
            tokens.append(text_embedding.unsqueeze(1))
        if tokens:
            sparse = torch.cat(tokens, dim=1)
        else:
            sparse = torch.empty(batch_size, 0, self.embed_dim, device=device)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch_size, -1, *self.image_embedding_size)
        if boxes is not None and self.patch_size is not None:
            coverage = self.box_coverage(boxes).unsqueeze(1)  # (B, 1, d, h, w)
            dense = dense + coverage * self.box_dense_embed.weight.reshape(1, -1, 1, 1, 1)
        return sparse, dense
