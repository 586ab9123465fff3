"""Prompts derived from ground truth, in the voxel indices of the volume they are given with.

Like the released demo (docs/method.md#prompt-generation): the box is the tight inclusive bounding box of the
category's mask; points are 1 + `n_extra` positive voxels drawn with a seeded generator
(the Hugging Face helper's 1 + 4, no negatives). An empty mask gives no prompt: the caller
skips that (case, category) and records why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segvol.pseudo.sampling import segment_box

PROMPT_KINDS = ("text", "point", "box", "point+text", "box+text")


@dataclass(frozen=True)
class GroundTruthPrompt:
    """One category's prompt. box: (d0, h0, w0, d1, h1, w1) inclusive; points: (N, 3) (d, h, w)."""

    kind: str
    text: str | None = None
    box: tuple[int, ...] | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    # The category's (D, H, W) ground truth, for baselines that simulate corrective clicks or
    # per-slice prompts; SegVol never reads it.
    truth: np.ndarray | None = field(default=None, repr=False, compare=False)


def positive_points(mask: np.ndarray, rng: np.random.Generator, n_extra: int = 4) -> np.ndarray | None:
    """(1 + n_extra, 3) voxel indices inside the mask (drawn with replacement when it is tiny)."""
    coords = np.argwhere(np.asarray(mask) > 0)
    if coords.size == 0:
        return None
    count = 1 + n_extra
    chosen = rng.choice(len(coords), size=count, replace=len(coords) < count)
    return coords[chosen].astype(np.int64)


def prompt_from_truth(
    kind: str, category: str, mask: np.ndarray, rng: np.random.Generator, n_extra_points: int = 4
) -> GroundTruthPrompt | None:
    """The `kind` prompt ("text", "point", "box", "point+text", "box+text") for one category's mask."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {', '.join(PROMPT_KINDS)}")
    box = segment_box(np.asarray(mask) > 0)
    if box[0] < 0:
        return None
    box = tuple(box.tolist())
    parts = set(kind.split("+"))
    points = positive_points(mask, rng, n_extra_points) if "point" in parts else None
    return GroundTruthPrompt(
        kind=kind,
        text=category if "text" in parts else None,
        box=box if "box" in parts else None,
        points=points,
        point_labels=None if points is None else np.ones(len(points), dtype=np.int64),
        truth=np.asarray(mask) > 0,
    )


def category_seed(seed: int, case: str, category: str) -> int:
    """A per-(case, category) seed that does not depend on evaluation order or process."""
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(f"{case}\x00{category}".encode())) % (2**32)
