"""Cleaning of FH segments and the ground-truth overlay (docs/method.md#pseudo-labels, "use in training").

Per segment: drop it if it has fewer than `min_voxels`; otherwise binary opening then closing
(scipy defaults: 3-D cross, one iteration), connected components, drop components below
`min_voxels`. The segment keeps one id even when several components survive, as in the
released cleaning. Later ids overwrite earlier ones where closings overlap.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Opening then closing with a radius-1 element can change a voxel only within 2 voxels of the
# segment, so a crop with this margin gives the same result as the whole volume.
MORPHOLOGY_MARGIN = 2


def _padded_box(box: tuple[slice, ...], shape: tuple[int, ...], margin: int) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def clean_mask(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """Opening, closing, then only the connected components with at least `min_voxels` voxels."""
    mask = ndimage.binary_closing(ndimage.binary_opening(mask))
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def clean_segments(labels: np.ndarray, min_voxels: float) -> np.ndarray:
    """(D, H, W) ids 1..K -> cleaned (D, H, W) int32 ids 1..K' (0 = no segment), order kept.

    Args:
        labels: non-negative integer ids, 0 = no segment.
        min_voxels: segments and components with fewer voxels are dropped.
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    cleaned = np.zeros(labels.shape, dtype=np.int32)
    for segment, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[segment] < min_voxels:
            continue
        crop = _padded_box(box, labels.shape, MORPHOLOGY_MARGIN)
        mask = clean_mask(labels[crop] == segment, min_voxels)
        cleaned[crop][mask] = segment
    return consecutive(cleaned)


def consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids present to 1..K, keeping their order; 0 stays 0."""
    present = np.unique(labels)
    present = present[present != 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]


def paint_ground_truth(segments: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Paint GT channels over the segments with fresh ids above the segment ids.

    Args:
        segments: (D, H, W) int32 ids 0..K.
        ground_truth: (C, D, H, W) float, channel c painted where it equals exactly 1 (after an
            'area' resize, only voxels fully inside the structure).

    Returns:
        (D, H, W) int32 with channel c as id K + 1 + c (later channels win on overlap), and
        the list of those ids.
    """
    painted = np.array(segments, dtype=np.int32, copy=True)
    base = int(segments.max(initial=0)) + 1
    ids = []
    for channel, mask in enumerate(ground_truth):
        painted[mask == 1] = base + channel
        ids.append(base + channel)
    return painted, ids
