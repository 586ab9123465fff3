"""Canonical orientation: a pure axis permutation/flip of a volume, never a resampling.

A source volume is an array indexed (i, j, k) with a 4x4 affine that maps that index to RAS+
world millimetres (NIfTI convention; SimpleITK's LPS images are converted before they get here).
The canonical array is the closest RAS+ orientation of the source (nibabel's `io_orientation`)
with its axes reversed, so that its axes are (D, H, W) = (S, A, R): slices first, as the model
expects (docs/method.md#axes-and-orientation).

The mapping between the two is stored as a small JSON-able dict, the "reorientation":

    {"transpose": [t0, t1, t2], "flip": [f0, f1, f2]}

    original = flip(canonical.transpose(transpose), axes i where flip[i])

It is all that is needed to put a canonical prediction back onto the source grid exactly, and it
is what the Zarr store records in each case's `to_original` attribute.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import io_orientation

Reorientation = dict  # {"transpose": [int, int, int], "flip": [bool, bool, bool]}


def reorientation_for(affine: np.ndarray) -> Reorientation:
    """The reorientation taking the canonical (D,H,W) array to the source array of `affine`.

    affine: (4, 4) source voxel index (i, j, k) -> RAS+ mm. Oblique affines get the closest
    axis-aligned orientation; the canonical affine stays exact (oblique) since nothing is resampled.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got {affine!r}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"affine is singular (zero voxel size or collinear axes):\n{affine}")
    ornt = io_orientation(affine)  # per source axis: (RAS axis, +1/-1)
    if np.any(np.isnan(ornt)):
        raise ValueError(f"affine has no usable orientation:\n{affine}")
    # Canonical axis 0 is S (RAS axis 2), axis 2 is R (RAS axis 0).
    transpose = [int(2 - ras_axis) for ras_axis in ornt[:, 0]]
    flip = [bool(sign < 0) for sign in ornt[:, 1]]
    return {"transpose": transpose, "flip": flip}


def _check(reorientation: Reorientation) -> tuple[list[int], list[bool]]:
    transpose = [int(axis) for axis in reorientation["transpose"]]
    flip = [bool(value) for value in reorientation["flip"]]
    if sorted(transpose) != [0, 1, 2] or len(flip) != 3:
        raise ValueError(f"not a reorientation: {reorientation!r}")
    return transpose, flip


def to_original(array: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """Canonical (..., D, H, W) -> source axis order (..., I, J, K); leading axes (channels) kept.

    Returns a view when possible (no copy); callers that need contiguous memory copy it.
    """
    transpose, flip = _check(reorientation)
    lead = array.ndim - 3
    if lead < 0:
        raise ValueError(f"expected an array with at least 3 axes, got shape {array.shape}")
    out = array.transpose(*range(lead), *(lead + axis for axis in transpose))
    flipped = tuple(lead + axis for axis in range(3) if flip[axis])
    return np.flip(out, axis=flipped) if flipped else out


def to_canonical(array: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """Source (..., I, J, K) -> canonical (..., D, H, W): the exact inverse of `to_original`."""
    transpose, flip = _check(reorientation)
    lead = array.ndim - 3
    if lead < 0:
        raise ValueError(f"expected an array with at least 3 axes, got shape {array.shape}")
    flipped = tuple(lead + axis for axis in range(3) if flip[axis])
    out = np.flip(array, axis=flipped) if flipped else array
    inverse = np.argsort(transpose)
    return out.transpose(*range(lead), *(lead + int(axis) for axis in inverse))


def canonical_affine(
    original_affine: np.ndarray, original_shape: tuple[int, ...], reorientation: Reorientation
) -> np.ndarray:
    """Affine of the canonical array: (d, h, w) -> RAS+ mm, for the source's `original_affine`.

    Source index v relates to canonical index u by v[i] = u[t_i] (or n_i - 1 - u[t_i] when axis
    i is flipped), i.e. v = M u + b, so the canonical affine is original_affine @ [[M, b], [0, 1]].
    """
    transpose, flip = _check(reorientation)
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for axis in range(3):
        if flip[axis]:
            index_map[axis, transpose[axis]] = -1.0
            index_map[axis, 3] = original_shape[axis] - 1
        else:
            index_map[axis, transpose[axis]] = 1.0
    return np.asarray(original_affine, dtype=np.float64) @ index_map


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of `affine` (column norms)."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(value) for value in np.linalg.norm(columns, axis=0))
