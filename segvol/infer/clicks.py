"""Where a simulated user clicks next: the click placement of the interactive protocol, shared by the
evaluation (`segvol.evaluate.interactive`) and corrective-click training (`segvol.finetune.corrective`),
so that a model is trained on exactly the clicks it is scored with.

The rule is the one of the CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical Image
Segmentation" (the protocol nnInteractive, SAM-Med3D and VISTA3D report): the error of the current
prediction (``prediction != truth``) is split into 26-connected components; the largest one gets a
click at the maximum of its Euclidean distance transform (the volume's outside counts as background),
ties broken by ``RandomState(42)`` as the official script does. The click is foreground (1) where the
truth is foreground, else background (0).
"""

from __future__ import annotations

import numpy as np

CLICK_SEED = 42


def corrective_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The next click on (D, H, W) masks: (voxel (3,) int64, 1 foreground | 0 background), or None when
    nothing is wrong."""
    from scipy import ndimage

    error = np.asarray(prediction, dtype=bool) != np.asarray(truth, dtype=bool)
    if not error.any():
        return None
    components, _ = ndimage.label(error, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    # One voxel of background around the volume, so that a component touching a face is measured
    # to that face (the official script pads its crop for the same reason).
    depth = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth == depth.max())
    center = candidates[np.random.RandomState(CLICK_SEED).choice(len(candidates))]
    return center.astype(np.int64), int(bool(np.asarray(truth)[tuple(center)]))
