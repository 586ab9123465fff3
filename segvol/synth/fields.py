"""Geometry helpers for the phantoms: the voxel grid, smooth random fields, implicit shapes.

Everything is expressed in the phantom's body frame, in millimetres, with array axes
(z, y, x) = (superior, anterior, patient right) -- the canonical (D, H, W) = (S, A, R) order of
CONTRIBUTING.md, so a phantom needs no reorientation before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A (D, H, W) voxel grid placed in the body frame.

    `origin` is the body-frame position (z, y, x) in mm of voxel (0, 0, 0); `spacing` is the
    voxel size (z, y, x) in mm.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, dim: int, region: slice = slice(None)) -> np.ndarray:
        """Body-frame coordinates (mm) of the voxel centres along `dim` inside `region`."""
        index = np.arange(self.shape[dim], dtype=np.float32)[region]
        return np.float32(self.origin[dim]) + index * np.float32(self.spacing[dim])

    def region(self, low_mm, high_mm) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the box [low_mm, high_mm] (z, y, x).

        None when the box misses the grid.
        """
        slices = []
        for dim in range(3):
            start = int(np.ceil((low_mm[dim] - self.origin[dim]) / self.spacing[dim]))
            stop = int(np.floor((high_mm[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            start, stop = max(start, 0), min(stop, self.shape[dim])
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def coordinates(self, region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays of `region`: (d,1,1), (1,h,1), (1,1,w)."""
        z = self.axis(0, region[0])[:, None, None]
        y = self.axis(1, region[1])[None, :, None]
        x = self.axis(2, region[2])[None, None, :]
        return z, y, x


def region_shape(region) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in region)


def smooth_noise(rng: np.random.Generator, shape, cell_vox) -> np.ndarray:
    """Random field of `shape` with unit variance everywhere, varying on ~`cell_vox` voxels.

    A lattice of i.i.d. normal weights, one node per cell, is spread with a separable Gaussian
    kernel (one small matrix product per axis), so the cost is a few multiply-adds per output
    voxel whatever the correlation length. Each voxel is divided by its exact standard
    deviation, so the field has no lattice pattern in its variance.
    """
    shape = tuple(int(n) for n in shape)
    cells = np.broadcast_to(np.asarray(cell_vox, dtype=np.float64), (len(shape),))
    kernels = []
    for n, cell in zip(shape, cells):
        cell = max(float(cell), 0.5)
        nodes = (np.arange(int(np.ceil(n / cell)) + 4) - 2.0) * cell
        offsets = (np.arange(n)[:, None] - nodes[None, :]) / (0.8 * cell)
        kernels.append(np.exp(-0.5 * offsets**2).astype(np.float32))
    field = rng.standard_normal(tuple(k.shape[1] for k in kernels)).astype(np.float32)
    # Expand the last axes first so that the largest product is one contiguous matrix product.
    for axis in reversed(range(len(shape))):
        kernel = kernels[axis]
        moved = np.moveaxis(field, axis, -1)
        field = np.moveaxis(moved @ kernel.T, -1, axis)
    field = np.ascontiguousarray(field)
    variance = np.ones((1,) * len(shape), dtype=np.float32)
    for axis, kernel in enumerate(kernels):
        per_axis = (kernel**2).sum(axis=1)
        variance = variance * per_axis.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return field / np.sqrt(variance)


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) vectors: about z (axial plane), then y, then x."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    about_z = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    about_x = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (about_x @ about_y @ about_z).astype(np.float32)


@dataclass(frozen=True)
class Blob:
    """A randomly deformed superquadric: the basic organ shape.

    `semi_axes` (z, y, x) mm; `exponent` 2 is an ellipsoid, larger is boxier; `wobble` is the
    relative amplitude of the smooth radial deformation and `wobble_mm` its spatial scale.
    """

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray | None = None
    exponent: float = 2.0
    wobble: float = 0.12
    wobble_mm: float = 30.0

    def evaluate(self, grid: Grid, rng: np.random.Generator):
        """(region, level) with level < 1 inside the shape; (None, None) when off the grid.

        `level` is the superquadric norm of the voxel's local coordinates, pushed in and out by
        a smooth random field, so level ~ 0 at the centre and 1 on the surface.
        """
        semi = np.asarray(self.semi_axes, dtype=float)
        if self.rotation is not None:  # any axis may end up along any direction
            semi = np.full(3, semi.max())
        reach = semi * (1.0 + 4.0 * self.wobble) + 2.0 * max(grid.spacing)
        low = np.asarray(self.center) - reach
        high = np.asarray(self.center) + reach
        region = grid.region(low, high)
        if region is None:
            return None, None
        field = smooth_noise(rng, region_shape(region), [self.wobble_mm / s for s in grid.spacing])
        z, y, x = grid.coordinates(region)
        dz, dy, dx = z - self.center[0], y - self.center[1], x - self.center[2]
        if self.rotation is not None:
            r = self.rotation.T  # world -> local
            dz, dy, dx = (
                r[0, 0] * dz + r[0, 1] * dy + r[0, 2] * dx,
                r[1, 0] * dz + r[1, 1] * dy + r[1, 2] * dx,
                r[2, 0] * dz + r[2, 1] * dy + r[2, 2] * dx,
            )
        e = self.exponent
        level = (
            np.abs(dz / self.semi_axes[0]) ** e
            + np.abs(dy / self.semi_axes[1]) ** e
            + np.abs(dx / self.semi_axes[2]) ** e
        ) ** (1.0 / e)
        level = level * (1.0 + self.wobble * field)
        return region, level.astype(np.float32)


def tube_level(grid: Grid, region, path_zyx: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Distance to a poly-line in units of the local radius (< 1 inside) over `region`.

    `path_zyx` (M, 3) mm should be sampled densely (about one point per voxel).
    """
    from scipy.spatial import cKDTree

    z, y, x = grid.coordinates(region)
    shape = region_shape(region)
    points = np.stack(np.broadcast_arrays(z, y, x), axis=-1).reshape(-1, 3)
    distance, nearest = cKDTree(path_zyx).query(points, k=1)
    return (distance / radii[nearest]).reshape(shape).astype(np.float32)
