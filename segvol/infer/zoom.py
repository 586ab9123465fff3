"""Zoom-out-zoom-in inference (docs/method.md#zoom-out-zoom-in-inference) for many prompts at once.

`segment` runs on a canonical ``(D, H, W)`` volume in [0, 1]:

1. crop to the foreground (voxels > 0; prompts are clipped to it);
2. zoom-out: nearest-exact resize of the crop to the model size, prompts mapped with the same
   `VoxelMap`, one image embedding, every prompt decoded from it;
3. coarse logits back onto the crop (nearest-exact);
4. zoom-in: per prompt, the fewest windows over the bounding box of its coarse mask (inside
   the prompt's box when boxes are limits; `roi_windows`: never more per axis than the
   release, positions of a shared 0.5-overlap lattice where that costs nothing extra); each
   window is encoded once for all prompts that need it, each prompt gets its own per-window
   box/points, window logits are averaged and replace the coarse logits;
5. everything pasted back into the uncropped volume.

Every deviation from the released loop is listed with its reason and measured effect in
docs/differences-from-release.md. Per-window prompts (differences from the release are marked *):
- text: the prompt's text in every window;
- box: the part of the user's box inside the window* (the release used the coarse-mask box
  whenever there was more than one window); windows the box does not reach are skipped for that
  prompt*. Without a user box: the bounding box of the coarse mask inside the window;
- points: the user's points inside the window, negatives included* (the release dropped
  negatives and never combined points with a box).
A window where a prompt has no box, no point and (without text, or in zoom mode) no coarse
foreground is skipped for that prompt: its voxels keep the coarse logits.

A box is a limit* (``box_limits=True``): logits outside a prompt's box are set to
``OUTSIDE_LOGIT``, so coarse voxels that spill past the box at zoom-out resolution and that no
box-carrying window revisits cannot leak out of it.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segvol.infer.geometry import VoxelMap, box_is_empty, box_slices, nearest_exact_indices
from segvol.infer.mask_prompts import MaskPrompt
from segvol.infer.prompts import Prompt
from segvol.infer.volume import NormalizedVolume
from segvol.infer.windows import LogitStitcher, Window, extract_window, window_lattice, window_starts

log = logging.getLogger(__name__)

MODES = ("zoom", "resize", "window")

# Logit written where no pass looked (outside the foreground crop): sigmoid of it is 0.
OUTSIDE_LOGIT = -1.0e4


@dataclass
class DecodeJob:
    """One decoder pass: prompt ``prompt_index`` on the embedding ``view_index`` of a batch.

    Coordinates are voxel indices of the model input (the view). ``view`` names the view
    (``("zoom-out",)`` or ``("window", start, size)``); ``mask`` gives the view's ``(D, H, W)``
    mask-prompt logits when the prompt has a mask (`segvol.infer.mask_prompts.MaskPrompt`, named by
    ``mask_token``).
    """

    view_index: int
    prompt_index: int
    text: str | None
    box: np.ndarray | None
    points: np.ndarray | None
    point_labels: np.ndarray | None
    view: tuple = ()
    mask: Callable[[], torch.Tensor] | None = None
    mask_token: int | None = None

    @property
    def signature(self) -> tuple[bool, bool, int, bool]:
        """Jobs with equal signatures can share one batched decoder call without padding."""
        return (
            self.text is not None,
            self.box is not None,
            0 if self.points is None else len(self.points),
            self.mask is not None,
        )

    @property
    def key(self) -> tuple:
        """Everything the decoder's output depends on: the view and the prompts mapped into it."""
        return (
            self.view,
            self.text,
            _frozen(self.box),
            _frozen(self.points),
            _frozen(self.point_labels),
            self.mask_token,
        )


def _frozen(array) -> tuple | None:
    return None if array is None else tuple(np.asarray(array, dtype=np.float64).ravel().tolist())


class DecodeMemo:
    """Decoder outputs kept between calls on one volume (`segvol.infer.session.Session`), by `DecodeJob.key`.

    A window's logits depend only on its image embedding and the prompts mapped into it, so a
    call whose job for a window equals an earlier one reuses that output instead of decoding
    again: after a click, only the windows the click lies in (or whose coarse box moved) and the
    zoom-out view are decoded. Window outputs are kept only where they meet the foreground crop
    (the only part ever stitched). Memory: each prompt name (`Prompt.label`) holds the outputs of
    its latest call; outputs no name holds any more are dropped.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple, torch.Tensor] = {}
        self.held: dict[str, set[tuple]] = {}

    def get(self, key: tuple) -> torch.Tensor | None:
        return self.entries.get(key)

    def keep(self, owner: str, outputs: dict[tuple, torch.Tensor]) -> None:
        """``owner`` now holds exactly ``outputs`` (its latest call); drop what nobody holds."""
        self.entries.update(outputs)
        self.held[owner] = set(outputs)
        if not outputs:
            del self.held[owner]
        alive = set().union(*self.held.values()) if self.held else set()
        for key in [key for key in self.entries if key not in alive]:
            del self.entries[key]

    @property
    def nbytes(self) -> int:
        return sum(value.numel() * value.element_size() for value in self.entries.values())


def model_input_size(model) -> tuple[int, int, int]:
    """The ``(D, H, W)`` size the model was built for (``cfg.spatial_size``)."""
    for holder in (model, getattr(model, "config", None), getattr(model, "cfg", None)):
        size = getattr(holder, "spatial_size", None) if holder is not None else None
        if size is not None:
            return tuple(int(s) for s in size)
    raise ValueError("the model does not tell its input size (no spatial_size on it or its config)")


def resize_nearest_exact(
    volume: torch.Tensor,
    size: Sequence[int],
    out: torch.Tensor | None = None,
    slab: int = 16,
    region: np.ndarray | None = None,
) -> torch.Tensor:
    """Nearest-exact resize of a ``(D, H, W)`` tensor, slab by slab so that large outputs need no temporaries.

    With ``region`` (an inclusive box of the output grid) only that part of the output is made.
    """
    indices = [
        torch.from_numpy(nearest_exact_indices(n_in, n_out)).to(volume.device)
        for n_in, n_out in zip(volume.shape, size)
    ]
    if region is not None:
        indices = [index[int(region[a]) : int(region[a + 3]) + 1] for a, index in enumerate(indices)]
        size = [len(index) for index in indices]
    if out is None:
        out = volume.new_empty(tuple(size))
    for first in range(0, size[0], slab):
        part = volume.index_select(0, indices[0][first : first + slab])
        out[first : first + slab] = part.index_select(1, indices[1]).index_select(2, indices[2])
    return out


def foreground_box(volume: torch.Tensor, slab: int = 16) -> np.ndarray:
    """Inclusive bounding box of voxels > 0 (the whole volume when there are none).

    Slab by slab: a full boolean mask of a 512x512x600 CT would cost 157 MB per call.
    """
    hits = [torch.zeros(n, dtype=torch.bool) for n in volume.shape]
    for first in range(0, volume.shape[0], slab):
        part = volume[first : first + slab] > 0
        hits[0][first : first + slab] = part.flatten(1).any(dim=1)
        hits[1] |= part.any(dim=0).any(dim=1)
        hits[2] |= part.any(dim=0).any(dim=0)
    box = None
    if hits[0].any():
        found = [torch.nonzero(h).flatten() for h in hits]
        box = np.array([int(f[0]) for f in found] + [int(f[-1]) for f in found], dtype=np.int64)
    if box is None:
        log.warning("the volume has no voxel above 0; using it whole")
        box = np.array([0, 0, 0, *(n - 1 for n in volume.shape)], dtype=np.int64)
    return box


def _into_crop(prompt: Prompt, to_crop: VoxelMap, crop_shape) -> Prompt:
    """The prompt in crop voxels: box clipped, points outside the foreground dropped.

    The crop depends on the image alone, so each prompt's result does not depend on the others.
    """
    box = points = labels = None
    if prompt.box is not None:
        box = to_crop.map_box(prompt.box, crop_shape)
        if box_is_empty(box):
            raise ValueError(
                f"prompt '{prompt.label}': box {list(prompt.box)} lies entirely in the image "
                "background (no voxel above the air level)"
            )
    if prompt.points is not None:
        mapped = to_crop.map_points(prompt.points)
        inside = np.all((mapped >= 0) & (mapped < np.asarray(crop_shape)), axis=1)
        if not inside.all():
            log.warning(
                "prompt '%s': %d point(s) in the image background were ignored", prompt.label, int((~inside).sum())
            )
        if inside.any():
            points, labels = mapped[inside], prompt.point_labels[inside]
        elif prompt.text is None and box is None:
            raise ValueError(f"prompt '{prompt.label}': every point lies in the image background")
    return Prompt(text=prompt.text, box=box, points=points, point_labels=labels, name=prompt.name)


def _mask_box(mask: torch.Tensor) -> np.ndarray | None:
    """Inclusive bounding box of a boolean ``(D, H, W)`` mask, None when empty."""
    lower, upper = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(mask.any(dim=others)).flatten()
        if len(hits) == 0:
            return None
        lower.append(int(hits[0]))
        upper.append(int(hits[-1]))
    return np.array(lower + upper, dtype=np.int64)


def roi_windows(crop_shape: Sequence[int], window: Sequence[int], overlap: float, roi: np.ndarray) -> list[Window]:
    """The fewest windows that zoom in on an inclusive ROI box (crop voxels); see
    docs/differences-from-release.md, "Zoom-in windows".

    Per axis, never more positions than the release's sliding window over its ROI (one where
    the ROI fits in a window, else MONAI's positions over the ROI extent):
    1. a position of the shared 0.5-overlap lattice (`window_lattice`) when enough of them
       cover the ROI: windows then coincide between prompts and are encoded once for all;
    2. else windows placed on the ROI itself: one centred on it (moved inside the crop), or
       the release's positions from the ROI's start with the last one flush with its end.
    """
    lattice = window_lattice(crop_shape, window, overlap)
    per_axis = []
    for axis in range(3):
        size, extent_of_crop = int(window[axis]), int(crop_shape[axis])
        lo, hi = int(roi[axis]), int(roi[axis + 3])
        extent = hi - lo + 1
        release = [lo + s for s in window_starts(max(extent, size), size, overlap)] if extent > size else None
        shared = sorted({w.start[axis] for w in lattice})
        holding = [s for s in shared if s <= lo and hi < s + size]
        meeting = [s for s in shared if s <= hi and lo < s + size]
        if holding:
            centre = (lo + hi) / 2
            per_axis.append([min(holding, key=lambda s: abs(s + (size - 1) / 2 - centre))])
        elif release is not None and len(meeting) <= len(release):
            per_axis.append(meeting)
        elif release is not None:
            per_axis.append(release)
        else:  # the ROI fits in one window but no lattice position holds it: centre one on it
            start = lo - (size - extent) // 2
            per_axis.append([min(max(start, 0), extent_of_crop - size)])
    size = tuple(int(n) for n in window)
    return [Window((d, h, w), size) for d in per_axis[0] for h in per_axis[1] for w in per_axis[2]]


def _window_job(
    prompt: Prompt,
    to_window: VoxelMap,
    window_size: Sequence[int],
    view_index: int,
    prompt_index: int,
    coarse_box: np.ndarray | None,
    use_coarse: bool,
    view: tuple = (),
    mask: Callable[[], torch.Tensor] | None = None,
    mask_token: int | None = None,
) -> DecodeJob | None:
    """The prompt of one window (see the module docstring), or None when the window is skipped."""
    box = None
    if prompt.box is not None:
        box = to_window.map_box(prompt.box, window_size)
        if box_is_empty(box):
            return None
    elif coarse_box is not None:
        box = coarse_box
    points = labels = None
    if prompt.points is not None:
        local = to_window.map_points(prompt.points)
        inside = np.all((local >= 0) & (local < np.asarray(window_size)), axis=1)
        if inside.any():
            points, labels = local[inside], prompt.point_labels[inside]
    if box is None and points is None and (prompt.text is None or use_coarse):
        return None
    return DecodeJob(view_index, prompt_index, prompt.text, box, points, labels, view, mask, mask_token)


class _Decoder:
    """Runs decode jobs in batches grouped by prompt signature, sharing image and text embeddings."""

    def __init__(self, model, texts: dict[str, torch.Tensor], device: torch.device, batch_size: int) -> None:
        self.model, self.texts, self.device, self.batch_size = model, texts, device, batch_size

    def run(
        self,
        embeddings: Callable[[], torch.Tensor],
        jobs: list[DecodeJob],
        known: Callable[[DecodeJob], torch.Tensor | None] = lambda job: None,
    ) -> Iterator[tuple[DecodeJob, torch.Tensor]]:
        """Yield ``(job, logits)`` for every job, logits ``(D, H, W)`` float32 on the CPU.

        ``embeddings()`` gives the batch's image embeddings (called only when something is
        decoded); a job for which ``known(job)`` gives a tensor is not decoded, that tensor is
        yielded. The order of the yields does not depend on which jobs are known: stitching
        sums window logits, and float sums depend on their order.
        """
        groups: dict[tuple, list[DecodeJob]] = defaultdict(list)
        for job in jobs:
            groups[job.signature].append(job)
        for group in groups.values():
            remembered = [known(job) for job in group]
            missing = [job for job, value in zip(group, remembered) if value is None]
            decoded: dict[int, torch.Tensor] = {}
            for job, value in zip(group, remembered):
                if value is None:
                    if id(job) not in decoded:  # the next chunk of missing jobs, in order
                        chunk, missing = missing[: self.batch_size], missing[self.batch_size :]
                        decoded = dict(zip(map(id, chunk), self._decode(embeddings(), chunk)))
                    value = decoded.pop(id(job))
                yield job, value

    def _decode(self, embeddings: torch.Tensor, chunk: list[DecodeJob]) -> torch.Tensor:
        has_text, has_box, n_points, has_mask = chunk[0].signature
        views = torch.tensor([job.view_index for job in chunk], device=embeddings.device)
        text = boxes = points = None
        if has_text:
            text = torch.stack([self.texts[job.text] for job in chunk])
        if has_box:
            boxes = torch.tensor(np.stack([job.box for job in chunk]), dtype=torch.float32, device=self.device)
        if n_points:
            coords = torch.tensor(np.stack([job.points for job in chunk]), dtype=torch.float32, device=self.device)
            labels = torch.tensor(np.stack([job.point_labels for job in chunk]), dtype=torch.long, device=self.device)
            points = (coords, labels)
        prompts = dict(text=text, boxes=boxes, points=points)
        if has_mask:  # passed only when there is one: models without the branch keep their signature
            prompts["mask_prompt"] = torch.stack([job.mask() for job in chunk])[:, None].to(self.device)
        logits = self.model.decode(embeddings.index_select(0, views), **prompts)
        return logits[:, 0].float().cpu()


def _embed_texts(model, prompts: Sequence[Prompt], device: torch.device) -> dict[str, torch.Tensor]:
    names = sorted({p.text for p in prompts if p.text is not None})
    if not names:
        return {}
    try:
        embedded = model.encode_text(names)
    except (KeyError, ValueError, RuntimeError, NotImplementedError, AttributeError) as error:
        raise ValueError(f"text prompt(s) {names} cannot be embedded by this model: {error}") from None
    if embedded is None or embedded.shape[0] != len(names):
        raise ValueError(f"the text encoder returned no embedding for some of {names}")
    return {name: embedded[i].to(device) for i, name in enumerate(names)}


def segment_region(
    model,
    volume: torch.Tensor | np.ndarray,
    prompts: Sequence[Prompt],
    mode: str = "zoom",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    decode_batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    box_limits: bool = True,
    embeddings: dict | None = None,
    decodes: DecodeMemo | None = None,
    masks: Sequence[MaskPrompt | None] | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Segment a canonical volume for K prompts, returning ``(region, logits)``: the inclusive
    box ``region`` (voxel indices of ``volume``) outside which every logit is ``OUTSIDE_LOGIT``
    and the ``(K, *region size)`` logits inside it. The region is the foreground crop, or with
    ``box_limits`` and a single boxed prompt, that prompt's box within the crop.

    Args:
        model: a SegVol (``encode_image``, ``encode_text``, ``decode``, input size ``spatial_size``).
        volume: ``(D, H, W)`` intensities in [0, 1] (docs/method.md#intensity-normalization), canonical axes,
            or a `segvol.infer.volume.NormalizedVolume` (raw HU normalized when read: less memory, same values).
        prompts: K `Prompt`s, coordinates in voxel indices of ``volume``.
        mode: ``zoom`` (zoom-out-zoom-in), ``resize`` (zoom-out only) or ``window`` (plain
            sliding window over the foreground, no global view).
        overlap: window overlap of the zoom-in / window pass.
        sw_batch_size: windows encoded per image-encoder call.
        decode_batch_size: prompts decoded per decoder call.
        device: where the model runs (default: where its parameters are). Stitching stays on CPU.
        progress: show a tqdm bar over windows.
        box_limits: nothing outside a prompt's box is foreground (False: the box is only a hint).
        embeddings: a dict kept between calls on the same volume (`segvol.infer.session`): image
            embeddings of the zoom-out view and of each window are stored there and reused (and the
            foreground box of a tensor volume).
        decodes: a `DecodeMemo` kept between calls on the same volume: decoder outputs whose view
            and prompts are unchanged are taken from it instead of decoded again (same result).
        masks: per prompt, a `segvol.infer.mask_prompts.MaskPrompt` (in voxels of ``volume``) given
            to the model's mask-prompt branch in every view (the zoom-out view and each window), or None.

    Returns:
        ``(region, logits)``, logits float32 on the CPU (sigmoid > 0.5 = inside).
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
    if not prompts:
        raise ValueError("segment needs at least one prompt")
    if not isinstance(volume, NormalizedVolume):  # HU normalized on read: finite once their statistics exist
        volume = torch.as_tensor(volume)
        if volume.ndim != 3:
            raise ValueError(f"segment needs a (D, H, W) volume, got shape {tuple(volume.shape)}")
        volume = volume.to(device="cpu", dtype=torch.float32)
        if not all(torch.isfinite(volume[first : first + 16]).all() for first in range(0, volume.shape[0], 16)):
            raise ValueError("the volume contains NaN or infinite values")  # checked slab by slab: no 157 MB mask
    for prompt in prompts:
        prompt.check_inside(volume.shape)
    masks = list(masks) if masks is not None else [None] * len(prompts)
    if len(masks) != len(prompts):
        raise ValueError(f"{len(masks)} mask prompts for {len(prompts)} prompts")

    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    window_size = model_input_size(model)
    was_training = model.training
    # eval()/train() set an attribute on every module (~800 with a text backbone, ~20 ms a click):
    # skipped when no module is in training mode, where both would change nothing.
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        with torch.no_grad():
            region, logits = _segment(
                model,
                volume,
                list(prompts),
                mode,
                overlap,
                sw_batch_size,
                decode_batch_size,
                device,
                window_size,
                progress,
                box_limits,
                _Embeddings(model, device, {} if embeddings is None else embeddings),
                _Recall(decodes, prompts),
                masks,
            )
    finally:
        if switch:
            model.train(was_training)
    if box_limits:
        for k, prompt in enumerate(prompts):
            if prompt.box is not None:
                _limit_to_box(logits[k], np.asarray(prompt.box) - np.tile(region[:3], 2))
    return region, logits


def segment(
    model,
    volume: torch.Tensor | np.ndarray,
    prompts: Sequence[Prompt],
    mode: str = "zoom",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    decode_batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    box_limits: bool = True,
    embeddings: dict | None = None,
    decodes: DecodeMemo | None = None,
    masks: Sequence[MaskPrompt | None] | None = None,
) -> torch.Tensor:
    """Segment a canonical volume for K prompts: ``(K, D, H, W)`` float32 logits on the CPU
    (sigmoid > 0.5 = inside), ``OUTSIDE_LOGIT`` outside the foreground crop (and, with
    ``box_limits``, outside a prompt's box). Arguments as `segment_region`, which returns only the
    part that can differ from ``OUTSIDE_LOGIT`` and needs far less memory.
    """
    region, part = segment_region(
        model,
        volume,
        prompts,
        mode=mode,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        decode_batch_size=decode_batch_size,
        device=device,
        progress=progress,
        box_limits=box_limits,
        embeddings=embeddings,
        decodes=decodes,
        masks=masks,
    )
    logits = torch.full((len(prompts), *volume.shape), OUTSIDE_LOGIT, dtype=torch.float32)
    logits[(slice(None), *box_slices(region))] = part
    return logits


def _limit_to_box(target: torch.Tensor, box: np.ndarray) -> None:
    """Set ``target`` (D, H, W) to OUTSIDE_LOGIT outside the inclusive box, in place."""
    for axis in range(3):
        before = [slice(None)] * 3
        before[axis] = slice(0, max(int(box[axis]), 0))
        target[tuple(before)] = OUTSIDE_LOGIT
        after = [slice(None)] * 3
        after[axis] = slice(int(box[axis + 3]) + 1, None)
        target[tuple(after)] = OUTSIDE_LOGIT


def _coarse_roi(coarse: torch.Tensor, box: np.ndarray | None) -> np.ndarray | None:
    """Bounding box of the coarse mask (crop voxels); with a limiting box, of its part inside the box
    (everything outside will be cut anyway, so no window is spent there)."""
    if box is None:
        return _mask_box(coarse > 0)
    inside = _mask_box(coarse[box_slices(box)] > 0)
    return None if inside is None else inside + np.tile(box[:3], 2)


class _Embeddings:
    """Image embeddings by view: ``("zoom-out",)`` or ``("window", start, size)``; computed on
    first use, kept in ``store`` (one ``(C, d, h, w)`` tensor each) so later calls reuse them."""

    def __init__(self, model, device, store: dict) -> None:
        self.model, self.device, self.store = model, device, store

    def get(self, keys: list[tuple], patches) -> torch.Tensor:
        """``(len(keys), C, d, h, w)``; ``patches()`` gives the ``(N, 1, D, H, W)`` inputs of the missing keys."""
        missing = [key for key in keys if key not in self.store]
        if missing:
            encoded = self.model.encode_image(patches(missing).to(self.device))
            for key, embedding in zip(missing, encoded):
                self.store[key] = embedding
        return torch.stack([self.store[key] for key in keys])


class _Recall:
    """One call's use of a `DecodeMemo`: what it found, what each prompt used (kept at the end)."""

    def __init__(self, memo: DecodeMemo | None, prompts: Sequence[Prompt]) -> None:
        self.memo = memo
        self.owners = [prompt.label for prompt in prompts]
        self.used: dict[str, dict[tuple, torch.Tensor]] = {owner: {} for owner in self.owners}

    def known(self, job: DecodeJob) -> torch.Tensor | None:
        return None if self.memo is None else self.memo.get(job.key)

    def note(self, job: DecodeJob, value: torch.Tensor) -> torch.Tensor:
        """Record the output ``value`` (already cut to what is kept) of ``job``; returns it."""
        if self.memo is not None:
            used = self.used[self.owners[job.prompt_index]]
            if job.key not in used:
                used[job.key] = value if self.memo.get(job.key) is value else value.clone()
            value = used[job.key]
        return value

    def finish(self) -> None:
        if self.memo is not None:
            for owner, outputs in self.used.items():
                self.memo.keep(owner, outputs)


def _segment(
    model,
    volume,
    prompts,
    mode,
    overlap,
    sw_batch_size,
    decode_batch_size,
    device,
    window_size,
    progress,
    box_limits,
    cache: _Embeddings,
    recall: _Recall,
    masks: list[MaskPrompt | None],
) -> tuple[np.ndarray, torch.Tensor]:
    decoder = _Decoder(model, _embed_texts(model, prompts, device), device, decode_batch_size)
    if isinstance(volume, NormalizedVolume):  # reading every voxel costs a normalization pass: once per volume
        if volume.foreground is None:
            volume.foreground = foreground_box(volume)
        crop_box = volume.foreground
    else:  # the embeddings' store belongs to one volume: so does its foreground box
        crop_box = cache.store.get(("foreground",))
        if crop_box is None:
            crop_box = cache.store[("foreground",)] = foreground_box(volume)
    crop_start = crop_box[:3]
    crop_shape = tuple(int(n) for n in crop_box[3:] - crop_box[:3] + 1)
    crop_slices = tuple(slice(int(a), int(b) + 1) for a, b in zip(crop_box[:3], crop_box[3:]))
    crop = volume.crop(crop_slices) if isinstance(volume, NormalizedVolume) else volume[crop_slices]
    to_crop = VoxelMap.crop(crop_start)
    local = [_into_crop(p, to_crop, crop_shape) for p in prompts]

    # Logits are kept only where they can differ from OUTSIDE_LOGIT: the crop, or a single
    # prompt's limiting box (memory: `segvol predict` segments one category at a time).
    region = np.array([0, 0, 0, *(n - 1 for n in crop_shape)], dtype=np.int64)
    if len(prompts) == 1 and box_limits and local[0].box is not None:
        region = np.asarray(local[0].box, dtype=np.int64)
    region_start = region[:3]
    region_logits = torch.full((len(prompts), *(region[3:] - region[:3] + 1)), OUTSIDE_LOGIT, dtype=torch.float32)
    in_volume = region + np.tile(crop_start, 2)

    coarse = None
    if mode in ("zoom", "resize"):
        coarse = _zoom_out(cache, decoder, crop, local, window_size, recall, masks, crop_box)
        for k in range(len(prompts)):
            # nearest-exact, not the release's nearest: docs/differences-from-release.md
            resize_nearest_exact(coarse[k], crop_shape, out=region_logits[k], region=region)
        if mode == "resize":
            recall.finish()
            return in_volume, region_logits

    lattice = window_lattice(crop_shape, window_size, overlap)
    needed: dict[Window, list[int]] = defaultdict(list)  # window -> prompts
    for k in range(len(prompts)):
        if mode == "window":
            needed_windows = lattice
        else:
            limit = (
                np.asarray(local[k].box) - np.tile(region_start, 2) if box_limits and local[k].box is not None else None
            )
            roi = _coarse_roi(region_logits[k], limit)
            if roi is None:
                log.info("zoom-out found nothing for '%s'; keeping the coarse result", prompts[k].label)
                continue
            roi = roi + np.tile(region_start, 2)
            needed_windows = roi_windows(crop_shape, window_size, overlap, roi)
        for window in needed_windows:
            needed[window].append(k)

    # Prompts per window first, so that windows no prompt needs are never encoded.
    work: list[tuple[Window, list[DecodeJob]]] = []
    for window in sorted(needed, key=lambda w: w.start):
        to_window = VoxelMap.crop(window.start)
        view = ("window", window.start, window.size)
        in_volume_start = tuple(int(a + b) for a, b in zip(window.start, crop_start))
        jobs = []
        for k in needed[window]:
            coarse_box = None
            if coarse is not None and local[k].box is None:
                coarse_box = _coarse_box_in_window(coarse[k], crop_shape, window)
            mask, token = None, None
            if masks[k] is not None:
                mask, token = functools.partial(masks[k].window, in_volume_start, window.size), masks[k].token
            job = _window_job(
                local[k],
                to_window,
                window_size,
                0,
                k,
                coarse_box,
                use_coarse=coarse is not None,
                view=view,
                mask=mask,
                mask_token=token,
            )
            if job is not None:
                jobs.append(job)
        if jobs:
            work.append((window, jobs))

    def in_region(window: Window) -> Window:
        """The window's part inside the crop (all that is stitched, or kept), in region voxels."""
        volume_slices, _ = window.overlap(crop_shape)
        return Window(
            tuple(int(s.start - b) for s, b in zip(volume_slices, region_start)),
            tuple(s.stop - s.start for s in volume_slices),
        )

    parts: dict[int, list[Window]] = defaultdict(list)
    for window, jobs in work:
        for job in jobs:
            parts[job.prompt_index].append(in_region(window))
    stitchers = {k: LogitStitcher(region_logits[k], windows) for k, windows in parts.items()}
    bar = None
    if progress:
        from segvol.progress import progress_bar

        bar = progress_bar(total=len(work), desc="windows", unit="window", leave=False)
    for first in range(0, len(work), sw_batch_size):
        batch = work[first : first + sw_batch_size]
        jobs = []
        for view_index, (_, window_jobs) in enumerate(batch):
            for job in window_jobs:
                job.view_index = view_index
                jobs.append(job)
        by_key = {("window", window.start, window.size): window for window, _ in batch}
        embeddings = functools.cache(
            functools.partial(
                cache.get,
                list(by_key),
                lambda keys, by_key=by_key: torch.stack([extract_window(crop, by_key[key]) for key in keys])[:, None],
            )
        )
        for job, window_logits in decoder.run(embeddings, jobs, recall.known):
            window = batch[job.view_index][0]
            part = in_region(window)
            if window_logits.shape != part.size:  # decoded now: the whole window
                window_logits = window_logits[window.overlap(crop_shape)[1]]
            stitchers[job.prompt_index].add(part, recall.note(job, window_logits))
        del embeddings
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    for stitcher in stitchers.values():
        stitcher.finish()
    recall.finish()
    return in_volume, region_logits


def _zoom_out(
    cache: _Embeddings,
    decoder: _Decoder,
    crop: torch.Tensor,
    prompts: list[Prompt],
    window_size,
    recall: _Recall,
    masks: list[MaskPrompt | None],
    crop_box: np.ndarray,
):
    """Zoom-out pass: ``(K, *window_size)`` coarse logits (CPU) of the crop resized to the model size."""
    to_zoom = VoxelMap.resize(crop.shape, window_size)
    jobs = []
    for k, prompt in enumerate(prompts):
        mapped = prompt.mapped(to_zoom, window_size)
        mask, token = None, None
        if masks[k] is not None:
            mask, token = functools.partial(masks[k].zoom_out, crop_box, window_size), masks[k].token
        jobs.append(
            DecodeJob(0, k, mapped.text, mapped.box, mapped.points, mapped.point_labels, ("zoom-out",), mask, token)
        )
    coarse = torch.empty((len(prompts), *window_size), dtype=torch.float32)
    embedding = functools.cache(
        functools.partial(cache.get, [("zoom-out",)], lambda keys: resize_nearest_exact(crop, window_size)[None, None])
    )
    for job, value in decoder.run(embedding, jobs, recall.known):
        coarse[job.prompt_index] = recall.note(job, value)
    return coarse


def _coarse_box_in_window(coarse: torch.Tensor, crop_shape, window: Window) -> np.ndarray | None:
    """Bounding box (window voxels) of the coarse mask inside a window.

    Reads the zoom-out logits through the nearest-exact indices instead of the stitched volume,
    which later windows overwrite.
    """
    volume_slices, window_slices = window.overlap(crop_shape)
    picks = []
    for axis, sl in enumerate(volume_slices):
        indices = nearest_exact_indices(coarse.shape[axis], crop_shape[axis])[sl]
        picks.append(torch.from_numpy(indices))
    part = coarse.index_select(0, picks[0]).index_select(1, picks[1]).index_select(2, picks[2]) > 0
    box = _mask_box(part)
    if box is None:
        return None
    offset = np.array([s.start for s in window_slices] * 2)
    return box + offset
