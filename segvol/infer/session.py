"""Interactive segmentation of one image: load it once, edit prompts, get masks fast.

```python
from segvol.infer.session import Session
session = Session(model, read_image("ct.nii.gz"))     # or a canonical (D, H, W) volume in [0, 1]
session.add_text("liver", "liver")
session.set_box("liver", (10, 40, 40, 60, 200, 180))  # canonical (d0, h0, w0, d1, h1, w1), inclusive
session.add_point("liver", (30, 120, 100))            # positive; positive=False for a negative click
logits = session.logits("liver")                      # (D, H, W) float32; > 0 is inside
session.remove_point("liver", 0)
```

Coordinates are voxel indices of the canonical volume (``session.volume``). The image
embeddings of the zoom-out view and of every window are computed once and kept, so an edit
costs only decoder passes plus the encoder passes of windows not seen before; text embeddings
are cached by the model. `segvol predict` runs through `Session.segment_region`, one category at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from segvol.infer.prompts import Prompt
from segvol.infer.volume import NormalizedVolume
from segvol.infer.zoom import segment, segment_region


class Session:
    """One image, a set of named categories with editable prompts, and cached image embeddings.

    Args:
        model: a SegVol (``encode_image``/``encode_text``/``decode``).
        image: a `segvol.io.CanonicalImage` (its HU are kept and normalized when read, see
            `segvol.infer.volume`), or a canonical ``(D, H, W)`` volume already in [0, 1].
        mode, overlap, sw_batch_size, box_limits, progress: as in `segvol.infer.segment`.
    """

    def __init__(self, model, image, mode: str = "zoom", overlap: float = 0.5, sw_batch_size: int = 2,
                 box_limits: bool = True, progress: bool = False) -> None:
        self.model = model
        self.options = dict(mode=mode, overlap=overlap, sw_batch_size=sw_batch_size, box_limits=box_limits,
                            progress=progress)
        self.volume = _normalized_volume(image)
        self.embeddings: dict = {}  # view key -> (C, d, h, w) image embedding, see zoom._Embeddings
        self.prompts: dict[str, dict] = {}

    # -- editing --------------------------------------------------------------------------
    def _category(self, name: str) -> dict:
        return self.prompts.setdefault(name, {"text": None, "box": None, "points": [], "labels": []})

    def add_text(self, name: str, text: str | None = None) -> None:
        """Prompt category ``name`` with a text (default: the name itself)."""
        self._category(name)["text"] = text or name

    def remove_text(self, name: str) -> None:
        self._category(name)["text"] = None

    def set_box(self, name: str, box: Sequence[int]) -> None:
        """Inclusive canonical box ``(d0, h0, w0, d1, h1, w1)`` (replaces the previous one)."""
        self._category(name)["box"] = [int(v) for v in box]

    def remove_box(self, name: str) -> None:
        self._category(name)["box"] = None

    def add_point(self, name: str, point: Sequence[float], positive: bool = True) -> int:
        """A click at canonical voxel ``(d, h, w)``; returns its index (for `remove_point`)."""
        category = self._category(name)
        category["points"].append([float(c) for c in point])
        category["labels"].append(1 if positive else 0)
        return len(category["points"]) - 1

    def remove_point(self, name: str, index: int) -> None:
        category = self._category(name)
        if not 0 <= index < len(category["points"]):
            raise ValueError(f"category '{name}' has no point {index} (it has {len(category['points'])})")
        del category["points"][index], category["labels"][index]

    def remove(self, name: str) -> None:
        """Forget a category and all its prompts."""
        self.prompts.pop(name, None)

    def prompt(self, name: str) -> Prompt:
        """The current prompt of a category (ValueError when it has none left)."""
        if name not in self.prompts:
            raise ValueError(f"no category '{name}' in this session (have {sorted(self.prompts)})")
        category = self.prompts[name]
        points = category["points"] or None
        return Prompt(text=category["text"], box=category["box"], points=points,
                      point_labels=category["labels"] if points else None, name=name)

    # -- results --------------------------------------------------------------------------
    def segment(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """``(K, D, H, W)`` float32 logits for canonical prompts, reusing cached embeddings."""
        return segment(self.model, self.volume, list(prompts), embeddings=self.embeddings, **self.options)

    def segment_region(self, prompts: Sequence[Prompt]) -> tuple[np.ndarray, torch.Tensor]:
        """`segvol.infer.zoom.segment_region` with cached embeddings: ``(region box, logits there)``."""
        return segment_region(self.model, self.volume, list(prompts), embeddings=self.embeddings, **self.options)

    def logits(self, name: str) -> torch.Tensor:
        """``(D, H, W)`` float32 logits of one category under its current prompts."""
        return self.segment([self.prompt(name)])[0]

    def mask(self, name: str) -> np.ndarray:
        """``(D, H, W)`` bool mask of one category (probability > 0.5)."""
        return (self.logits(name) > 0).numpy()


def _normalized_volume(image):
    if isinstance(image, (np.ndarray, torch.Tensor)):
        volume = torch.as_tensor(image, dtype=torch.float32)
        if volume.ndim != 3:
            raise ValueError(f"a session needs a (D, H, W) volume, got shape {tuple(volume.shape)}")
        return volume
    # Normalized when read (segvol.infer.volume): memory holds the HU, not a float32 copy as well.
    try:
        volume = NormalizedVolume.compact(image.array)
    except ValueError as error:
        raise ValueError(f"{image.source}: {error}") from None
    if volume.hu is not image.array:
        # The image's own (wider) HU are not needed any more: free them but keep the shape that
        # write_like checks (a zero-strided view costs no memory).
        image.array = np.broadcast_to(np.zeros((), image.array.dtype), image.array.shape)
    return volume
