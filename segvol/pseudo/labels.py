"""Pseudo labels of one case: resize, FH, clean, overlay ground truth, resize back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segvol.pseudo.clean import clean_segments, paint_ground_truth
from segvol.pseudo.felzenszwalb import check_volume, felzenszwalb_3d
from segvol.pseudo.resample import resize_area, resize_nearest


def case_pseudo_labels(
    image: np.ndarray,
    ground_truth: np.ndarray | None,
    categories: Sequence[str],
    settings: dict,
    name: str = "image",
) -> tuple[np.ndarray, dict]:
    """Pseudo labels of one case on its own grid.

    Args:
        image: (D, H, W) intensities (the store's [0, 1] image).
        ground_truth: (C, D, H, W) binary channels in `categories` order, or None (unlabelled).
        categories: channel names, len C.
        settings: the `pseudo` stage settings (`segvol.settings.stage_settings("pseudo")`).
        name: how errors refer to this case.

    Returns:
        pseudo: (D, H, W) int32; 0 none, 1..K FH segments, K+1+c ground-truth channel c.
        attrs: `n_segments` (K), `segment_sizes` (voxels of ids 1..max id on the image grid),
            `gt_ids` (category -> id, categories present in the output only).
    """
    image = check_volume(image, name)
    if ground_truth is not None:
        ground_truth = np.asarray(ground_truth)
        if ground_truth.ndim != 4 or ground_truth.shape[1:] != image.shape:
            raise ValueError(
                f"{name}: labels of shape {ground_truth.shape} do not match the image grid {image.shape}"
                " (expected (C, D, H, W))"
            )
        if ground_truth.shape[0] != len(categories):
            raise ValueError(f"{name}: {ground_truth.shape[0]} label channels but {len(categories)} categories")
    grid = tuple(int(n) for n in settings["grid"])
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"pseudo.grid must be three positive sizes (D, H, W), got {settings['grid']!r}")

    small = resize_area(image, grid)
    segments = felzenszwalb_3d(
        check_volume(small, f"{name} (resized to {grid})"),
        settings["criterion"],
        sigma=settings["sigma"],
        min_size=settings["min_size"],
        k=settings["k"],
        connectivity=settings["connectivity"],
        percentile=settings["percentile"],
    )
    segments = clean_segments(segments, settings["min_fraction"] * segments.size)
    n_segments = int(segments.max(initial=0))
    ids: list[int] = []
    if ground_truth is not None and len(categories):
        segments, ids = paint_ground_truth(segments, resize_area(ground_truth, grid))
    pseudo = resize_nearest(segments, image.shape)
    sizes = np.bincount(pseudo.ravel(), minlength=int(pseudo.max(initial=0)) + 1)
    attrs = {
        "n_segments": n_segments,
        "segment_sizes": [int(count) for count in sizes[1:]],
        "gt_ids": {
            category: int(gt_id) for category, gt_id in zip(categories, ids) if gt_id < sizes.size and sizes[gt_id] > 0
        },
    }
    return pseudo.astype(np.int32, copy=False), attrs
