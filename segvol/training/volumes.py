"""Reading training views out of the Zarr stores (CONTRIBUTING.md, "Zarr store contract").

A *view* is what one training sample sees at the model input size `spatial_size`:
- `resize`: the whole case resized to `spatial_size` (global view);
- `crop`: a native-resolution window of `spatial_size` (zero padded where the case is smaller),
  read from the store chunk by chunk so only the chunks under the window are decoded.

Stores are opened lazily and per process: a `StoreReader` pickled into a DataLoader worker
opens its own handles on first use, so nothing decoded in the parent is shared across a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
        self._pid: int | None = None
        self._groups: list = []
        self.attrs: list[dict] = []
        self.cases: list[CaseRef] = []
        for index, path in enumerate(self.paths):
            group = self._open(path)
            attrs = dict(group.attrs)
            self.attrs.append(attrs)
            for case in self._case_ids(path, attrs, group):
                if case not in group:
                    raise ValueError(f"{path}: case '{case}' is listed in the attrs but has no group")
                shape = tuple(int(s) for s in group[case]["image"].shape)
                if len(shape) != 3:
                    raise ValueError(f"{path}/{case}/image: expected a (D, H, W) array, got shape {shape}")
                self.cases.append(CaseRef(index, case, shape))
        self._pid = None  # handles opened above belong to the constructing process only
        self._groups = []

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path):
        import zarr

        if not path.exists():
            raise FileNotFoundError(f"{path}: Zarr store not found")
        try:
            return zarr.open_group(str(path), mode="r")
        except Exception as error:
            raise ValueError(f"{path}: not a readable Zarr group ({error})") from error

    def _case_ids(self, path: Path, attrs: dict, group) -> list[str]:
        cases = attrs.get("cases")
        if cases is None:
            cases = sorted(name for name, _ in group.groups())
        split = attrs.get("split") or {}
        if self.split == "train" and split.get("train") is not None:
            cases = [c for c in cases if c in set(split["train"])]
        elif self.split == "test" and split.get("test") is not None:
            cases = [c for c in cases if c in set(split["test"])]
        return list(cases)

    def group(self, ref: CaseRef):
        """The Zarr group of `ref`, opened once per process."""
        if self._pid != os.getpid():
            self._groups = [None] * len(self.paths)
            self._pid = os.getpid()
        if self._groups[ref.store] is None:
            self._groups[ref.store] = self._open(self.paths[ref.store])
        return self._groups[ref.store][ref.case]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_groups"] = []
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.cases)


class LazyGroup:
    """A read-only Zarr group opened on first use in each process (safe to pickle to workers)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._pid: int | None = None
        self._group = None
        StoreReader._open(self.path)  # fail early on a missing or unreadable store

    def get(self):
        if self._pid != os.getpid():
            self._group = StoreReader._open(self.path)
            self._pid = os.getpid()
        return self._group

    def __getstate__(self):
        return {"path": self.path, "_pid": None, "_group": None}


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
