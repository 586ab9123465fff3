"""Voxel-coordinate bookkeeping: one affine map carries points and boxes through every step.

Inference moves prompts through several grids: the input file's voxel order, the canonical
(D, H, W) array, the foreground crop, the zoom-out resize to the model size, and each sliding
window. Every one of these steps is an affine map of *continuous voxel coordinates*, where the
centre of voxel ``i`` sits at ``i`` and the voxel covers ``[i - 0.5, i + 0.5)``. Under that
convention a resize from ``n`` to ``m`` voxels is ``y = (x + 0.5) * m / n - 0.5``, which is exactly
the sampling rule of torch's ``nearest-exact`` interpolation, so mapped prompts land on the voxels
the resized image shows at that place.

`VoxelMap` composes those steps into one 4x4 matrix with a forward and an inverse; points and
boxes use it everywhere (zoom-out prompts, per-window prompts, CLI input indices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Tolerance for float round-off when a mapped box edge falls exactly on a voxel boundary.
_EDGE_EPS = 1e-6


@dataclass(frozen=True)
class VoxelMap:
    """An affine map ``y = A @ [x, 1]`` between continuous voxel coordinates of two 3-D grids.

    ``matrix`` is 4x4 (last row ``0 0 0 1``). Build steps with the constructors and chain them
    with `then` (``a.then(b)`` applies ``a`` first).
    """

    matrix: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"a VoxelMap needs a 4x4 matrix, got shape {matrix.shape}")
        object.__setattr__(self, "matrix", matrix)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def identity(cls) -> VoxelMap:
        return cls(np.eye(4))

    @classmethod
    def crop(cls, start: Sequence[float]) -> VoxelMap:
        """Into a sub-grid whose voxel 0 is voxel ``start`` of the parent (negative = padding)."""
        matrix = np.eye(4)
        matrix[:3, 3] = -np.asarray(start, dtype=np.float64)
        return cls(matrix)

    @classmethod
    def resize(cls, in_shape: Sequence[int], out_shape: Sequence[int]) -> VoxelMap:
        """Into a grid resampled from ``in_shape`` to ``out_shape`` (same field of view)."""
        scale = np.asarray(out_shape, dtype=np.float64) / np.asarray(in_shape, dtype=np.float64)
        matrix = np.diag([*scale, 1.0])
        matrix[:3, 3] = 0.5 * scale - 0.5
        return cls(matrix)

    @classmethod
    def from_affines(cls, source_affine: np.ndarray, target_affine: np.ndarray) -> VoxelMap:
        """From voxels of one grid to voxels of another grid through world space.

        ``source_affine`` and ``target_affine`` map voxel indices to world mm (NIfTI style). For a
        reorientation without resampling (axis permutation and flips) the result maps voxel
        centres exactly onto voxel centres.
        """
        source = np.asarray(source_affine, dtype=np.float64)
        target = np.asarray(target_affine, dtype=np.float64)
        return cls(np.linalg.inv(target) @ source)

    # -- algebra --------------------------------------------------------------------------
    def then(self, other: VoxelMap) -> VoxelMap:
        """This map followed by ``other``."""
        return VoxelMap(other.matrix @ self.matrix)

    def inverse(self) -> VoxelMap:
        return VoxelMap(np.linalg.inv(self.matrix))

    # -- application ----------------------------------------------------------------------
    def apply(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Map continuous coordinates ``(N, 3)`` (or one ``(3,)`` point) -> same shape, float64."""
        points = np.asarray(points, dtype=np.float64)
        single = points.ndim == 1
        points = np.atleast_2d(points)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have 3 coordinates, got shape {points.shape}")
        mapped = points @ self.matrix[:3, :3].T + self.matrix[:3, 3]
        return mapped[0] if single else mapped

    def map_points(self, points: np.ndarray, shape: Sequence[int] | None = None) -> np.ndarray:
        """Map voxel indices ``(N, 3)`` to the nearest voxel indices of the target grid (int64).

        With ``shape`` the result is clipped into the grid (a point in the last half voxel of a
        downsampled axis may otherwise round one past the end).
        """
        mapped = np.floor(self.apply(points) + 0.5).astype(np.int64)
        if shape is not None:
            mapped = np.clip(mapped, 0, np.asarray(shape, dtype=np.int64) - 1)
        return mapped

    def map_box(self, box: Sequence[int], shape: Sequence[int] | None = None) -> np.ndarray:
        """Map an inclusive voxel box ``(d0, h0, w0, d1, h1, w1)`` to the target grid.

        The box is treated as the region its voxels cover; the result is the inclusive box of
        every target voxel that overlaps the mapped region (so a box never shrinks below the
        object it was drawn around). With ``shape`` it is clipped into the grid.
        Returns int64 ``(6,)``; a box entirely outside a given ``shape`` comes back inverted
        (some lower > upper), see `box_is_empty`.
        """
        box = np.asarray(box, dtype=np.float64).reshape(2, 3)
        lower, upper = box[0] - 0.5, box[1] + 0.5
        corners = np.array([[(upper if (c >> axis) & 1 else lower)[axis] for axis in range(3)] for c in range(8)])
        mapped = self.apply(corners)
        low, high = mapped.min(axis=0), mapped.max(axis=0)
        first = np.floor(low - 0.5 + _EDGE_EPS).astype(np.int64) + 1
        last = np.ceil(high + 0.5 - _EDGE_EPS).astype(np.int64) - 1
        if shape is not None:
            first = np.maximum(first, 0)
            last = np.minimum(last, np.asarray(shape, dtype=np.int64) - 1)
        return np.concatenate([first, last])


def box_is_empty(box: np.ndarray) -> bool:
    """Whether an inclusive box has no voxel (some lower bound above its upper bound)."""
    box = np.asarray(box)
    return bool(np.any(box[:3] > box[3:]))


def box_slices(box: np.ndarray) -> tuple[slice, slice, slice]:
    """Array slices selecting an inclusive box."""
    return tuple(slice(int(box[axis]), int(box[axis + 3]) + 1) for axis in range(3))


def nearest_exact_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index sampled by each of ``n_out`` target voxels in a nearest-exact resize.

    Same rule as ``torch.nn.functional.interpolate(mode="nearest-exact")``; computing the
    indices ourselves lets large volumes be resized slab by slab.
    """
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)
    return np.minimum(np.floor(centres).astype(np.int64), n_in - 1)
