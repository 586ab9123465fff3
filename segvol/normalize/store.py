"""Read a normalized dataset store (the Zarr contract of CONTRIBUTING.md), DataLoader-safe.

    store = open_store("data/zarr/abdomen_a.zarr")
    store.attrs["categories"], store.split["train"]
    case = store.case("case_000")          # zarr.Group, opened in the calling process
    image = case["image"][:]               # float32 (D, H, W) in [0, 1]
    labels = case["labels"][:]             # uint8 (C, D, H, W)
    store.case_attrs("case_000")["spacing"]

Metadata is read from the stores' `zarr.json` files with plain `json`, so opening a store starts
no zarr machinery. Case groups are opened lazily and only ever reused inside the process that
opened them: a forked DataLoader worker opens its own (zarr's event-loop thread does not survive
fork), and pickling the store drops them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class NormalizedStore:
    """Root attributes plus lazily opened case groups of one dataset store."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        metadata = self.path / "zarr.json"
        if not metadata.is_file():
            raise FileNotFoundError(f"{self.path}: not a Zarr v3 store (no zarr.json)")
        try:
            root = json.loads(metadata.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{metadata}: corrupt store metadata ({error})") from error
        self.attrs: dict = root.get("attributes", {})
        for key in ("dataset", "categories", "cases", "split"):
            if key not in self.attrs:
                raise ValueError(f"{self.path}: missing root attribute '{key}' (not a normalized dataset store)")
        self._groups: dict = {}
        self._owner_pid = os.getpid()

    @property
    def name(self) -> str:
        return self.attrs["dataset"]

    @property
    def categories(self) -> list[str]:
        return list(self.attrs["categories"])

    @property
    def cases(self) -> list[str]:
        return list(self.attrs["cases"])

    @property
    def split(self) -> dict:
        return self.attrs["split"]

    def __len__(self) -> int:
        return len(self.attrs["cases"])

    def _check_case(self, case_id: str) -> None:
        if case_id not in self.attrs["cases"]:
            raise ValueError(f"{self.path}: no case {case_id!r}")

    def case_attrs(self, case_id: str) -> dict:
        """The case group's attributes (spacing, affine, to_original, ...), read without zarr."""
        self._check_case(case_id)
        metadata = self.path / case_id / "zarr.json"
        return json.loads(metadata.read_text(encoding="utf-8")).get("attributes", {})

    def case(self, case_id: str):
        """The case's zarr group (read-only), opened on first use in this process."""
        import zarr

        self._check_case(case_id)
        if self._owner_pid != os.getpid():  # inherited through fork: never reuse the parent's handles
            self._groups = {}
            self._owner_pid = os.getpid()
        group = self._groups.get(case_id)
        if group is None:
            group = zarr.open_group(str(self.path / case_id), mode="r")
            self._groups[case_id] = group
        return group

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
        return f"NormalizedStore({str(self.path)!r}, {len(self)} cases, {len(self.categories)} categories)"


def open_store(path: str | os.PathLike) -> NormalizedStore:
    return NormalizedStore(path)
