"""Fine-tuning samples: views of labelled cases with their prompts and pseudo-label targets.

Every sample is fully prepared in the dataset (so DataLoader workers do the CPU work):
- view ("multi-size training", docs/method.md#training): whole case resized to the model input size with
  probability `resize_probability`, else a native-resolution crop centred on a foreground voxel
  (2 of 3 crops) or on any voxel (1 of 3);
- flips (p 0.2 per axis) and a small intensity scale/shift (p 0.2 each, +-0.1);
- per category: soft target, presence flag, 1 + U{0..10} positive + U{0..10} negative points
  padded to 21, tight box (optionally jittered);
- per pseudo pass: a random FH segment as target, prompted by points (even passes) or a box
  (odd passes, target = segment and the segments >90 % inside its box).

Batches hold one dataset each (its categories are the batch's categories). Which cases form a
batch and every random choice of a sample are functions of (seed, micro-batch, slot), so a
resumed run or a different split over DDP ranks sees exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segvol.finetune.prompts import POINTS_PER_PROMPT, sample_points, tight_box
from segvol.training.volumes import (
    CaseRef,
    LazyGroup,
    StoreReader,
    View,
    check_finite,
    crop_start,
    read_image,
    read_window,
    resize_nearest,
    resize_soft,
)

FOREGROUND_SAMPLES = 256  # cached foreground voxels per case for positive crop centres


@dataclass(frozen=True)
class SampleKey:
    """Which case a sample shows and where its randomness comes from."""

    micro_batch: int
    slot: int
    case: int  # index into StoreReader.cases


def store_name(path: str | Path) -> str:
    name = Path(path).name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def match_pseudo(zarr_paths: Sequence[str], pseudo_paths: Sequence[str]) -> list[str | None]:
    """The pseudo store of each dataset store (matched by store name), None where absent."""
    by_name = {store_name(p): str(p) for p in pseudo_paths}
    unknown = sorted(set(by_name) - {store_name(p) for p in zarr_paths})
    if unknown:
        raise ValueError(f"pseudo store(s) without a matching --zarr store: {', '.join(unknown)}")
    return [by_name.get(store_name(p)) for p in zarr_paths]


class FinetuneSamples(Dataset):
    """Map-style dataset indexed by `SampleKey`; returns a dict of tensors (see module doc)."""

    def __init__(
        self,
        zarr_paths: Sequence[str],
        pseudo_paths: Sequence[str] = (),
        *,
        spatial_size: Sequence[int],
        seed: int,
        settings: dict,
    ):
        self.reader = StoreReader(zarr_paths, split="train")
        pseudo = match_pseudo(zarr_paths, pseudo_paths)
        self.pseudo_stores = [LazyGroup(p) if p else None for p in pseudo]
        self.categories: list[list[str]] = []
        for path, attrs in zip(self.reader.paths, self.reader.attrs):
            names = attrs.get("categories")
            if not names:
                raise ValueError(f"{path}: a fine-tuning store needs a non-empty 'categories' attr")
            self.categories.append(list(names))
        for ref in self.reader.cases:
            group = self.reader.group(ref)
            if "labels" not in group:
                raise ValueError(f"{self.reader.paths[ref.store]}/{ref.case}: no 'labels' array (unlabelled store?)")
            shape = tuple(group["labels"].shape)
            expected = (len(self.categories[ref.store]), *ref.shape)
            if shape != expected:
                raise ValueError(
                    f"{self.reader.paths[ref.store]}/{ref.case}/labels: shape {shape} does not match "
                    f"the image grid and categories {expected}"
                )
            store = self.pseudo_stores[ref.store]
            if store is not None:
                group = store.get()
                if ref.case not in group or "pseudo" not in group[ref.case]:
                    raise ValueError(f"{store.path}: case '{ref.case}' has no 'pseudo' array")
                shape = tuple(group[ref.case]["pseudo"].shape)
                if shape != ref.shape:
                    raise ValueError(
                        f"{store.path}/{ref.case}/pseudo: grid {shape} differs from the image grid {ref.shape}"
                    )
        # handles opened while checking belong to this process only (workers reopen lazily)
        self.reader._groups, self.reader._pid = [], None
        for store in self.pseudo_stores:
            if store is not None:
                store._group, store._pid = None, None
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.seed = int(seed)
        self.resize_probability = float(settings["resize_probability"])
        self.pseudo_passes = int(settings["pseudo_passes"]) if settings["pseudo_weight"] > 0 else 0
        self.box_jitter = int(settings.get("box_jitter", 0))
        self._foreground: dict[int, np.ndarray] = {}
        self._resized: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.reader)

    def cases_of_store(self, store: int) -> list[int]:
        return [i for i, ref in enumerate(self.reader.cases) if ref.store == store]

    # -- views ----------------------------------------------------------------------------------

    def _foreground_voxels(self, index: int) -> np.ndarray:
        """Up to FOREGROUND_SAMPLES voxels of any category (cached per worker process)."""
        if index not in self._foreground:
            ref = self.reader.cases[index]
            labels = np.asarray(self.reader.group(ref)["labels"][...])
            voxels = np.argwhere(labels.any(axis=0))
            if len(voxels) > FOREGROUND_SAMPLES:
                pick = np.random.default_rng([self.seed, 5, index]).choice(
                    len(voxels), FOREGROUND_SAMPLES, replace=False
                )
                voxels = voxels[np.sort(pick)]
            self._foreground[index] = voxels
        return self._foreground[index]

    def _view(self, index: int, rng: np.random.Generator) -> View:
        ref = self.reader.cases[index]
        if rng.random() < self.resize_probability:
            return View("resize")
        centre = [int(rng.integers(s)) for s in ref.shape]
        if rng.random() < 2 / 3:
            voxels = self._foreground_voxels(index)
            if len(voxels):
                centre = [int(v) for v in voxels[rng.integers(len(voxels))]]
        return View("crop", crop_start(ref.shape, self.spatial_size, centre))

    def _labels(self, ref: CaseRef, view: View) -> torch.Tensor:
        array = self.reader.group(ref)["labels"]
        if view.mode == "resize":
            return resize_soft(torch.from_numpy(np.asarray(array[...])), self.spatial_size)
        return torch.from_numpy(read_window(array, view.start, self.spatial_size, leading=1)).float()

    def _pseudo(self, ref: CaseRef, view: View) -> torch.Tensor | None:
        store = self.pseudo_stores[ref.store]
        if store is None or self.pseudo_passes == 0:
            return None
        array = store.get()[ref.case]["pseudo"]
        if view.mode == "resize":
            return resize_nearest(torch.from_numpy(np.asarray(array[...]).astype(np.int32)), self.spatial_size)
        return torch.from_numpy(read_window(array, view.start, self.spatial_size).astype(np.int32))

    # -- one sample -----------------------------------------------------------------------------

    def _read_view(self, index: int, view: View) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image, labels, pseudo) of a view. A case's `resize` view is the same every time it is drawn, so
        it is read and resized once per process and kept (~2 MB per case); nothing modifies it in place."""
        if view.mode == "resize" and index in self._resized:
            return self._resized[index]
        ref = self.reader.cases[index]
        image = read_image(self.reader, ref, view, self.spatial_size)
        check_finite(image, self.reader, ref)
        read = (image, self._labels(ref, view), self._pseudo(ref, view))
        if view.mode == "resize":
            self._resized[index] = read
        return read

    def __getitem__(self, key: SampleKey) -> dict:
        rng = np.random.default_rng([self.seed, 4, key.micro_batch, key.slot])
        ref = self.reader.cases[key.case]
        view = self._view(key.case, rng)
        image, labels, pseudo = self._read_view(key.case, view)

        flips = [axis for axis in range(3) if rng.random() < 0.2]
        if flips:
            image = image.flip([a + 1 for a in flips])
            labels = labels.flip([a + 1 for a in flips])
            if pseudo is not None:
                pseudo = pseudo.flip(flips)
        if rng.random() < 0.2:
            image = image * (1.0 + rng.uniform(-0.1, 0.1))
        if rng.random() < 0.2:
            image = image + rng.uniform(-0.1, 0.1)

        k = labels.shape[0]
        points = torch.full((k, POINTS_PER_PROMPT, 3), -1.0)
        point_labels = torch.full((k, POINTS_PER_PROMPT), -1, dtype=torch.long)
        boxes = torch.full((k, 6), -1.0)
        present = torch.zeros(k, dtype=torch.bool)
        for c in range(k):
            if not bool((labels[c] > 0.5).any()):
                continue  # absent category: its loss is masked out, no empty prompt is fed
            present[c] = True
            points[c], point_labels[c] = sample_points(
                labels[c], rng, int(rng.integers(0, 11)), int(rng.integers(0, 11))
            )
            boxes[c] = tight_box(labels[c], jitter=self.box_jitter, rng=rng)

        sample = {
            "image": image.float().contiguous(),
            "labels": labels.to(torch.float16).contiguous(),
            "present": present,
            "points": points,
            "point_labels": point_labels,
            "boxes": boxes,
            "store": torch.tensor(ref.store),
        }
        sample.update(self._pseudo_prompts(pseudo, rng))
        return sample

    def _pseudo_prompts(self, pseudo: torch.Tensor | None, rng: np.random.Generator) -> dict:
        passes = self.pseudo_passes
        size = self.spatial_size
        out = {
            "pseudo_targets": torch.zeros((passes, *size), dtype=torch.uint8),
            "pseudo_valid": torch.zeros(passes, dtype=torch.bool),
            "pseudo_points": torch.full((passes, POINTS_PER_PROMPT, 3), -1.0),
            "pseudo_point_labels": torch.full((passes, POINTS_PER_PROMPT), -1, dtype=torch.long),
            "pseudo_boxes": torch.full((passes, 6), -1.0),
        }
        if pseudo is None or passes == 0:
            return out
        from segvol.pseudo.sampling import box_target, pick_segment

        ids = pseudo.numpy()
        for p in range(passes):
            segment = pick_segment(ids, rng)
            if segment <= 0:
                continue
            if p % 2 == 0:  # point pass: 1 + U{4..10} positives, U{0..10} negatives
                target = torch.from_numpy(ids == segment)
                out["pseudo_points"][p], out["pseudo_point_labels"][p] = sample_points(
                    target.float(), rng, int(rng.integers(4, 11)), int(rng.integers(0, 11))
                )
            else:  # box pass: target = segment + segments >90 % inside its tight box
                box, covered = box_target(ids, segment)
                target = torch.from_numpy(np.asarray(covered, dtype=bool))
                out["pseudo_boxes"][p] = torch.from_numpy(np.asarray(box, dtype=np.float32))
            out["pseudo_targets"][p] = target.to(torch.uint8)
            out["pseudo_valid"][p] = True
        return out


class DatasetBatches(Sampler):
    """Micro-batches of `SampleKey`s for one rank; every global micro-batch is one dataset's.

    Epoch e: each dataset's cases are shuffled and cut into global batches (remainder dropped; a
    dataset smaller than one global batch fills one by drawing with replacement); all batches
    are then shuffled. Micro-batch m is batch (m mod per_epoch) of epoch (m div per_epoch).
    """

    def __init__(
        self, dataset: FinetuneSamples, *, batch_size: int, rank: int, world_size: int, start: int, stop: int, seed: int
    ):
        self.dataset = dataset
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start, self.stop, self.seed = start, stop, seed
        self.stores = sorted({ref.store for ref in dataset.reader.cases})
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        global_batch = self.batch_size * self.world_size
        batches: list[list[int]] = []
        for store in self.stores:
            cases = np.asarray(self.dataset.cases_of_store(store))
            rng = np.random.default_rng([self.seed, 2, epoch, store])
            if len(cases) < global_batch:
                batches.append(list(cases[rng.choice(len(cases), global_batch, replace=True)]))
                continue
            order = cases[rng.permutation(len(cases))]
            for first in range(0, len(order) - global_batch + 1, global_batch):
                batches.append(list(order[first : first + global_batch]))
        order = np.random.default_rng([self.seed, 3, epoch]).permutation(len(batches))
        batches = [batches[i] for i in order]
        self._epoch_cache = (epoch, batches)
        return batches

    def global_batch(self, micro_batch: int) -> list[int]:
        per_epoch = len(self._epoch(0))
        return self._epoch(micro_batch // per_epoch)[micro_batch % per_epoch]

    def __iter__(self):
        for m in range(self.start, self.stop):
            cases = self.global_batch(m)
            first = self.rank * self.batch_size
            yield [SampleKey(m, slot, int(cases[slot])) for slot in range(first, first + self.batch_size)]

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)
