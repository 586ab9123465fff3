"""Simulated interactive clicks for any number of dimensions: the first click in the middle of the
object, then corrections at the centre of the largest error region (positive in a miss, negative
in a false positive), each prediction seeing all clicks so far and its previous logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

CLICKS = 5


# predict(points (N, ndim) int, labels (N,) in {0, 1}, previous logits or None) -> logits (truth.shape)
ClickPredictor = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The corrective click: the voxel deepest inside the largest error region.

    Returns (coordinate, label): label 1 where the prediction missed the truth, 0 where it
    predicted background as foreground; None when the prediction is perfect.
    """
    missed = truth & ~prediction
    extra = prediction & ~truth
    best = None
    for error, label in ((missed, 1), (extra, 0)):
        regions, count = ndimage.label(error)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(error, regions, index=np.arange(1, count + 1))
        largest = regions == (int(np.argmax(sizes)) + 1)
        size = int(sizes.max())
        if best is None or size > best[0]:
            # Distance to the region's border, so that the click lies well inside the error.
            depth = ndimage.distance_transform_edt(np.pad(largest, 1))[tuple(slice(1, -1) for _ in largest.shape)]
            coordinate = np.array(np.unravel_index(int(np.argmax(depth)), largest.shape))
            best = (size, coordinate, label)
    return None if best is None else (best[1], best[2])


def click_correction(
    predict: ClickPredictor, truth: np.ndarray, first_click: np.ndarray, clicks: int = CLICKS
) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """Simulate `clicks` interactive clicks: one positive, then corrections. Returns (mask, clicks)."""
    truth = np.asarray(truth, dtype=bool)
    points = [np.asarray(first_click, dtype=np.int64)]
    labels = [1]
    logits = predict(np.stack(points), np.array(labels), None)
    while len(points) < clicks:
        click = next_click(logits > 0, truth)
        if click is None:
            break
        points.append(click[0])
        labels.append(click[1])
        logits = predict(np.stack(points), np.array(labels), logits)
    return logits > 0, list(zip(points, labels))


def central_point(mask: np.ndarray) -> np.ndarray:
    """The first click: the mask voxel farthest from its border (a user clicks the middle)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[tuple(slice(1, -1) for _ in mask.shape)]
    return np.array(np.unravel_index(int(np.argmax(depth)), mask.shape))
