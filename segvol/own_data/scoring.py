"""Dice and NSD of a model on one split of the own-data store, per (case, category, prompt kind).

Used by the validation every K steps (mean Dice on `validation`) and by the before/after evaluation
(on `test`). Prompts come from the ground truth as in the paper's evaluation (docs/method.md#evaluation):
the tight box of the category, 1 + 4 positive points drawn with a seed per (case, category), the
category name as text. Inference is zoom-out-zoom-in (`segvol.infer.segment`); the metrics are the
evaluation's (`segvol.evaluate.metrics`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from segvol.evaluate.metrics import dice, normalized_surface_dice

PROMPT_KINDS = ("text", "point", "box", "point+text", "box+text")
EXTRA_POINTS = 4


def truth_prompt(kind: str, category: str, truth: np.ndarray, seed: int, case: str):
    """The `kind` prompt of one category's (D, H, W) mask, or None when the mask is empty."""
    from segvol.infer import Prompt
    from segvol.pseudo.sampling import segment_box

    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {', '.join(PROMPT_KINDS)}")
    box = np.asarray(segment_box(truth), dtype=np.int64)
    if box[0] < 0:
        return None
    parts = set(kind.split("+"))
    points = None
    if "point" in parts:
        rng = np.random.default_rng((int(seed) * 1_000_003 + zlib.crc32(f"{case}\x00{category}".encode())) % 2**32)
        inside = np.argwhere(truth)
        points = inside[rng.choice(len(inside), size=1 + EXTRA_POINTS, replace=len(inside) < 1 + EXTRA_POINTS)]
    return Prompt(
        text=category if "text" in parts else None,
        box=box.tolist() if "box" in parts else None,
        points=None if points is None else points.tolist(),
        point_labels=None if points is None else [1] * len(points),
    )


def score_split(
    model,
    store_path: str | Path,
    split: str,
    kinds,
    seed: int,
    nsd_tolerance_mm: float | None = 1.0,
    limit: int | None = None,
) -> list[dict]:
    """One row {"case", "category", "prompt", "dice", "nsd", "voxels_truth", "voxels_pred"} per (case, category
    present, prompt kind) of the store's `split` (NSD skipped when `nsd_tolerance_mm` is None)."""
    import torch

    from segvol.infer import segment
    from segvol.io.store import open_store

    store = open_store(store_path)
    cases = list((store.split or {}).get(split) or [])
    rows = []
    model.eval()
    for case in cases[:limit]:
        group = store.case(case)
        image = np.asarray(group["image"][...], dtype=np.float32)
        labels = np.asarray(group["labels"][...]) > 0
        spacing = [float(s) for s in store.case_attrs(case)["spacing"]]
        for kind in kinds:
            prompts, names = [], []
            for channel, category in enumerate(store.categories):
                prompt = truth_prompt(kind, category, labels[channel], seed, case)
                if prompt is not None:
                    prompts.append(prompt)
                    names.append((channel, category))
            if not prompts:
                continue
            with torch.inference_mode():
                logits = segment(model, image, prompts, mode="zoom")
            for (channel, category), channel_logits in zip(names, logits):
                mask, truth = channel_logits.numpy() > 0, labels[channel]
                rows.append(
                    {
                        "case": case,
                        "category": category,
                        "prompt": kind,
                        "dice": dice(mask, truth),
                        "nsd": (
                            normalized_surface_dice(mask, truth, spacing, nsd_tolerance_mm)
                            if nsd_tolerance_mm is not None
                            else float("nan")
                        ),
                        "voxels_truth": int(truth.sum()),
                        "voxels_pred": int(mask.sum()),
                    }
                )
    store.close()
    return rows


def mean_dice(rows: list[dict]) -> float:
    """Mean Dice over the scored (case, category) pairs (NaN when there are none)."""
    values = [row["dice"] for row in rows if np.isfinite(row["dice"])]
    return float(np.mean(values)) if values else float("nan")
