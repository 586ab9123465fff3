"""Felzenszwalb-Huttenlocher pseudo labels (docs/method.md#pseudo-labels) and the helpers fine-tuning needs.

    felzenszwalb_3d(volume, "segvol" | "classic", ...)  -> (D, H, W) int32 ids 1..K
    case_pseudo_labels(image, labels, categories, settings) -> (pseudo, attrs)
    write_pseudo_store(store, out, settings, threads)       -> data/pseudo/<dataset>.zarr
    pick_segment / segment_box / box_target                 -> training-side prompts/targets

Names are loaded on first use so that `segvol --help` does not import numba or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "felzenszwalb_3d": "segvol.pseudo.felzenszwalb",
    "case_pseudo_labels": "segvol.pseudo.labels",
    "clean_segments": "segvol.pseudo.clean",
    "paint_ground_truth": "segvol.pseudo.clean",
    "write_pseudo_store": "segvol.pseudo.store",
    "pick_segment": "segvol.pseudo.sampling",
    "segment_box": "segvol.pseudo.sampling",
    "box_target": "segvol.pseudo.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'segvol.pseudo' has no attribute {name!r}")
