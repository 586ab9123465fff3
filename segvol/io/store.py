"""Dataset and pseudo-label Zarr stores: the one checked read path, plus the writing helpers
that record what the reader checks (CONTRIBUTING.md, "Zarr store contract").

    store = open_store("data/zarr/abdomen_a.zarr")
    store.attrs["categories"], store.split["train"]
    case = store.case("case_000")          # a CheckedCase, opened in the calling process
    image = case["image"][:]               # float32 (D, H, W) in [0, 1], normalized on read
    labels = case["labels"][:]             # uint8 (C, D, H, W)
    store.case_attrs("case_000")["spacing"]

Why our own checks on top of zarr: zarr reads a chunk that is not there as `fill_value` by design
(a deleted shard is indistinguishable from an empty one), and a checksum codec only covers the
bytes of chunks that exist. So a store of format 2 carries three layers:

* every chunk and every shard index ends in a CRC32C (zarr's `crc32c` codec, after compression):
  a flipped byte fails the decode of that chunk, before the decompressor sees it;
* the case attrs' `integrity` record lists, per array, the chunk files that were written with
  their sizes, its shape and dtype: opening a case checks that exactly those files exist with
  those sizes (a lost, emptied or truncated chunk) and that the array metadata still says the
  same;
* the record also holds per leading index (the whole array for (D, H, W), each channel for
  (C, D, H, W)) the min, max and sum of the stored values: every read that covers a whole volume
  (or whole channels) compares them, which also catches a chunk swapped for another valid one.

Each failure raises `StoreCorruptError` (a ValueError, so the CLI prints it as one line) naming
the store, the case and the array. Stores of format 1 (float32 images, written before these
checks) are still read, unchecked; re-running `segvol normalize` / `segvol pseudo` upgrades them.

Images are stored as the source intensities (int16 HU for CT) and the foreground normalization
(`segvol.io.intensity`, parameters in the case attrs' `intensity`) is applied on read;
the result is bit-identical to normalizing before writing.

Metadata is read from the `zarr.json` files with plain `json`, so opening a store starts no zarr
machinery. Case arrays are opened lazily and only ever reused inside the process that opened
them: a forked DataLoader worker opens its own (zarr's event-loop thread does not survive fork),
and pickling the store drops them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
NGFF_VERSION = "0.5"
# Logical array name -> path inside the case group, for stores written before the `integrity`
# record named the paths.
LEGACY_ARRAYS = ("image", "labels", "pseudo")
LABEL_IMAGE = "categories"  # the NGFF label image holding the (C, D, H, W) category masks


class StoreCorruptError(ValueError):
    """A store's content disagrees with what was recorded when it was written."""


# ----------------------------------------------------------------------------- writing helpers


def checked_codecs(compression_level: int) -> tuple:
    """Blosc zstd with byte shuffle, then CRC32C: the checksum covers the compressed bytes, so
    corruption is caught before decompression.

    Byte shuffle suits int16 HU (level 1, image bytes: real 3 mm abdomen CT 1.60 MB shuffled vs
    1.97 MB unshuffled; 512x512x200 phantom 49.5 vs 60.2 MB, same speed); for uint8 masks it is a
    no-op.
    """
    import zarr

    blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=compression_level, shuffle=zarr.codecs.BloscShuffle.shuffle)
    return (blosc, zarr.codecs.Crc32cCodec())


def storage_dtype(volume: np.ndarray) -> np.dtype:
    """The narrowest of int16, int32, float32 that holds every voxel so that its float32 value
    (what the normalization computes with) is unchanged: int16 for CT in HU."""
    if np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool:
        low, high = (int(volume.min()), int(volume.max())) if volume.size else (0, 0)
    else:
        finite = bool(np.isfinite(volume).all())
        integral = finite and all(np.array_equal(block, np.round(block)) for block in _slabs(volume))
        if not integral:
            return np.dtype(np.float32)
        low, high = float(volume.min()), float(volume.max())
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def _slabs(volume: np.ndarray, voxels: int = 1 << 22):
    step = max(1, voxels // max(1, int(np.prod(volume.shape[1:]))))
    for start in range(0, volume.shape[0], step):
        yield volume[start : start + step]


class VolumeStatistics:
    """min, max and sum of stored values per leading index, accumulated slab by slab."""

    def __init__(self, leading: int):
        self.minimum = [None] * leading
        self.maximum = [None] * leading
        self.total = [0] * leading

    def add(self, index: int, values: np.ndarray) -> None:
        if values.size == 0:
            return
        integer = np.issubdtype(values.dtype, np.integer)
        low, high = (int(values.min()), int(values.max())) if integer else (float(values.min()), float(values.max()))
        self.minimum[index] = low if self.minimum[index] is None else min(self.minimum[index], low)
        self.maximum[index] = high if self.maximum[index] is None else max(self.maximum[index], high)
        self.total[index] += int(values.sum(dtype=np.int64)) if integer else float(values.sum(dtype=np.float64))

    def record(self) -> dict:
        return {"min": self.minimum, "max": self.maximum, "sum": self.total}


def stored_chunks(array_dir: Path) -> dict[str, int]:
    """Key ("0/1/0") -> size in bytes of every chunk (or shard) file under a Zarr v3 array folder."""
    root = array_dir / "c"
    chunks = {}
    for folder, _, files in os.walk(root):
        prefix = os.path.relpath(folder, root)
        for name in files:
            key = name if prefix == "." else f"{prefix}/{name}".replace(os.sep, "/")
            chunks[key] = os.path.getsize(os.path.join(folder, name))
    return dict(sorted(chunks.items()))


def integrity_record(group_dir: Path, path: str, array, statistics: VolumeStatistics) -> dict:
    """What the reader checks for one written array (`path` relative to the case group)."""
    return {
        "path": path,
        "shape": [int(n) for n in array.shape],
        "dtype": str(np.dtype(array.dtype)),
        "chunks": stored_chunks(group_dir / path),
        **statistics.record(),
    }


def ngff_image(name: str, path: str, spacing, channel: bool = False) -> dict:
    """OME-Zarr (NGFF 0.5) `multiscales` of one resolution level: axes in mm, scale = spacing."""
    axes = [{"name": axis, "type": "space", "unit": "millimeter"} for axis in ("z", "y", "x")]
    scale = [float(s) for s in spacing]
    if channel:
        axes = [{"name": "c", "type": "channel"}, *axes]
        scale = [1.0, *scale]
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ],
    }


def spatial_dimension_names(channel: bool = False) -> tuple[str, ...]:
    """Zarr `dimension_names` matching the NGFF axes (D, H, W) = (z, y, x)."""
    return ("c", "z", "y", "x") if channel else ("z", "y", "x")


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (no zarr.json)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreCorruptError(f"{path}: corrupt {what} metadata ({error}); re-run the stage that wrote it") from error
    if not isinstance(document, dict):
        raise StoreCorruptError(f"{path}: corrupt {what} metadata (not a JSON object)")
    return document


def _axis_ranges(selection, shape: tuple[int, ...]) -> list | None:
    """Per axis: the indices a basic selection reads (a range, or an int for a dropped axis);
    None for selections the statistics check does not interpret (fancy indexing)."""
    if not isinstance(selection, tuple):
        selection = (selection,)
    if sum(item is Ellipsis for item in selection) > 1:
        return None
    if Ellipsis in selection:
        at = selection.index(Ellipsis)
        fill = len(shape) - (len(selection) - 1)
        selection = selection[:at] + (slice(None),) * fill + selection[at + 1 :]
    selection = selection + (slice(None),) * (len(shape) - len(selection))
    if len(selection) != len(shape):
        return None
    axes = []
    for item, n in zip(selection, shape):
        if isinstance(item, slice):
            axes.append(range(*item.indices(n)))
        elif isinstance(item, (int, np.integer)):
            axes.append(int(item) % n if -n <= item < n else None)
            if axes[-1] is None:
                return None
        else:
            return None
    return axes


class CheckedArray:
    """One array of a case, read through the integrity checks (and the normalization of images).

    Supports what the consumers use: `.shape`, `.dtype` (of the values returned), `.chunks`,
    `.ndim` and basic indexing (ints, slices, Ellipsis).
    """

    def __init__(self, case: CheckedCase, name: str, array, record: dict | None, transform=None):
        self._case, self.name, self._array = case, name, array
        self._record, self._transform = record, transform

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self._transform is not None else np.dtype(self._array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks)

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection) -> np.ndarray:
        try:
            values = np.asarray(self._array[selection])
        except (ValueError, RuntimeError, OSError) as error:  # checksum, decompression, I/O
            raise self._case.corrupt(self.name, f"unreadable chunk ({error})") from error
        if self._record is not None:
            self._check_statistics(selection, values)
        if self._transform is not None:
            values = self._transform(values)
        return values

    def _check_statistics(self, selection, values: np.ndarray) -> None:
        """Compare the recorded statistics of every whole volume (trailing three axes) read."""
        axes = _axis_ranges(selection, self.shape)
        if axes is None or any(
            not isinstance(axis, range) or axis.step != 1 or len(axis) != n
            for axis, n in zip(axes[-3:], self.shape[-3:])
        ):
            return
        leading = axes[:-3]
        if not leading:
            self._compare(0, values)
            return
        channel = leading[0]
        if isinstance(channel, int):
            self._compare(channel, values)
        else:
            for position, index in enumerate(channel):
                self._compare(index, values[position])

    def _compare(self, index: int, volume: np.ndarray) -> None:
        record = self._record
        if record["min"][index] is None:  # nothing was written: all fill value
            if volume.size and volume.any():
                raise self._case.corrupt(self.name, f"volume {index} should be empty but is not")
            return
        integer = np.issubdtype(volume.dtype, np.integer)
        total = int(volume.sum(dtype=np.int64)) if integer else float(volume.sum(dtype=np.float64))
        found = (volume.min().item(), volume.max().item(), total)
        expected = (record["min"][index], record["max"][index], record["sum"][index])
        same = found[:2] == tuple(expected[:2]) and (
            total == expected[2] if integer else math.isclose(total, expected[2], rel_tol=1e-9, abs_tol=1e-6)
        )
        if not same:
            where = f"volume {index} " if self.ndim > 3 else ""
            raise self._case.corrupt(
                self.name, f"{where}min/max/sum {found} differ from the recorded {tuple(expected)}"
            )


class CheckedCase:
    """The arrays of one case group, by logical name ("image", "labels", "pseudo")."""

    def __init__(self, store: CheckedStore, case_id: str):
        import zarr

        self.store, self.id = store, case_id
        self.path = store.path / case_id
        self.attrs = store.case_attrs(case_id)
        records = self.attrs.get("integrity")
        if store.format_version >= 2:
            if not isinstance(records, dict):
                raise self.corrupt("*", "no 'integrity' record in the case attrs")
            paths = {name: record["path"] for name, record in records.items()}
        else:
            records = None
            paths = {name: name for name in LEGACY_ARRAYS if (self.path / name / "zarr.json").is_file()}
        self._records = records or {}
        self._arrays: dict = {}
        for name, path in paths.items():
            metadata = self.path / path / "zarr.json"
            _read_json(metadata, f"array '{name}' of case '{case_id}' in store {store.path}")
            try:
                array = zarr.open_array(str(self.path / path), mode="r")
            except Exception as error:  # zarr raises several types for malformed array metadata
                raise self.corrupt(name, f"unreadable {metadata} ({error})") from error
            if records is not None:
                self._check_layout(name, array, records[name])
            self._arrays[name] = array

    def corrupt(self, array: str, problem: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{self.store.path}: case '{self.id}', array '{array}': {problem}; "
            "the store is corrupt, re-run the stage that wrote it"
        )

    def _check_layout(self, name: str, array, record: dict) -> None:
        if [int(n) for n in array.shape] != record["shape"] or str(np.dtype(array.dtype)) != record["dtype"]:
            raise self.corrupt(
                name,
                f"shape/dtype {list(array.shape)} {array.dtype} differ from the recorded "
                f"{record['shape']} {record['dtype']}",
            )
        found = stored_chunks(self.path / record["path"])
        missing = [key for key in record["chunks"] if key not in found]
        if missing:
            raise self.corrupt(name, f"{len(missing)} chunk file(s) missing, e.g. {record['path']}/c/{missing[0]}")
        extra = [key for key in found if key not in record["chunks"]]
        if extra:
            raise self.corrupt(name, f"unexpected chunk file {record['path']}/c/{extra[0]}")
        resized = [key for key, size in record["chunks"].items() if found[key] != size]
        if resized:
            key = resized[0]
            raise self.corrupt(
                name,
                f"chunk file {record['path']}/c/{key} has {found[key]} bytes, {record['chunks'][key]} were written",
            )

    def _transform(self, name: str):
        return None

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def __getitem__(self, name: str) -> CheckedArray:
        if name not in self._arrays:
            raise KeyError(f"{self.path}: no array '{name}'")
        return CheckedArray(self, name, self._arrays[name], self._records.get(name), self._transform(name))

    def keys(self) -> list[str]:
        return list(self._arrays)


class CheckedStore:
    """Root attributes plus lazily opened, checked case groups of one store (dataset or pseudo)."""

    required = ()
    case_class = CheckedCase

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: Zarr store not found")
        root = _read_json(self.path / "zarr.json", "store")
        self.attrs: dict = root.get("attributes", {})
        version = self.attrs.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: format_version {version!r} is newer than this segvol reads ({FORMAT_VERSION})"
            )
        self.format_version = version
        if version < 2:
            log.warning(
                "%s: format_version %s store, read without integrity checks; re-run the stage "
                "that wrote it to get them",
                self.path,
                version,
            )
        if "cases" not in self.attrs and version < 2 and "cases" not in self.required:
            # format 1 pseudo-label stores written by hand had no root attrs: their groups are the cases
            self.attrs = {
                **self.attrs,
                "cases": sorted(entry.name for entry in self.path.iterdir() if (entry / "zarr.json").is_file()),
            }
        for key in self.required:
            if key not in self.attrs:
                raise ValueError(f"{self.path}: missing root attribute '{key}' (not a {self.kind})")
        if not isinstance(self.attrs["cases"], list):
            raise ValueError(f"{self.path}: root attribute 'cases' must be a list of case ids")
        self._groups: dict = {}
        self._owner_pid = os.getpid()

    kind = "Zarr store"

    @property
    def cases(self) -> list[str]:
        return list(self.attrs["cases"])

    def __len__(self) -> int:
        return len(self.attrs["cases"])

    def __contains__(self, case_id: str) -> bool:
        return case_id in self.attrs["cases"]

    def _check_case(self, case_id: str) -> None:
        if case_id not in self.attrs["cases"]:
            raise ValueError(f"{self.path}: no case {case_id!r}")

    def case_attrs(self, case_id: str) -> dict:
        """The case group's attributes (spacing, affine, to_original, ...), read without zarr."""
        self._check_case(case_id)
        return _read_json(self.path / case_id / "zarr.json", f"group of case '{case_id}'").get("attributes", {})

    def case(self, case_id: str) -> CheckedCase:
        """The case's arrays (read-only), opened and checked on first use in this process."""
        self._check_case(case_id)
        if self._owner_pid != os.getpid():  # inherited through fork: never reuse the parent's handles
            self._groups = {}
            self._owner_pid = os.getpid()
        group = self._groups.get(case_id)
        if group is None:
            group = self.case_class(self, case_id)
            self._groups[case_id] = group
        return group

    __getitem__ = case

    def close(self) -> None:
        self._groups = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_groups"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} cases)"


class NormalizedCase(CheckedCase):
    """A dataset case: `image` comes back normalized to float32 [0, 1]."""

    def _transform(self, name: str):
        if name != "image" or self.store.format_version < 2:
            return None  # format 1 stored the normalized float32 values themselves
        from segvol.io.intensity import apply_normalization

        stats = self.attrs.get("intensity")
        if not isinstance(stats, dict) or any(key not in stats for key in ("lower", "upper", "mean", "std")):
            raise self.corrupt(name, "no normalization parameters ('intensity') in the case attrs")
        # The very float32 operations the values went through before they were stored as float32
        # (a lookup table over all int16 values measured no faster than these blockwise passes).
        return lambda values: apply_normalization(np.ascontiguousarray(values), stats)


class NormalizedStore(CheckedStore):
    """A dataset store (`segvol normalize` output)."""

    required = ("cases", "categories")
    kind = "normalized dataset store"
    case_class = NormalizedCase

    @property
    def name(self) -> str:
        return str(self.attrs.get("dataset") or self.path.name.removesuffix(".zarr"))

    @property
    def categories(self) -> list[str]:
        return list(self.attrs["categories"])

    @property
    def split(self) -> dict:
        return self.attrs.get("split") or {}

    def __repr__(self) -> str:
        return f"NormalizedStore({str(self.path)!r}, {len(self)} cases, {len(self.categories)} categories)"


def open_store(path: str | os.PathLike) -> NormalizedStore:
    """A dataset store, read through the checks; FileNotFoundError/ValueError when unusable."""
    return NormalizedStore(path)


def open_checked(path: str | os.PathLike) -> CheckedStore:
    """Any store of case groups (e.g. a pseudo-label store), read through the checks."""
    return CheckedStore(path)
