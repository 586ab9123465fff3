"""The voxel graph of a 3D volume: which neighbour pairs are edges, and their canonical order.

An edge type is a forward offset `(dd, dh, dw)`; its edges join every voxel `p` of the *source
region* to `p + offset`. Edges are numbered type by type (in the order of the offset tuple), and
within a type in C order over the source region. That numbering is the tie-break of every sort
(stable by weight, then by edge number), so segmentations are exactly reproducible.

Axes. The released SegVol code works on arrays in (X, Y, Z) order resized to (256, 256, 32)
and joins neighbours along axis0, axis1, the two in-plane diagonals of axes (0, 1), and axis2.
Our canonical arrays are (D, H, W) = (Z, Y, X) (CONTRIBUTING.md), so its axis0/axis1 are our
W/H and the in-plane diagonals lie in our (H, W) plane, i.e. over our axes (1, 2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# Released variant: X, Y, the two (X, Y) diagonals, Z -- written in our (D, H, W) axes.
SEGVOL_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1),  # along X (W)
    (0, 1, 0),  # along Y (H)
    (0, 1, 1),  # (x+1, y+1)
    (0, 1, -1),  # (x-1, y+1): the anti-diagonal of the same plane
    (1, 0, 0),  # along Z (D, slices)
)

FACE_OFFSETS: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def _forward(offset: tuple[int, int, int]) -> bool:
    """One of each +/- pair: the first non-zero component is positive."""
    first = next(component for component in offset if component != 0)
    return first > 0


# Faces first, then edges/corners of the cube in lexicographic order.
FULL_OFFSETS: tuple[tuple[int, int, int], ...] = FACE_OFFSETS + tuple(
    offset
    for offset in itertools.product((-1, 0, 1), repeat=3)
    if any(offset) and _forward(offset) and offset not in FACE_OFFSETS
)


def offsets_for(criterion: str, connectivity: int = 6) -> tuple[tuple[int, int, int], ...]:
    """Edge types of a criterion: `segvol` has its own 5 types; `classic` 6- or 26-connectivity."""
    if criterion == "segvol":
        return SEGVOL_OFFSETS
    if criterion == "classic":
        if connectivity == 6:
            return FACE_OFFSETS
        if connectivity == 26:
            return FULL_OFFSETS
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity!r}")
    raise ValueError(f"unknown FH criterion {criterion!r} (expected 'segvol' or 'classic')")


@dataclass(frozen=True)
class EdgeGraph:
    """All edges of a volume with their weights, in the canonical order.

    Attributes:
        dims: (3,) int64, the volume shape (D, H, W).
        offsets: (T, 3) int64 forward offsets, one per edge type.
        starts: (T, 3) int64, first source voxel of each type's source region.
        region_shapes: (T, 3) int64, shape of each type's source region.
        linear_offsets: (T,) int64, `offset` as a step in the C-order flat index.
        bases: (T + 1,) int64, edge number of the first edge of each type (and the total).
        weights: (E,) float32, |intensity difference| per edge, in edge-number order.
    """

    dims: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    region_shapes: np.ndarray
    linear_offsets: np.ndarray
    bases: np.ndarray
    weights: np.ndarray

    @property
    def n_edges(self) -> int:
        return int(self.bases[-1])

    def endpoints(self) -> tuple[np.ndarray, np.ndarray]:
        """(E,), (E,) int64 flat voxel indices of both ends of every edge (memory-hungry; for tests)."""
        flat = np.arange(int(np.prod(self.dims))).reshape(tuple(self.dims))
        sources = []
        for start, shape in zip(self.starts, self.region_shapes):
            region = tuple(slice(s, s + n) for s, n in zip(start, shape))
            sources.append(flat[region].ravel())
        source = np.concatenate(sources) if sources else np.empty(0, np.int64)
        step = np.repeat(self.linear_offsets, np.diff(self.bases))
        return source, source + step


def _regions(dims: tuple[int, int, int], offset: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the source voxels and of their neighbours `source + offset`."""
    source, target = [], []
    for size, step in zip(dims, offset):
        if step >= 0:
            source.append(slice(0, max(size - step, 0)))
            target.append(slice(step, size))
        else:
            source.append(slice(-step, size))
            target.append(slice(0, max(size + step, 0)))
    return tuple(source), tuple(target)


def build_graph(volume: np.ndarray, offsets: tuple[tuple[int, int, int], ...]) -> EdgeGraph:
    """Edges of `volume` (D, H, W) for the given edge types, weighted by |intensity difference|.

    The volume is used in float32 (as the released code's float32 arrays), so weights match a
    plain element-wise `abs(v[p] - v[q])` on the same array bit for bit.
    """
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    dims = volume.shape
    strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
    starts, shapes, counts = [], [], []
    for offset in offsets:
        source, _ = _regions(dims, offset)
        starts.append([s.start for s in source])
        shape = [max(s.stop - s.start, 0) for s in source]
        shapes.append(shape)
        counts.append(int(np.prod(shape)))
    bases = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    weights = np.empty(int(bases[-1]), dtype=np.float32)
    for index, offset in enumerate(offsets):
        source, target = _regions(dims, offset)
        block = weights[bases[index] : bases[index + 1]].reshape(shapes[index])
        np.subtract(volume[source], volume[target], out=block)
        np.abs(block, out=block)
    offsets_array = np.array(offsets, dtype=np.int64).reshape(-1, 3)
    return EdgeGraph(
        dims=np.array(dims, dtype=np.int64),
        offsets=offsets_array,
        starts=np.array(starts, dtype=np.int64).reshape(-1, 3),
        region_shapes=np.array(shapes, dtype=np.int64).reshape(-1, 3),
        linear_offsets=offsets_array @ strides,
        bases=bases,
        weights=weights,
    )
