"""Interactive segmentation of one image: load it once, edit prompts, get masks fast.

```python
from segvol.infer.session import Session
session = Session(model, read_image("ct.nii.gz"))     # or a canonical (D, H, W) volume in [0, 1]
session.add_text("liver", "liver")
session.set_box("liver", (10, 40, 40, 60, 200, 180))  # canonical (d0, h0, w0, d1, h1, w1), inclusive
session.add_point("liver", (30, 120, 100))            # positive; positive=False for a negative click
logits = session.logits("liver")                      # (D, H, W) float32; > 0 is inside
session.remove_point("liver", 0)
session.set_mask("kidney", labels == 2)               # start an object from an existing mask
session.add_point("kidney", (40, 90, 60), positive=False)
```

Coordinates are voxel indices of the canonical volume (``session.volume``). What is kept between
edits (docs/architecture.md#interactive-segmentation):

- the image embeddings of the zoom-out view and of every window, so an edit costs no encoder
  pass unless it needs a window not seen before (text embeddings are cached by the model);
- every object's decoder outputs per view (`segvol.infer.zoom.DecodeMemo`): a click decodes the
  zoom-out view once and only the windows whose prompts it changes (the windows it lies in, and
  those whose coarse box moved); the other windows' logits are reused. The result equals a one-shot
  `segvol.infer.segment` with the same prompts (to float rounding of batched decoding);
- every object's latest result, returned again while its prompts stay the same.

An object started from a mask (`set_mask`) uses it in one of two ways:

- the model has a trained mask-prompt branch (`segvol.model.mask_prompt`): the mask is the mask
  prompt of every view (each window's part of it, and the zoom-out view's samples), together with the
  object's clicks; after that, each new round is prompted with the previous round's logits, as in
  corrective-click training. Before any other prompt the object's result is the mask itself;
- otherwise (no branch, or an untrained one, which would change nothing): the mask is the object's
  result, its bounding box grown to hold the positive clicks is the box prompt (unless a box was
  set) that places the zoom-in windows, and each click replaces the mask by the model's logits
  within ``edit_radius_mm`` of the click (a model-guided brush); the mask is kept everywhere else.

`segvol predict` runs through `Session.segment_region`, one category at a time: that path keeps
no decoder outputs (one pass per category, least memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segvol.infer.geometry import box_slices
from segvol.infer.mask_prompts import MaskPrompt
from segvol.infer.prompts import Prompt
from segvol.infer.volume import NormalizedVolume
from segvol.infer.zoom import OUTSIDE_LOGIT, DecodeMemo, segment, segment_region
from segvol.model.mask_prompt import mask_prompt_is_trained


class Session:
    """One image, a set of named objects with editable prompts, cached image embeddings and decodes.

    Args:
        model: a SegVol (``encode_image``/``encode_text``/``decode``).
        image: a `segvol.io.CanonicalImage` (its HU are kept and normalized when read, see
            `segvol.infer.volume`), or a canonical ``(D, H, W)`` volume already in [0, 1].
        mode, overlap, sw_batch_size, box_limits, progress: as in `segvol.infer.segment`.
        edit_radius_mm: reach of a click on an object started from a mask when the model has no
            trained mask-prompt branch (voxels count as 1 mm when ``image`` has no spacing).
    """

    def __init__(
        self,
        model,
        image,
        mode: str = "zoom",
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        box_limits: bool = True,
        progress: bool = False,
        edit_radius_mm: float = 20.0,
    ) -> None:
        self.model = model
        self.options = dict(
            mode=mode, overlap=overlap, sw_batch_size=sw_batch_size, box_limits=box_limits, progress=progress
        )
        spacing = getattr(image, "spacing", None)
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
        if not edit_radius_mm > 0:
            raise ValueError(f"edit_radius_mm must be positive, got {edit_radius_mm}")
        self.edit_radius_mm = float(edit_radius_mm)
        self.volume = _normalized_volume(image)
        self.embeddings: dict = {}  # view key -> (C, d, h, w) image embedding, see zoom._Embeddings
        self.decodes = DecodeMemo()  # decoder outputs by view and prompt, per object
        self.prompts: dict[str, dict] = {}
        self.results: dict[str, dict] = {}  # name -> {"state", "region", "logits", "mask_prompt"}

    # -- editing --------------------------------------------------------------------------
    def _category(self, name: str) -> dict:
        return self.prompts.setdefault(name, {"text": None, "box": None, "points": [], "labels": [], "mask": None})

    def add_text(self, name: str, text: str | None = None) -> None:
        """Prompt object ``name`` with a text (default: the name itself)."""
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

    def set_mask(self, name: str, mask: np.ndarray | torch.Tensor) -> None:
        """Start (or restart) object ``name`` from a ``(D, H, W)`` binary mask on the canonical grid,
        e.g. one label of a label map (``labels == 5``); its other prompts are kept. See the module
        docstring for how clicks then edit it."""
        mask = np.asarray(mask)
        if mask.shape != tuple(self.volume.shape):
            raise ValueError(f"mask of shape {mask.shape} is not on the image grid {tuple(self.volume.shape)}")
        if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)) or not np.isin(mask, (0, 1)).all():
            raise ValueError("a mask holds 0/1 or booleans; pick one label of a label map first (labels == id)")
        prompt = MaskPrompt.from_mask(mask)
        if prompt is None:
            raise ValueError(f"the mask for '{name}' has no voxel")
        self._category(name)["mask"] = prompt
        self.results.pop(name, None)  # a new start: no previous round

    def remove_mask(self, name: str) -> None:
        self._category(name)["mask"] = None

    def set_prompts(
        self,
        name: str,
        text: str | None = None,
        box: Sequence[int] | None = None,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        mask: MaskPrompt | None = None,
    ) -> None:
        """Every prompt of object ``name`` at once, replacing what it had: for an editor that keeps the
        prompts itself (with its own undo, as `segvol serve` does). ``mask``: None, or the `MaskPrompt` that
        `set_mask` made for it (`mask_prompt`); the same one keeps what was decoded for it."""
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points need {len(labels)} labels")
        category = self._category(name)
        if mask is not category["mask"]:
            self.results.pop(name, None)  # another start: no previous round
        category.update(
            text=text,
            box=None if box is None else [int(v) for v in box],
            points=[[float(c) for c in p] for p in points],
            labels=[1 if label else 0 for label in labels],
            mask=mask,
        )

    def mask_prompt(self, name: str) -> MaskPrompt | None:
        """The mask object ``name`` started from (`set_mask`), or None."""
        return self._known(name)["mask"]

    def remove(self, name: str) -> None:
        """Forget an object, all its prompts and what was kept for it."""
        self.prompts.pop(name, None)
        self.results.pop(name, None)
        self.decodes.keep(name, {})

    def prompt(self, name: str) -> Prompt:
        """The current prompt of an object (ValueError when it has none left); without its mask."""
        category = self._known(name)
        points = category["points"] or None
        return Prompt(
            text=category["text"],
            box=category["box"],
            points=points,
            point_labels=category["labels"] if points else None,
            name=name,
        )

    def _known(self, name: str) -> dict:
        if name not in self.prompts:
            raise ValueError(f"no category '{name}' in this session (have {sorted(self.prompts)})")
        return self.prompts[name]

    # -- results --------------------------------------------------------------------------
    def segment(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """``(K, D, H, W)`` float32 logits for canonical prompts, reusing cached embeddings and decodes."""
        return segment(
            self.model, self.volume, list(prompts), embeddings=self.embeddings, decodes=self.decodes, **self.options
        )

    def segment_region(self, prompts: Sequence[Prompt]) -> tuple[np.ndarray, torch.Tensor]:
        """`segvol.infer.zoom.segment_region` with cached embeddings: ``(region box, logits there)``.

        Keeps no decoder outputs (the lean path of `segvol predict`); `region_logits` is the
        interactive one."""
        return segment_region(self.model, self.volume, list(prompts), embeddings=self.embeddings, **self.options)

    def region_logits(self, name: str) -> tuple[np.ndarray, torch.Tensor]:
        """Object ``name`` under its current prompts (and mask): ``(region, logits)``, the inclusive
        canonical box ``region`` outside which every logit is ``OUTSIDE_LOGIT``, and the logits inside it.

        Do not modify the returned logits: they are kept as the object's result.
        """
        category = self._known(name)
        state = _state(category)
        kept = self.results.get(name)
        if kept is not None and kept["state"] == state:
            return kept["region"], kept["logits"]
        mask: MaskPrompt | None = category["mask"]
        has_prompt = category["text"] is not None or category["box"] is not None or bool(category["points"])
        if mask is not None and not has_prompt:
            region, logits = mask.region.copy(), mask.logits()
        else:
            prompt = self.prompt(name) if mask is None else self._prompt_with_mask(name, mask)
            trained = mask_prompt_is_trained(self.model)
            mask_prompt = None
            if trained:  # the previous round's logits, else the starting mask
                mask_prompt = kept["mask_prompt"] if kept is not None else mask
            region, logits = segment_region(
                self.model,
                self.volume,
                [prompt],
                embeddings=self.embeddings,
                decodes=self.decodes,
                masks=[mask_prompt],
                **self.options,
            )
            logits = logits[0]
            if mask is not None and not trained:
                region, logits = self._edit_near_clicks(mask, prompt, region, logits)
        self.results[name] = {
            "state": state,
            "region": region,
            "logits": logits,
            "mask_prompt": MaskPrompt(region, logits),
        }
        return region, logits

    def logits(self, name: str) -> torch.Tensor:
        """``(D, H, W)`` float32 logits of one object under its current prompts (and mask)."""
        region, part = self.region_logits(name)
        logits = torch.full(tuple(self.volume.shape), OUTSIDE_LOGIT, dtype=torch.float32)
        logits[box_slices(region)] = part
        return logits

    def mask(self, name: str) -> np.ndarray:
        """``(D, H, W)`` bool mask of one object (probability > 0.5)."""
        region, part = self.region_logits(name)
        mask = np.zeros(tuple(self.volume.shape), dtype=bool)
        mask[box_slices(region)] = (part > 0).numpy()
        return mask

    # -- an object started from a mask ------------------------------------------------------
    def _prompt_with_mask(self, name: str, mask: MaskPrompt) -> Prompt:
        """The object's prompt; without a box of its own, the mask's box grown to hold the positive clicks."""
        category = self.prompts[name]
        box = category["box"]
        if box is None:
            corners = [mask.region[:3], mask.region[3:]]
            positive = [p for p, label in zip(category["points"], category["labels"]) if label == 1]
            if positive:
                clicks = np.rint(np.asarray(positive)).astype(np.int64)
                corners = [np.minimum(corners[0], clicks.min(axis=0)), np.maximum(corners[1], clicks.max(axis=0))]
            box = [int(v) for v in (*corners[0], *corners[1])]
        points = category["points"] or None
        return Prompt(
            text=category["text"],
            box=box,
            points=points,
            point_labels=category["labels"] if points else None,
            name=name,
        )

    def _edit_near_clicks(
        self, mask: MaskPrompt, prompt: Prompt, region: np.ndarray, logits: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor]:
        """The mask, with the model's logits within ``edit_radius_mm`` of each click (inside the
        model's region): ``(region, logits)`` covering both."""
        radius = self.edit_radius_mm / np.asarray(self.spacing)
        zones = []
        for point in [] if prompt.points is None else prompt.points:
            low = np.maximum(np.ceil(point - radius), region[:3]).astype(np.int64)
            high = np.minimum(np.floor(point + radius), region[3:]).astype(np.int64)
            if np.all(low <= high):
                zones.append((point, low, high))
        corners = [mask.region[:3], mask.region[3:]]
        for _, low, high in zones:
            corners = [np.minimum(corners[0], low), np.maximum(corners[1], high)]
        combined_region = np.concatenate(corners).astype(np.int64)
        combined = torch.full(
            tuple(int(n) for n in combined_region[3:] - combined_region[:3] + 1), OUTSIDE_LOGIT, dtype=torch.float32
        )
        combined[box_slices(mask.region - np.tile(combined_region[:3], 2))] = mask.logits()
        for point, low, high in zones:
            grid = np.ogrid[tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high))]
            inside = torch.from_numpy(sum(((g - p) / r) ** 2 for g, p, r in zip(grid, point, radius)) <= 1.0)
            target = combined[box_slices(np.concatenate([low, high]) - np.tile(combined_region[:3], 2))]
            source = logits[box_slices(np.concatenate([low, high]) - np.tile(region[:3], 2))]
            target[inside] = source[inside]
        return combined_region, combined


def _state(category: dict) -> tuple:
    """What an object's result depends on."""
    mask = category["mask"]
    return (
        category["text"],
        None if category["box"] is None else tuple(category["box"]),
        tuple(map(tuple, category["points"])),
        tuple(category["labels"]),
        None if mask is None else mask.token,
    )


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
