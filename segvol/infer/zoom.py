"""Zoom-out-zoom-in inference (facts §7) for many prompts at once.

`segment` runs on a canonical ``(D, H, W)`` volume in [0, 1]:

1. crop to the foreground (voxels > 0; prompts are clipped to it);
2. zoom-out: nearest-exact resize of the crop to the model size, prompts mapped with the same
   `VoxelMap`, one image embedding, every prompt decoded from it;
3. coarse logits back onto the crop (nearest-exact);
4. zoom-in: per prompt, windows of a fixed 0.5-overlap lattice over the bounding box of its
   coarse mask (inside the prompt's box when boxes are limits; `roi_windows`: one window per axis
   where it fits in one, else all that meet it); each window is encoded once for all prompts that need it, each prompt gets its own
   per-window box/points, window logits are averaged and replace the coarse logits;
5. everything pasted back into the uncropped volume.

Per-window prompts (differences from the release are marked *):
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

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from segvol.infer.geometry import VoxelMap, box_is_empty, box_slices, nearest_exact_indices
from segvol.infer.prompts import Prompt
from segvol.infer.windows import LogitStitcher, Window, extract_window, window_lattice

log = logging.getLogger(__name__)

MODES = ("zoom", "resize", "window")

# Logit written where no pass looked (outside the foreground crop): sigmoid of it is 0.
OUTSIDE_LOGIT = -1.0e4


@dataclass
class DecodeJob:
    """One decoder pass: prompt ``prompt_index`` on the embedding ``view_index`` of a batch.

    Coordinates are voxel indices of the model input (the view).
    """

    view_index: int
    prompt_index: int
    text: str | None
    box: np.ndarray | None
    points: np.ndarray | None
    point_labels: np.ndarray | None

    @property
    def signature(self) -> tuple[bool, bool, int]:
        """Jobs with equal signatures can share one batched decoder call without padding."""
        return (self.text is not None, self.box is not None, 0 if self.points is None else len(self.points))


def model_input_size(model) -> tuple[int, int, int]:
    """The ``(D, H, W)`` size the model was built for (``cfg.spatial_size``)."""
    for holder in (model, getattr(model, "config", None), getattr(model, "cfg", None)):
        size = getattr(holder, "spatial_size", None) if holder is not None else None
        if size is not None:
            return tuple(int(s) for s in size)
    raise ValueError("the model does not tell its input size (no spatial_size on it or its config)")


def resize_nearest_exact(volume: torch.Tensor, size: Sequence[int], out: torch.Tensor | None = None,
                         slab: int = 16) -> torch.Tensor:
    """Nearest-exact resize of a ``(D, H, W)`` tensor, slab by slab so that large outputs need no temporaries."""
    indices = [torch.from_numpy(nearest_exact_indices(n_in, n_out)).to(volume.device)
               for n_in, n_out in zip(volume.shape, size)]
    if out is None:
        out = volume.new_empty(tuple(size))
    for first in range(0, size[0], slab):
        part = volume.index_select(0, indices[0][first:first + slab])
        out[first:first + slab] = part.index_select(1, indices[1]).index_select(2, indices[2])
    return out


def foreground_box(volume: torch.Tensor) -> np.ndarray:
    """Inclusive bounding box of voxels > 0 (the whole volume when there are none)."""
    box = _mask_box(volume > 0)
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
            raise ValueError(f"prompt '{prompt.label}': box {list(prompt.box)} lies entirely in the image "
                             "background (no voxel above the air level)")
    if prompt.points is not None:
        mapped = to_crop.map_points(prompt.points)
        inside = np.all((mapped >= 0) & (mapped < np.asarray(crop_shape)), axis=1)
        if not inside.all():
            log.warning("prompt '%s': %d point(s) in the image background were ignored", prompt.label,
                        int((~inside).sum()))
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


def roi_windows(lattice: list[Window], roi: np.ndarray) -> list[int]:
    """Indices of the lattice windows that zoom in on an inclusive ROI box.

    Per axis, like the release's ROI grown to the window size: if one window position holds
    the ROI's whole extent, only the one centred best on it; otherwise every position meeting the
    ROI (0.5-overlapping windows, averaged). Small organs thus cost one window, not 2-3 per axis.
    """
    chosen = []
    for axis in range(3):
        size = lattice[0].size[axis]
        starts = sorted({w.start[axis] for w in lattice})
        lo, hi = int(roi[axis]), int(roi[axis + 3])
        holding = [s for s in starts if s <= lo and hi < s + size]
        if holding:
            centre = (lo + hi) / 2
            chosen.append({min(holding, key=lambda s: abs(s + (size - 1) / 2 - centre))})
        else:
            chosen.append({s for s in starts if s <= hi and lo < s + size})
    return [i for i, w in enumerate(lattice) if all(w.start[a] in chosen[a] for a in range(3))]


def _window_job(prompt: Prompt, to_window: VoxelMap, window_size: Sequence[int], view_index: int,
                prompt_index: int, coarse_box: np.ndarray | None, use_coarse: bool) -> DecodeJob | None:
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
    return DecodeJob(view_index, prompt_index, prompt.text, box, points, labels)


class _Decoder:
    """Runs decode jobs in batches grouped by prompt signature, sharing image and text embeddings."""

    def __init__(self, model, texts: dict[str, torch.Tensor], device: torch.device, batch_size: int) -> None:
        self.model, self.texts, self.device, self.batch_size = model, texts, device, batch_size

    def run(self, embeddings: torch.Tensor, jobs: list[DecodeJob]) -> Iterator[tuple[DecodeJob, torch.Tensor]]:
        """Yield ``(job, logits)`` with logits ``(D, H, W)`` float32 on the CPU, for every job."""
        groups: dict[tuple, list[DecodeJob]] = defaultdict(list)
        for job in jobs:
            groups[job.signature].append(job)
        for (has_text, has_box, n_points), group in groups.items():
            for first in range(0, len(group), self.batch_size):
                chunk = group[first:first + self.batch_size]
                views = torch.tensor([job.view_index for job in chunk], device=embeddings.device)
                text = boxes = points = None
                if has_text:
                    text = torch.stack([self.texts[job.text] for job in chunk])
                if has_box:
                    boxes = torch.tensor(np.stack([job.box for job in chunk]), dtype=torch.float32,
                                         device=self.device)
                if n_points:
                    coords = torch.tensor(np.stack([job.points for job in chunk]), dtype=torch.float32,
                                          device=self.device)
                    labels = torch.tensor(np.stack([job.point_labels for job in chunk]), dtype=torch.long,
                                          device=self.device)
                    points = (coords, labels)
                logits = self.model.decode(embeddings.index_select(0, views), text=text, boxes=boxes,
                                           points=points)
                logits = logits[:, 0].float().cpu()
                for job, value in zip(chunk, logits):
                    yield job, value


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


def segment(model, volume: torch.Tensor | np.ndarray, prompts: Sequence[Prompt], mode: str = "zoom",
            overlap: float = 0.5, sw_batch_size: int = 2, decode_batch_size: int = 8,
            device: str | torch.device | None = None, progress: bool = False,
            box_limits: bool = True) -> torch.Tensor:
    """Segment a canonical volume for K prompts.

    Args:
        model: a SegVol (``encode_image``, ``encode_text``, ``decode``, input size ``spatial_size``).
        volume: ``(D, H, W)`` intensities in [0, 1] (facts §6 normalization), canonical axes.
        prompts: K `Prompt`s, coordinates in voxel indices of ``volume``.
        mode: ``zoom`` (zoom-out-zoom-in), ``resize`` (zoom-out only) or ``window`` (plain
            sliding window over the foreground, no global view).
        overlap: window overlap of the zoom-in / window pass.
        sw_batch_size: windows encoded per image-encoder call.
        decode_batch_size: prompts decoded per decoder call.
        device: where the model runs (default: where its parameters are). Stitching stays on CPU.
        progress: show a tqdm bar over windows.
        box_limits: nothing outside a prompt's box is foreground (False: the box is only a hint).

    Returns:
        ``(K, D, H, W)`` float32 logits on the CPU (sigmoid > 0.5 = inside), ``OUTSIDE_LOGIT``
        outside the foreground crop.
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
    if not prompts:
        raise ValueError("segment needs at least one prompt")
    volume = torch.as_tensor(volume)
    if volume.ndim != 3:
        raise ValueError(f"segment needs a (D, H, W) volume, got shape {tuple(volume.shape)}")
    volume = volume.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(volume).all():
        raise ValueError("the volume contains NaN or infinite values")
    for prompt in prompts:
        prompt.check_inside(volume.shape)

    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    window_size = model_input_size(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = _segment(model, volume, list(prompts), mode, overlap, sw_batch_size, decode_batch_size,
                              device, window_size, progress, box_limits)
    finally:
        model.train(was_training)
    if box_limits:
        for k, prompt in enumerate(prompts):
            if prompt.box is not None:
                _limit_to_box(logits[k], prompt.box)
    return logits


def _limit_to_box(target: torch.Tensor, box: np.ndarray) -> None:
    """Set ``target`` (D, H, W) to OUTSIDE_LOGIT outside the inclusive box, in place."""
    for axis in range(3):
        before = [slice(None)] * 3
        before[axis] = slice(0, int(box[axis]))
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


def _segment(model, volume, prompts, mode, overlap, sw_batch_size, decode_batch_size, device, window_size,
             progress, box_limits) -> torch.Tensor:
    decoder = _Decoder(model, _embed_texts(model, prompts, device), device, decode_batch_size)
    crop_box = foreground_box(volume)
    crop_start = crop_box[:3]
    crop_shape = tuple(int(n) for n in crop_box[3:] - crop_box[:3] + 1)
    crop = volume[tuple(slice(int(a), int(b) + 1) for a, b in zip(crop_box[:3], crop_box[3:]))]
    to_crop = VoxelMap.crop(crop_start)
    local = [_into_crop(p, to_crop, crop_shape) for p in prompts]

    logits = torch.full((len(prompts), *volume.shape), OUTSIDE_LOGIT, dtype=torch.float32)
    crop_logits = logits[(slice(None), *(slice(int(a), int(b) + 1) for a, b in zip(crop_box[:3], crop_box[3:])))]

    coarse = None
    if mode in ("zoom", "resize"):
        coarse = _zoom_out(model, decoder, crop, local, window_size, device)
        for k in range(len(prompts)):
            resize_nearest_exact(coarse[k], crop_shape, out=crop_logits[k])
        if mode == "resize":
            return logits

    lattice = window_lattice(crop_shape, window_size, overlap)
    needed: dict[int, list[int]] = defaultdict(list)  # window -> prompts
    for k in range(len(prompts)):
        if mode == "window":
            needed_windows = range(len(lattice))
        else:
            roi = _coarse_roi(crop_logits[k], local[k].box if box_limits else None)
            if roi is None:
                log.info("zoom-out found nothing for '%s'; keeping the coarse result", prompts[k].label)
                continue
            needed_windows = roi_windows(lattice, roi)
        for i in needed_windows:
            needed[i].append(k)

    # Prompts per window first, so that windows no prompt needs are never encoded.
    work: list[tuple[Window, list[DecodeJob]]] = []
    for window_id in sorted(needed):
        window = lattice[window_id]
        to_window = VoxelMap.crop(window.start)
        jobs = []
        for k in needed[window_id]:
            coarse_box = None
            if coarse is not None and local[k].box is None:
                coarse_box = _coarse_box_in_window(coarse[k], crop_shape, window)
            job = _window_job(local[k], to_window, window_size, 0, k, coarse_box, use_coarse=coarse is not None)
            if job is not None:
                jobs.append(job)
        if jobs:
            work.append((window, jobs))

    stitchers: dict[int, LogitStitcher] = {}
    bar = None
    if progress:
        from segvol.progress import progress_bar

        bar = progress_bar(total=len(work), desc="windows", unit="window", leave=False)
    for first in range(0, len(work), sw_batch_size):
        batch = work[first:first + sw_batch_size]
        jobs = []
        for view_index, (_, window_jobs) in enumerate(batch):
            for job in window_jobs:
                job.view_index = view_index
                jobs.append(job)
        patches = torch.stack([extract_window(crop, window) for window, _ in batch])[:, None].to(device)
        embeddings = model.encode_image(patches)
        for job, window_logits in decoder.run(embeddings, jobs):
            if job.prompt_index not in stitchers:
                stitchers[job.prompt_index] = LogitStitcher(crop_logits[job.prompt_index])
            stitchers[job.prompt_index].add(batch[job.view_index][0], window_logits)
        del embeddings, patches
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    for stitcher in stitchers.values():
        stitcher.finish()
    return logits


def _zoom_out(model, decoder: _Decoder, crop: torch.Tensor, prompts: list[Prompt], window_size, device):
    """Zoom-out pass: ``(K, *window_size)`` coarse logits (CPU) of the crop resized to the model size."""
    to_zoom = VoxelMap.resize(crop.shape, window_size)
    zoomed = resize_nearest_exact(crop, window_size)
    jobs = []
    for k, prompt in enumerate(prompts):
        mapped = prompt.mapped(to_zoom, window_size)
        jobs.append(DecodeJob(0, k, mapped.text, mapped.box, mapped.points, mapped.point_labels))
    embedding = model.encode_image(zoomed[None, None].to(device))
    coarse = torch.empty((len(prompts), *window_size), dtype=torch.float32)
    for job, value in decoder.run(embedding, jobs):
        coarse[job.prompt_index] = value
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
