"""Deterministic stand-ins for SegVol with the same API, for the geometry tests of segvol.infer."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class BoxModel(nn.Module):
    """Logits +4 exactly inside the given box (model-input voxels), -4 elsewhere.

    Without a box: +4 within ``radius`` voxels of a positive point, else -4. Text alone: -4.
    Counts image-encoder windows and decoder items so tests can check the work done.
    """

    def __init__(self, spatial_size=(8, 32, 32), radius: int = 1) -> None:
        super().__init__()
        self.config = SimpleNamespace(spatial_size=tuple(spatial_size))
        self.anchor = nn.Parameter(torch.zeros(()))
        self.radius = radius
        self.images_encoded = 0
        self.prompts_decoded = 0
        self.texts_encoded = 0

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape[1:] == (1, *self.config.spatial_size), image.shape
        self.images_encoded += image.shape[0]
        return image + self.anchor

    def encode_text(self, names):
        self.texts_encoded += len(names)
        return torch.stack([torch.full((4,), float(len(name))) for name in names])

    def decode(self, image_embedding, text=None, boxes=None, points=None):
        batch = next(x.shape[0] for x in (text, boxes, points[0] if points else None) if x is not None)
        assert image_embedding.shape[0] == batch
        self.prompts_decoded += batch
        size = self.config.spatial_size
        out = torch.full((batch, 1, *size), -4.0)
        grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij"), dim=-1)
        for b in range(batch):
            if boxes is not None:
                box = boxes[b].round().long().tolist()
                out[b, 0, box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = 4.0
            elif points is not None:
                coords, labels = points
                for point, label in zip(coords[b], labels[b]):
                    if label == 1:
                        near = (grid - point.round().long()).abs().amax(dim=-1) <= self.radius
                        out[b, 0][near] = 4.0
        return out


class MixingModel(nn.Module):
    """Logits depend smoothly on the image and on every prompt, item by item (no batch mixing).

    Used to check that decoding K prompts together equals decoding them one by one.
    """

    def __init__(self, spatial_size=(8, 32, 32)) -> None:
        super().__init__()
        self.config = SimpleNamespace(spatial_size=tuple(spatial_size))
        self.weight = nn.Parameter(torch.tensor(3.0))

    def encode_image(self, image):
        return torch.tanh(self.weight * image - 1.0)

    def encode_text(self, names):
        return torch.stack([torch.tensor([len(name) / 10.0, name.count("e") / 3.0]) for name in names])

    def decode(self, image_embedding, text=None, boxes=None, points=None):
        size = self.config.spatial_size
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in size], indexing="ij"))
        out = image_embedding.clone()
        if text is not None:
            out = out * (1 + text[:, 0]).view(-1, 1, 1, 1, 1) + text[:, 1].view(-1, 1, 1, 1, 1) - 0.3
        if boxes is not None:
            centre = (boxes[:, :3] + boxes[:, 3:]) / 2
            half = (boxes[:, 3:] - boxes[:, :3]) / 2 + 1
            dist = ((grid[None] - centre.view(-1, 3, 1, 1, 1)).abs() / half.view(-1, 3, 1, 1, 1)).amax(dim=1)
            out = out + (1.0 - dist)[:, None]
        if points is not None:
            coords, labels = points
            for n in range(coords.shape[1]):
                dist = ((grid[None] - coords[:, n].view(-1, 3, 1, 1, 1)) ** 2).sum(dim=1).sqrt()
                sign = (2.0 * labels[:, n] - 1).view(-1, 1, 1, 1)
                out = out + (sign * torch.exp(-dist / 4))[:, None]
        return out
