"""SO(3)-equivariant patch embedding: a steerable voxel convolution reduced to per-patch invariants.

A reproduction study of SegVol found its Dice drops on rotated scans and proposed (without running
it) an equivariant patch embedding beside the frozen original; this module is that embedding,
`segvol.model.embedding_adapter` merges it with the frozen ViT.

    image (B, 1, D, H, W)
      -> steerable convolution, stride 1: field (B, irreps.dim, D, H, W), features of `irreps`
         (e.g. 8x0e + 4x1o + 2x2e) that rotate with the Wigner-D matrices of their order l
      -> per patch: mean field (equivariant), then invariants = [scalars, |mean l>0 irrep|,
         sqrt(mean |l>0 irrep|^2) (the patch's energy in that irrep)]: (B, n_tokens, n_invariants),
         tokens row-major like the ViT's

The kernel of the convolution is steerable: on the voxel offsets r of a k^3 cube it is
    K(r) = sum_paths  R_path(|r|) * Y_l(r / |r|)      (combined through an e3nn.o3 tensor product)
with R a learned combination of a smooth radial basis (`e3nn.math.soft_one_hot_linspace`) and Y_l
the real spherical harmonics (`e3nn.o3.spherical_harmonics`). On the cube lattice the kernel is
exactly equivariant under the 24 rotations that map the lattice onto itself (multiples of 90 deg
about an axis); for other angles only up to lattice sampling. The patch reduction keeps that
exactness where patches map onto patches (90 deg about z when the patch grid is square in H, W).

Coordinates: array axes (D, H, W) are (z, y, x) of e3nn's (x, y, z) vectors, one voxel = one unit
(index space, as the ViT sees it and as the rotation evaluation rotates).

Why e3nn: it is maintained, pure Python (installs as a wheel here) and gives exact spherical
harmonics, Wigner-D matrices and tensor products. `escnn` (which has ready-made steerable 3D
convolutions) needs `py3nj`, which needs a Fortran compiler to build, so it does not install here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SteerableVoxelConvolution(nn.Module):
    """Steerable 3D convolution of a scalar image: (B, 1, D, H, W) -> (B, irreps_out.dim, D, H, W).

    Channels follow `irreps_out` (e3nn layout: each irrep's 2l+1 components contiguous). Padding
    keeps the grid ("same"); zero padding is rotation-symmetric, so the borders stay equivariant.
    """

    def __init__(self, irreps_out: str = "8x0e + 4x1o + 2x2e", kernel_size: int = 5, radial_basis: int = 3) -> None:
        super().__init__()
        from e3nn import o3

        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.irreps_in = o3.Irreps("1x0e")
        self.irreps_out = o3.Irreps(irreps_out).simplify()
        self.irreps_sh = o3.Irreps.spherical_harmonics(max(l for _, (l, _) in self.irreps_out))
        self.kernel_size = int(kernel_size)
        self.radial_basis = int(radial_basis)
        self.tensor_product = o3.FullyConnectedTensorProduct(
            self.irreps_in, self.irreps_sh, self.irreps_out, shared_weights=False, compile_right=True)
        # (radial basis, tensor-product weights): the learned radial profile of every path
        self.radial_weight = nn.Parameter(torch.randn(self.radial_basis, self.tensor_product.weight_numel))
        self.bias = nn.Parameter(torch.zeros(self.irreps_out.count("0e")))
        half = self.kernel_size // 2
        steps = torch.arange(-half, half + 1, dtype=torch.float32)
        d, h, w = torch.meshgrid(steps, steps, steps, indexing="ij")
        self.register_buffer("offsets", torch.stack([w, h, d], dim=-1).reshape(-1, 3), persistent=False)

    def kernel(self) -> torch.Tensor:
        """(irreps_out.dim, 1, k, k, k) convolution weights."""
        from e3nn import o3
        from e3nn.math import soft_one_hot_linspace

        offsets = self.offsets
        length = offsets.norm(dim=-1)  # (k^3,)
        cutoff = self.kernel_size // 2 + 0.5  # the cube's inscribed sphere plus half a voxel
        radial = soft_one_hot_linspace(length, 0.0, cutoff, self.radial_basis, basis="smooth_finite", cutoff=True)
        radial = radial * math.sqrt(self.radial_basis)  # (k^3, basis)
        direction = torch.where(length[:, None] > 0, offsets, offsets.new_tensor([0.0, 0.0, 1.0]))
        harmonics = o3.spherical_harmonics(self.irreps_sh, direction, normalize=True, normalization="component")
        # the centre voxel has no direction: only its l = 0 harmonic is defined
        harmonics = torch.where((length[:, None] > 0) | (torch.arange(harmonics.shape[1], device=offsets.device) == 0),
                                harmonics, torch.zeros_like(harmonics))
        weights = radial @ self.radial_weight / math.sqrt(self.radial_basis)  # (k^3, weight_numel)
        kernel = self.tensor_product.right(harmonics, weights)  # (k^3, 1, irreps_out.dim)
        k = self.kernel_size
        return kernel.reshape(k, k, k, 1, -1).permute(4, 3, 0, 1, 2) / k ** 1.5

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps_out.dim, D, H, W)."""
        scalars = _scalar_channels(self.irreps_out).to(image.device)
        bias = torch.zeros(self.irreps_out.dim, dtype=image.dtype, device=image.device)
        bias = bias.masked_scatter(scalars, self.bias.to(image.dtype))  # only invariant channels get a bias
        return F.conv3d(image, self.kernel().to(image.dtype), bias, padding=self.kernel_size // 2)


class EquivariantPatchEmbedding(nn.Module):
    """(B, 1, D, H, W) -> (B, n_tokens, n_invariants) rotation-invariant patch descriptors.

    `field(x)` gives the raw equivariant field (B, irreps.dim, D, H, W) and `patch_field(x)` its
    per-patch mean (B, irreps.dim, d, h, w), both of which rotate with the Wigner-D matrices.
    """

    def __init__(self, patch_size, irreps: str = "8x0e + 4x1o + 2x2e", kernel_size: int = 5,
                 radial_basis: int = 3) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.convolution = SteerableVoxelConvolution(irreps, kernel_size, radial_basis)
        irreps_out = self.convolution.irreps_out
        scalars = sum(mul for mul, ir in irreps_out if ir.l == 0)
        vectors = sum(mul for mul, ir in irreps_out if ir.l > 0)
        self.n_invariants = scalars + 2 * vectors

    @property
    def irreps(self):
        return self.convolution.irreps_out

    def field(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps.dim, D, H, W)."""
        return self.convolution(image)

    def patch_field(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps.dim, d, h, w): the field's mean over each patch."""
        return _patch_mean(self.field(image), self.patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, d*h*w, n_invariants), tokens row-major over (d, h, w)."""
        field = self.field(image)
        # (B, 2 * irreps.dim, d, h, w): patch means of the field and of its squares, in one pass
        means = _patch_mean(torch.cat([field, field * field], dim=1), self.patch_size)
        mean, mean_square = means.split(field.shape[1], dim=1)
        parts, start = [], 0
        for mul, ir in self.irreps:
            width = mul * ir.dim
            if ir.l == 0:
                parts.append(mean[:, start:start + width])
            else:
                b, _, *grid = mean.shape
                parts.append(mean[:, start:start + width].reshape(b, mul, ir.dim, *grid).norm(dim=2))
                # root of the patch-mean squared norm: the field's energy, independent of orientation
                energy = mean_square[:, start:start + width].reshape(b, mul, ir.dim, *grid).sum(dim=2)
                parts.append(energy.clamp_min(1e-12).sqrt())
            start += width
        invariants = torch.cat(parts, dim=1)  # (B, n_invariants, d, h, w)
        return invariants.flatten(2).transpose(1, 2)


def _patch_mean(field: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C, d, h, w) mean over non-overlapping patches."""
    b, c, depth, height, width = field.shape
    pd, ph, pw = patch_size
    return field.reshape(b, c, depth // pd, pd, height // ph, ph, width // pw, pw).mean(dim=(3, 5, 7))


def _scalar_channels(irreps) -> torch.Tensor:
    mask = []
    for mul, ir in irreps:
        mask += [ir.l == 0 and ir.p == 1] * (mul * ir.dim)
    return torch.tensor(mask, dtype=torch.bool)
