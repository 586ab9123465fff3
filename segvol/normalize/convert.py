"""Raw dataset folder (dataset.json + image files) -> one normalized Zarr v3 store.

Layout and attributes follow the "Zarr store contract" of CONTRIBUTING.md. The store is built in
a temporary sibling and renamed into place at the end, so a bad case (named in the error) leaves
nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from segvol.io.intensity import foreground_statistics
from segvol.io.store import (
    FORMAT_VERSION,
    LABEL_IMAGE,
    NGFF_VERSION,
    VolumeStatistics,
    checked_codecs,
    integrity_record,
    ngff_image,
    spatial_dimension_names,
    storage_dtype,
)
from segvol.vocabulary import canonical_name

log = logging.getLogger(__name__)

ROLES = ("train", "external", "unlabelled")
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Past this label id, per-id bounding boxes and lookup tables get large; np.isin is used instead.
MAX_LOOKUP_LABEL = 1 << 16


# ----------------------------------------------------------------------------- dataset.json


def load_dataset(raw: Path) -> dict:
    """Read and check `raw/dataset.json`; categories are merged under their canonical names.

    Returns {"name", "role", "modality", "categories": {canonical: sorted label ids},
    "cases": [{"id", "image": Path, "label": Path | None}] sorted by id}.
    """
    manifest = raw / "dataset.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: dataset description not found")
    try:
        spec = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest}: not valid JSON ({error})") from error
    if not isinstance(spec, dict):
        raise ValueError(f"{manifest}: expected a JSON object")
    for key in ("name", "role", "cases"):
        if key not in spec:
            raise ValueError(f"{manifest}: missing key '{key}'")
    role = spec["role"]
    if role not in ROLES:
        raise ValueError(f"{manifest}: role must be one of {', '.join(ROLES)}, got {role!r}")

    categories: dict[str, set[int]] = {}
    raw_categories = spec.get("categories") or {}
    if not isinstance(raw_categories, dict):
        raise ValueError(f"{manifest}: 'categories' must map a name to a list of label ids")
    for name, values in raw_categories.items():
        values = [values] if isinstance(values, int) else values
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            raise ValueError(f"{manifest}: category {name!r} needs a non-empty list of positive label ids")
        # Two spellings of one structure (e.g. "gall_bladder" and "gallbladder") share a channel.
        categories.setdefault(canonical_name(name), set()).update(values)
    if role != "unlabelled" and not categories:
        raise ValueError(f"{manifest}: a {role} dataset needs 'categories'")
    if role == "unlabelled":
        categories = {}

    cases, seen = [], set()
    if not isinstance(spec["cases"], list) or not spec["cases"]:
        raise ValueError(f"{manifest}: 'cases' must be a non-empty list")
    for entry in spec["cases"]:
        case_id = str(entry.get("id", "")) if isinstance(entry, dict) else ""
        if not CASE_ID.match(case_id):
            raise ValueError(f"{manifest}: bad case id {case_id!r} (letters, digits, '_', '-', '.')")
        if case_id in seen:
            raise ValueError(f"{manifest}: case id {case_id!r} appears twice")
        seen.add(case_id)
        if not entry.get("image"):
            raise ValueError(f"{manifest}: case {case_id} has no 'image'")
        image = raw / entry["image"]
        label = raw / entry["label"] if entry.get("label") and role != "unlabelled" else None
        if role != "unlabelled" and label is None:
            raise ValueError(f"{manifest}: case {case_id} of a {role} dataset has no 'label'")
        for path in (image, label):
            if path is not None and not path.exists():
                raise FileNotFoundError(f"{path}: file of case {case_id} not found")
        cases.append({"id": case_id, "image": image, "label": label})
    cases.sort(key=lambda case: case["id"])
    return {
        "name": str(spec["name"]),
        "role": role,
        "modality": str(spec.get("modality", "CT")),
        "categories": {name: sorted(values) for name, values in categories.items()},
        "cases": cases,
    }


# ----------------------------------------------------------------------------- split, chunks


def split_cases(case_ids: list[str], role: str, seed: int, test_fraction: float) -> dict:
    """Deterministic split: sorted ids permuted by numpy's default_rng(seed).

    train: round(n * test_fraction) cases to "test" (at least 1 and at most n-1 when
    0 < test_fraction < 1 and n >= 2); external: every case in "test"; unlabelled: every case
    in "train".
    """
    ids = sorted(case_ids)
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if role == "external":
        train, test = [], ids
    elif role == "unlabelled":
        train, test = ids, []
    else:
        n = len(ids)
        n_test = int(math.floor(n * test_fraction + 0.5))
        if 0.0 < test_fraction < 1.0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        test_set = {ids[i] for i in order[:n_test]}
        train = [case for case in ids if case not in test_set]
        test = [case for case in ids if case in test_set]
    return {"train": train, "test": test, "seed": int(seed), "test_fraction": float(test_fraction)}


def fit_chunks(shape: tuple[int, ...], chunks: list[int], shards: list[int]) -> tuple[tuple, tuple]:
    """Chunk and shard shapes for `shape`: clipped to it, shards a whole number of chunks."""
    if len(chunks) != len(shape) or len(shards) != len(shape):
        raise ValueError(f"chunks {chunks} / shards {shards} need {len(shape)} entries")
    if min(chunks) < 1 or min(shards) < 1:
        raise ValueError(f"chunks {chunks} and shards {shards} must be positive")
    fitted_chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    fitted_shards = tuple(math.ceil(min(s, n) / c) * c for s, n, c in zip(shards, shape, fitted_chunks))
    return fitted_chunks, fitted_shards


# ----------------------------------------------------------------------------- store writing


def _label_boxes(labelmap: np.ndarray) -> list | None:
    """Bounding box (tuple of slices, or None) of every label id, from one pass; None when the
    ids are too large for that."""
    from scipy import ndimage

    top = int(labelmap.max()) if labelmap.size else 0
    if top >= MAX_LOOKUP_LABEL:
        return None
    return ndimage.find_objects(labelmap, max_label=top)  # entry i: box of label id i + 1


def _category_mask(labelmap: np.ndarray, values: list[int], boxes: list | None):
    """(region, uint8 mask on that region) of the voxels whose id is in `values`.

    Only the union of the ids' bounding boxes is computed and written, so a dataset with many
    small structures does not pay a full-volume pass and write per category. (None, None) when
    no voxel has one of the ids.
    """
    if boxes is None:
        mask = np.isin(labelmap, values).astype(np.uint8)
        return tuple(slice(0, n) for n in labelmap.shape), mask
    found = [boxes[value - 1] for value in values if value <= len(boxes) and boxes[value - 1] is not None]
    if not found:
        return None, None
    region = tuple(
        slice(min(box[axis].start for box in found), max(box[axis].stop for box in found))
        for axis in range(labelmap.ndim)
    )
    lookup = np.zeros(len(boxes) + 1, dtype=np.uint8)
    lookup[[value for value in values if value <= len(boxes)]] = 1
    return region, lookup[labelmap[region]]


def write_case(group, image, labelmap, categories: dict[str, list[int]], settings: dict) -> dict:
    """Write one case's `image` (and `labels`) into zarr `group`; returns the case attrs.

    The image keeps its source intensities (int16 HU for CT, see `store.storage_dtype`); the
    normalization parameters go into the attrs and `segvol.io.store` applies them on read.
    """
    stats = foreground_statistics(image.array)
    spacing = image.geometry()["spacing"]
    group_dir = Path(group.store.root) / group.path
    codecs = checked_codecs(settings["compression_level"])
    chunks, shards = fit_chunks(image.shape, settings["chunks"], settings["shards"])
    dtype = storage_dtype(image.array)
    array = group.create_array(
        "image",
        shape=image.shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=codecs,
        fill_value=0,
        dimension_names=spatial_dimension_names(),
    )
    image_statistics = VolumeStatistics(1)
    for start in range(0, image.shape[0], shards[0]):  # one slab of whole shards at a time
        slab = image.array[start : start + shards[0]].astype(dtype, copy=False)
        image_statistics.add(0, slab)
        array[start : start + slab.shape[0]] = slab
    integrity = {"image": integrity_record(group_dir, "image", array, image_statistics)}

    present = []
    if labelmap is not None:
        names = list(categories)
        label_path = f"labels/{LABEL_IMAGE}/0"
        holder = group.create_group("labels")
        holder.attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABEL_IMAGE]}
        label_image = holder.create_group(LABEL_IMAGE)
        label_image.attrs["ome"] = {
            **ngff_image(LABEL_IMAGE, "0", spacing, channel=True),
            "image-label": {"source": {"image": "../../"}},
        }
        labels = label_image.create_array(
            "0",
            shape=(len(names), *labelmap.shape),
            dtype="uint8",
            chunks=(1, *chunks),
            shards=(1, *shards),
            compressors=codecs,
            fill_value=0,
            dimension_names=spatial_dimension_names(channel=True),
        )
        label_statistics = VolumeStatistics(len(names))
        boxes = _label_boxes(labelmap)
        for channel, name in enumerate(names):
            region, mask = _category_mask(labelmap, categories[name], boxes)
            if mask is not None and mask.any():
                present.append(name)
                labels[(channel, *region)] = mask
                label_statistics.add(channel, mask)
                if mask.size < labelmap.size:  # the rest of the channel is fill value 0
                    label_statistics.add(channel, np.zeros(1, np.uint8))
        integrity["labels"] = integrity_record(group_dir, label_path, labels, label_statistics)
    attrs = image.geometry()
    attrs["categories_present"] = present
    attrs["intensity"] = stats
    attrs["integrity"] = integrity
    attrs["ome"] = ngff_image(group.basename, "image", spacing)
    return attrs


def build_store(raw: str | Path, out: str | Path, seed: int, settings: dict, progress: bool = True) -> Path:
    """Convert the dataset folder `raw` into the Zarr store `out` (written atomically)."""
    dataset = load_dataset(Path(raw))
    case_ids = [case["id"] for case in dataset["cases"]]
    split = split_cases(case_ids, dataset["role"], seed, settings["test_fraction"])
    return write_store(dataset, out, split, settings, progress=progress)


def write_store(
    dataset: dict, out: str | Path, split: dict, settings: dict, progress: bool = True, strict_labels: bool = False
) -> Path:
    """Write `dataset` (as `load_dataset` returns it) with its `split` as the Zarr store `out`, atomically.

    `strict_labels`: a label id that belongs to no category is an error naming the file (by default
    such voxels are background, as when a registry keeps only some of a dataset's labels).
    """
    import zarr

    from segvol.io import read_image, read_label
    from segvol.io.atomic import atomic_path
    from segvol.progress import progress_bar

    out = Path(out)
    case_ids = [case["id"] for case in dataset["cases"]]
    categories = dataset["categories"]
    known_ids = {0, *(value for values in categories.values() for value in values)}
    with atomic_path(out) as temporary:
        root = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        root.attrs.update(
            {
                "dataset": dataset["name"],
                "role": dataset["role"],
                "modality": dataset["modality"],
                "categories": list(categories),
                "category_label_ids": categories,
                "cases": case_ids,
                "split": split,
                "format_version": FORMAT_VERSION,
                "intensity": "stored as source intensities (HU); SegVol's foreground normalization "
                "(docs/method.md#intensity-normalization) then min-max to [0, 1] is applied on read "
                "(parameters in each case's 'intensity')",
                "orientation": "canonical (D, H, W) = (S, A, R): RAS+ closest axes, reversed",
            }
        )
        for case in progress_bar(
            dataset["cases"], desc=f"normalize {dataset['name']}", unit="case", disable=not progress
        ):
            try:
                image = read_image(case["image"])
                labelmap = None
                if case["label"] is not None:
                    labelmap = read_label(case["label"], image).array
                    if labelmap.size and int(labelmap.min()) < 0:
                        raise ValueError(f"{case['label']}: label map holds negative ids")
                    if strict_labels:
                        unknown = sorted(set(np.unique(labelmap).tolist()) - known_ids)
                        if unknown:
                            raise ValueError(
                                f"{case['label']}: label id(s) {unknown} belong to no category "
                                f"(known ids: {sorted(known_ids)})"
                            )
                group = root.create_group(case["id"])
                group.attrs.update(write_case(group, image, labelmap, categories, settings))
            except (ValueError, FileNotFoundError) as error:
                raise type(error)(f"case {case['id']} ({case['image']}): {error}") from error
            log.info("%s: %s %s", case["id"], image.shape, image.array.dtype)
    return out
