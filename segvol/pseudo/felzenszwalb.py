"""Felzenszwalb-Huttenlocher graph segmentation of 3D volumes, two merge criteria.

`segvol` is the released SegVol variant (docs/method.md#pseudo-labels): smooth, weight edges by |delta intensity|,
join every edge below a percentile of the non-zero weights, then walk all edges in ascending
order joining any pair where one side is smaller than `min_size`. The first pass ignores edge
order (it is connected components of the thresholded graph) and the second only needs edges that
touch a small set, so both run in compiled linear passes plus a sort of a small edge subset,
with exactly the partition of the sequential original.

`classic` is FH 2004: ascending edges, join when w <= min(Int(C1) + k/|C1|, Int(C2) + k/|C2|),
followed by the same min-size pass.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segvol.pseudo import unionfind
from segvol.pseudo.graph import EdgeGraph, build_graph, offsets_for


def check_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """The volume as a 3-D float32 array; ValueError naming `name` when it cannot be segmented."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D (D, H, W) volume, got shape {volume.shape}")
    if volume.size == 0:
        raise ValueError(f"{name}: the volume is empty (shape {volume.shape})")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real intensities, got dtype {volume.dtype}")
    volume = volume.astype(np.float32, copy=False)
    if not np.isfinite(volume).all():
        raise ValueError(f"{name}: the volume contains NaN or infinite values")
    if volume.min() == volume.max():
        raise ValueError(f"{name}: the volume is constant ({volume.flat[0]}); there is nothing to segment")
    return volume


def smooth(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian pre-smoothing (scipy defaults: reflect border, truncate 4 sigma), float32."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if sigma <= 0:
        return volume
    return ndimage.gaussian_filter(volume, sigma=sigma).astype(np.float32, copy=False)


def segvol_threshold(weights: np.ndarray, percentile: float = 25.0) -> float:
    """The first-pass threshold: `percentile` of the non-zero edge weights (numpy 'linear')."""
    nonzero = weights[weights > 0]
    if nonzero.size == 0:
        raise ValueError("every edge weight is zero (constant volume after smoothing)")
    return float(np.percentile(nonzero, percentile))


def _graph_args(graph: EdgeGraph) -> tuple:
    return graph.dims, graph.starts, graph.region_shapes, graph.linear_offsets, graph.bases


def sorted_edges(graph: EdgeGraph, parent: np.ndarray, size: np.ndarray, min_size: int, only_small: bool):
    """(weights float32, sources, targets) in stable ascending weight order; see `unionfind.edge_list`."""
    keys = graph.weights.view(np.uint32)
    chosen = unionfind.edge_list(keys, parent, size, min_size, only_small, *_graph_args(graph))
    keys, sources, targets = unionfind.radix_sort_edges(*chosen)
    del chosen
    return keys.view(np.float32), sources, targets


def _merge_small_sets(parent: np.ndarray, size: np.ndarray, graph: EdgeGraph, min_size: int) -> None:
    """The min-size pass over all edges in stable ascending order, restricted to edges that can act."""
    if min_size <= 1:
        return
    unionfind.flatten(parent)
    _, sources, targets = sorted_edges(graph, parent, size, min_size, only_small=True)
    unionfind.merge_small(parent, size, sources, targets, min_size)


def felzenszwalb_3d(
    volume: np.ndarray,
    criterion: str = "segvol",
    *,
    sigma: float = 0.8,
    min_size: int = 1000,
    k: float = 1.0,
    connectivity: int = 6,
    percentile: float = 25.0,
) -> np.ndarray:
    """Segment a volume into connected regions of similar intensity.

    Args:
        volume: (D, H, W) real array, finite, not constant.
        criterion: "segvol" (released variant: percentile threshold, 5 edge types) or
            "classic" (FH 2004 with scale `k`, `connectivity` 6 or 26).
        sigma: Gaussian pre-smoothing in voxels (0: none).
        min_size: regions smaller than this are merged into a neighbour, in ascending edge order.
        k: scale of the classic criterion, in intensity units (larger: larger regions).
        connectivity: 6 or 26, classic only.
        percentile: segvol only; edges below this percentile of the non-zero weights are joined.

    Returns:
        (D, H, W) int32 labels 1..K, numbered by first appearance in C order.
    """
    volume = check_volume(volume)
    graph = build_graph(smooth(volume, sigma), offsets_for(criterion, connectivity))
    n_voxels = volume.size
    # int32 sets halve the memory traffic of the random-access finds
    index_type = np.int32 if n_voxels < np.iinfo(np.int32).max else np.int64
    parent = np.arange(n_voxels, dtype=index_type)
    size = np.ones(n_voxels, dtype=index_type)
    if criterion == "segvol":
        threshold = segvol_threshold(graph.weights, percentile)
        unionfind.merge_below(parent, size, graph.weights, threshold, *_graph_args(graph))
    else:
        if not k > 0:
            raise ValueError(f"the classic criterion needs k > 0, got {k!r}")
        weights, sources, targets = sorted_edges(graph, parent, size, 0, only_small=False)
        internal = np.zeros(n_voxels, dtype=np.float64)
        unionfind.merge_classic(parent, size, internal, weights, sources, targets, float(k))
        del weights, sources, targets, internal
    _merge_small_sets(parent, size, graph, min_size)
    return unionfind.consecutive_labels(parent).reshape(volume.shape)
