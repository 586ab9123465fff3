"""Reading training views out of the Zarr stores (CONTRIBUTING.md, "Zarr store contract").

A *view* is what one training sample sees at the model input size `spatial_size`:
- `resize`: the whole case resized to `spatial_size` (global view);
- `crop`: a native-resolution window of `spatial_size` (zero padded where the case is smaller),
  read from the store chunk by chunk so only the chunks under the window are decoded.

Every read goes through the checked stores of `segvol.io.store` (checksums, recorded chunk
keys and statistics; images normalized on read). Their case handles are per process: a
`StoreReader` pickled or forked into a DataLoader worker opens its own on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CaseRef:
    """One case of one store: `store` index into the reader's store list, `case` its group name."""

    store: int
    case: str
    shape: tuple[int, int, int]


class StoreReader:
    """Lazy, fork-safe access to the cases of several Zarr stores.

    `split` chooses which cases are used: "train" (the store's train split, or every case of a
    store without one, e.g. unlabelled stores) or "all".
    """

    def __init__(self, paths: Sequence[str | os.PathLike], split: str = "train"):
        self.paths = [Path(p) for p in paths]
        self.split = split
        self._stores = [self._open(path) for path in self.paths]
        self.attrs: list[dict] = [store.attrs for store in self._stores]
        self.cases: list[CaseRef] = []
        for index, store in enumerate(self._stores):
            for case in self._case_ids(store.attrs):
                shape = tuple(int(s) for s in store.case(case)["image"].shape)
                if len(shape) != 3:
                    raise ValueError(f"{store.path}/{case}/image: expected a (D, H, W) array, got shape {shape}")
                self.cases.append(CaseRef(index, case, shape))
            store.close()  # handles opened above belong to the constructing process only

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path):
        """The dataset store, read through the integrity checks of `segvol.io.store`."""
        from segvol.io.store import open_store

        return open_store(path)

    def _case_ids(self, attrs: dict) -> list[str]:
        cases = attrs["cases"]
        split = attrs.get("split") or {}
        if self.split == "train" and split.get("train") is not None:
            cases = [c for c in cases if c in set(split["train"])]
        elif self.split == "test" and split.get("test") is not None:
            cases = [c for c in cases if c in set(split["test"])]
        return list(cases)

    def group(self, ref: CaseRef):
        """The checked case of `ref` (`["image"]` normalized float32, `["labels"]`), opened once per process."""
        return self._stores[ref.store].case(ref.case)

    @property
    def _groups(self) -> list:
        """The stores holding open case handles in this process (empty after pickling)."""
        return [store for store in self._stores if store._groups]

    @_groups.setter
    def _groups(self, _value) -> None:  # callers drop the handles their checks opened
        for store in self._stores:
            store.close()

    _pid = None

    def __len__(self) -> int:
        return len(self.cases)


class LazyGroup:
    """A store of case groups (e.g. pseudo labels) read through the integrity checks; cases open
    lazily per process (safe to pickle to workers). `get()[case]["pseudo"]` is a checked array."""

    def __init__(self, path: str | os.PathLike):
        from segvol.io.store import open_checked

        self.path = Path(path)
        self._store = open_checked(self.path)  # fails early on a missing or unreadable store

    def get(self):
        return self._store

    @property
    def _group(self):
        """The store while it holds open case handles in this process, else None."""
        return self._store if self._store._groups else None

    @_group.setter
    def _group(self, _value) -> None:  # callers drop the handles their checks opened
        self._store.close()

    _pid = None


# ----------------------------------------------------------------------------------------------
# Views


@dataclass(frozen=True)
class View:
    """`mode` "resize" (whole case) or "crop" with `start` (may be negative = zero padding)."""

    mode: str
    start: tuple[int, int, int] = (0, 0, 0)


def crop_start(shape: Sequence[int], size: Sequence[int], centre: Sequence[int]) -> tuple[int, int, int]:
    """Window start so that the window of `size` holds `centre` and stays inside the case.

    Axes shorter than the window get a negative start: the case sits centred in zero padding.
    """
    start = []
    for dim, window, c in zip(shape, size, centre):
        if dim <= window:
            start.append(-((window - dim) // 2))
        else:
            start.append(int(np.clip(int(c) - window // 2, 0, dim - window)))
    return tuple(start)


def read_window(array, start: Sequence[int], size: Sequence[int], leading: int = 0) -> np.ndarray:
    """Read `array[..., start:start+size]` (last three axes), zero filled outside the array.

    Only the overlapping part is requested from Zarr, so only the chunks under it are decoded.
    """
    shape = array.shape[leading:]
    source, target = [], []
    for s, w, dim in zip(start, size, shape):
        lo, hi = max(s, 0), min(s + w, dim)
        source.append(slice(lo, max(hi, lo)))
        target.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out = np.zeros(tuple(array.shape[:leading]) + tuple(size), dtype=array.dtype)
    prefix = (slice(None),) * leading
    if all(t.stop > t.start for t in target):
        out[prefix + tuple(target)] = array[prefix + tuple(source)]
    return out


def resize_image(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(C, D, H, W) float -> (C, *size), trilinear (area-like when shrinking a lot is not needed)."""
    if tuple(volume.shape[-3:]) == tuple(size):
        return volume
    return F.interpolate(volume[None].float(), size=tuple(size), mode="trilinear", align_corners=False)[0]


def resize_soft(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(C, D, H, W) binary -> (C, *size) soft labels ('area' when shrinking, as the released code)."""
    if tuple(mask.shape[-3:]) == tuple(size):
        return mask.float()
    shrinking = all(s <= d for s, d in zip(size, mask.shape[-3:]))
    mode = "area" if shrinking else "trilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(mask[None].float(), size=tuple(size), mode=mode, **kwargs)[0]


def resize_nearest(ids: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(D, H, W) integer map -> (*size) by nearest-exact sampling (ids must not blend)."""
    if tuple(ids.shape) == tuple(size):
        return ids
    out = F.interpolate(ids[None, None].float(), size=tuple(size), mode="nearest-exact")[0, 0]
    return out.round().to(ids.dtype)


def read_image(reader: StoreReader, ref: CaseRef, view: View, size: Sequence[int]) -> torch.Tensor:
    """(1, *size) float32 image in [0, 1] for `view`."""
    array = reader.group(ref)["image"]
    if view.mode == "resize":
        volume = torch.from_numpy(np.asarray(array[...], dtype=np.float32))[None]
        return resize_image(volume, size).clamp_(0.0, 1.0)
    window = read_window(array, view.start, size)
    return torch.from_numpy(window.astype(np.float32, copy=False))[None]


def check_finite(image: torch.Tensor, reader: StoreReader, ref: CaseRef) -> None:
    if not torch.isfinite(image).all():
        raise ValueError(f"{reader.paths[ref.store]}/{ref.case}/image: contains NaN or infinite values")
