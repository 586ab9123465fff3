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

How it is computed (same values as the flow above, up to float rounding):
- the patch means come from one strided convolution with the kernel summed over a patch
  (convolution is linear, so the mean of the field over a patch is the image convolved with the
  box-summed kernel at the patch's corner): (pd+k-1)(ph+k-1)(pw+k-1) taps per patch instead of a
  full-resolution field of every channel;
- only the energies need the field voxel by voxel, and only its l > 0 channels (the scalars'
  energy is not a feature): a full-resolution convolution with those kernel rows (22 of 30
  channels for the default irreps), squared in place and average-pooled;
- the kernel is rebuilt from the radial weights only while a gradient has to flow into it
  (training); otherwise it is built once per value of the weights and reused (see
  `SteerableVoxelConvolution.reused`). The cache is keyed on the weights' values, not on their
  version counters, because in-place writes through `.data` (older optimizers, manual surgery)
  do not bump those; comparing the few radial weights costs microseconds.

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

    # False rebuilds the kernel on every call, as training does (benchmarks compare both)
    reuse_kernel = True

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
            self.irreps_in, self.irreps_sh, self.irreps_out, shared_weights=False, compile_right=True
        )
        # (radial basis, tensor-product weights): the learned radial profile of every path
        self.radial_weight = nn.Parameter(torch.randn(self.radial_basis, self.tensor_product.weight_numel))
        self.bias = nn.Parameter(torch.zeros(self.irreps_out.count("0e")))
        half = self.kernel_size // 2
        steps = torch.arange(-half, half + 1, dtype=torch.float32)
        d, h, w = torch.meshgrid(steps, steps, steps, indexing="ij")
        self.register_buffer("offsets", torch.stack([w, h, d], dim=-1).reshape(-1, 3), persistent=False)
        self._reused_weight: torch.Tensor | None = None  # the radial weights the entries of _reused were built from
        self._reused: dict = {}

    def kernel(self) -> torch.Tensor:
        """(irreps_out.dim, 1, k, k, k) convolution weights; reused while no gradient needs them
        (treat as read-only)."""
        return self.reused("kernel", self._build_kernel)

    def reused(self, key, build):
        """`build()`, remembered under `key` until the radial weights change, unless a gradient must flow
        through it (grad mode on and the weights trainable) or `reuse_kernel` is False."""
        weight = self.radial_weight
        if not self.reuse_kernel or (torch.is_grad_enabled() and weight.requires_grad):
            return build()
        # normal (not inference-mode) tensors, so a later call outside inference mode may use them
        with torch.inference_mode(False), torch.no_grad():
            built_from, entries = self._reused_weight, self._reused
            if (
                built_from is None
                or built_from.device != weight.device
                or built_from.dtype != weight.dtype
                or not torch.equal(built_from, weight)
            ):
                entries = {}  # a fresh dict, not cleared in place: a concurrent caller keeps its own
                self._reused, self._reused_weight = entries, weight.detach().clone()
            value = entries.get(key)
            if value is None:
                value = entries[key] = build()
        return value

    def _build_kernel(self) -> torch.Tensor:
        from e3nn import o3
        from e3nn.math import soft_one_hot_linspace

        offsets = self.offsets
        # full precision whatever the caller's autocast: the kernel is tiny, and a reused one must not
        # depend on the context of the call that built it
        with torch.autocast(offsets.device.type, enabled=False):
            length = offsets.norm(dim=-1)  # (k^3,)
            cutoff = self.kernel_size // 2 + 0.5  # the cube's inscribed sphere plus half a voxel
            radial = soft_one_hot_linspace(length, 0.0, cutoff, self.radial_basis, basis="smooth_finite", cutoff=True)
            radial = radial * math.sqrt(self.radial_basis)  # (k^3, basis)
            direction = torch.where(length[:, None] > 0, offsets, offsets.new_tensor([0.0, 0.0, 1.0]))
            harmonics = o3.spherical_harmonics(self.irreps_sh, direction, normalize=True, normalization="component")
            # the centre voxel has no direction: only its l = 0 harmonic is defined
            harmonics = torch.where(
                (length[:, None] > 0) | (torch.arange(harmonics.shape[1], device=offsets.device) == 0),
                harmonics,
                torch.zeros_like(harmonics),
            )
            weights = radial @ self.radial_weight / math.sqrt(self.radial_basis)  # (k^3, weight_numel)
            kernel = self.tensor_product.right(harmonics, weights)  # (k^3, 1, irreps_out.dim)
        k = self.kernel_size
        # contiguous: with a permuted weight oneDNN writes the field channels-last and then copies it
        # back (a third of the embedding's time on the tiny preset)
        return (kernel.reshape(k, k, k, 1, -1).permute(4, 3, 0, 1, 2) / k**1.5).contiguous()

    def bias_vector(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(irreps_out.dim,): `bias` on the invariant (0e) channels, zero on the others."""
        scalars = _scalar_channels(self.irreps_out).to(device)
        bias = torch.zeros(self.irreps_out.dim, dtype=dtype, device=device)
        return bias.masked_scatter(scalars, self.bias.to(dtype))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps_out.dim, D, H, W)."""
        bias = self.bias_vector(image.dtype, image.device)
        return F.conv3d(image, self.kernel().to(image.dtype), bias, padding=self.kernel_size // 2)

    def patch_mean(self, image: torch.Tensor, patch_size, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps_out.dim, D/pd, H/ph, W/pw): the field's mean over each patch,
        equal to averaging `forward(image)` up to float rounding. `kernel`: this call's `kernel()`, when the
        caller already has it (in training that saves building it twice)."""
        _check_divisible(image, patch_size)
        patch_size = tuple(int(p) for p in patch_size)
        kernel = self.kernel() if kernel is None else kernel
        patch_kernel = self.reused(("patch_kernel", patch_size), lambda: _box_mean(kernel, patch_size))
        half = self.kernel_size // 2
        return F.conv3d(
            F.pad(image, (half,) * 6),
            patch_kernel.to(image.dtype),
            self.bias_vector(image.dtype, image.device),
            stride=patch_size,
        )


class EquivariantPatchEmbedding(nn.Module):
    """(B, 1, D, H, W) -> (B, n_tokens, n_invariants) rotation-invariant patch descriptors.

    `field(x)` gives the raw equivariant field (B, irreps.dim, D, H, W) and `patch_field(x)` its
    per-patch mean (B, irreps.dim, d, h, w), both of which rotate with the Wigner-D matrices.
    """

    def __init__(
        self, patch_size, irreps: str = "8x0e + 4x1o + 2x2e", kernel_size: int = 5, radial_basis: int = 3
    ) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.convolution = SteerableVoxelConvolution(irreps, kernel_size, radial_basis)
        irreps_out = self.convolution.irreps_out
        scalars = sum(mul for mul, ir in irreps_out if ir.l == 0)
        vectors = sum(mul for mul, ir in irreps_out if ir.l > 0)
        self.n_invariants = scalars + 2 * vectors
        mask = []
        for mul, ir in irreps_out:
            mask += [ir.l > 0] * (mul * ir.dim)
        self.register_buffer("oriented_channels", torch.tensor(mask, dtype=torch.bool), persistent=False)

    @property
    def irreps(self):
        return self.convolution.irreps_out

    def field(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps.dim, D, H, W)."""
        return self.convolution(image)

    def patch_field(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, irreps.dim, d, h, w): the field's mean over each patch."""
        return self.convolution.patch_mean(image, self.patch_size)

    def patch_energy(self, image: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, n_l>0_irreps, d, h, w): mean over each patch of |irrep|^2, per l > 0 irrep
        (multiplicities expanded, in `irreps` order). `kernel`: as in `patch_mean`."""
        _check_divisible(image, self.patch_size)
        kernel = self.convolution.kernel() if kernel is None else kernel
        kernel = self.convolution.reused("oriented_kernel", lambda: kernel[self.oriented_channels])
        field = F.conv3d(image, kernel.to(image.dtype), padding=self.convolution.kernel_size // 2)  # no bias: l > 0
        means = F.avg_pool3d(field.square_(), self.patch_size)  # (B, oriented channels, d, h, w)
        b, _, *grid = means.shape
        parts, start = [], 0
        for mul, ir in self.irreps:
            if ir.l > 0:
                parts.append(means[:, start : start + mul * ir.dim].reshape(b, mul, ir.dim, *grid).sum(dim=2))
                start += mul * ir.dim
        return torch.cat(parts, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, d*h*w, n_invariants), tokens row-major over (d, h, w)."""
        kernel = self.convolution.kernel()
        mean = self.convolution.patch_mean(image, self.patch_size, kernel)  # (B, irreps.dim, d, h, w)
        # root of the patch-mean squared norm: the field's energy, independent of orientation
        energy = self.patch_energy(image, kernel).clamp_min(1e-12).sqrt() if _has_oriented_irreps(self.irreps) else None
        b, _, *grid = mean.shape
        parts, start, oriented = [], 0, 0
        for mul, ir in self.irreps:
            width = mul * ir.dim
            if ir.l == 0:
                parts.append(mean[:, start : start + width])
            else:
                parts.append(mean[:, start : start + width].reshape(b, mul, ir.dim, *grid).norm(dim=2))
                parts.append(energy[:, oriented : oriented + mul])
                oriented += mul
            start += width
        invariants = torch.cat(parts, dim=1)  # (B, n_invariants, d, h, w)
        return invariants.flatten(2).transpose(1, 2)


def _box_mean(kernel: torch.Tensor, patch_size) -> torch.Tensor:
    """(C, 1, k, k, k) -> (C, 1, pd+k-1, ph+k-1, pw+k-1): the kernel fully convolved with a patch-sized box
    divided by its volume, so that a convolution with stride `patch_size` gives per-patch means."""
    # a mean over every patch-sized window of the zero-padded kernel, one axis at a time (the box is separable)
    for axis, size in enumerate(patch_size):
        window = [1, 1, 1]
        window[axis] = size
        padding = [0] * 6
        padding[4 - 2 * axis] = padding[5 - 2 * axis] = size - 1
        kernel = F.avg_pool3d(F.pad(kernel, padding), window, stride=1)
    return kernel


def _has_oriented_irreps(irreps) -> bool:
    return any(ir.l > 0 for _, ir in irreps)


def _check_divisible(image: torch.Tensor, patch_size) -> None:
    if any(size % patch for size, patch in zip(image.shape[2:], patch_size)):
        raise ValueError(
            f"equivariant patch embedding: image size {tuple(image.shape[2:])} is not a multiple "
            f"of the patch size {tuple(patch_size)}"
        )


def _scalar_channels(irreps) -> torch.Tensor:
    mask = []
    for mul, ir in irreps:
        mask += [ir.l == 0 and ir.p == 1] * (mul * ir.dim)
    return torch.tensor(mask, dtype=torch.bool)
