"""Pseudo labels for every case of a dataset store, written as a pseudo-label store.

Reads the Zarr store contract of CONTRIBUTING.md (root attrs `cases`, `categories`; per case
`image` (D, H, W) float32 and optional `labels` (C, D, H, W) uint8) and writes
`data/pseudo/<dataset>.zarr`: one group per case with `pseudo` int32 (D, H, W) and attrs
`n_segments`, `segment_sizes`, `gt_ids`. The store is written to a temporary sibling and renamed
into place, so a failed run leaves nothing at the output path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from segvol.io.atomic import atomic_path

FORMAT_VERSION = 1
CHUNKS = (32, 128, 128)


def open_dataset(path: str | os.PathLike):
    """The dataset store's root group, read-only; FileNotFoundError/ValueError when unusable."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset store")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a non-store directory
        raise ValueError(f"{path}: not a readable Zarr group ({error})") from error
    cases = root.attrs.get("cases")
    if not isinstance(cases, list):
        raise ValueError(f"{path}: root attribute 'cases' (a list of case ids) is missing")
    for case in cases:
        if case not in root or "image" not in root[case]:
            raise ValueError(f"{path}: case '{case}' has no 'image' array")
    return root


def read_case(path: str | os.PathLike, case: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(image, labels or None, categories) of one case."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    group = root[case]
    image = group["image"][...]
    labels = group["labels"][...] if "labels" in group else None
    return image, labels, list(root.attrs.get("categories", []))


def _one_case(store: str, case: str, settings: dict) -> tuple[str, np.ndarray, dict]:
    """Worker: pseudo labels of one case (runs in a child process when threads > 1)."""
    from segvol.pseudo.labels import case_pseudo_labels

    image, labels, categories = read_case(store, case)
    pseudo, attrs = case_pseudo_labels(image, labels, categories, settings, name=f"{store} case '{case}'")
    return case, pseudo, attrs


def _single_thread_worker() -> None:
    # one process per core: keep torch/BLAS from spawning threads of their own
    import torch

    torch.set_num_threads(1)


def _results(store: str, cases: Sequence[str], settings: dict, threads: int) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Per-case results in case order, computed in `threads` processes."""
    if threads <= 1 or len(cases) <= 1:
        _single_thread_worker()
        for case in cases:
            yield _one_case(store, case, settings)
        return
    # spawn, not fork: zarr's background event loop does not survive a fork
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(threads, mp_context=context, initializer=_single_thread_worker) as pool:
        # a bounded window of cases in flight: finished label maps wait in memory only briefly
        window = 2 * threads
        pending = collections.deque()
        try:
            for case in cases:
                pending.append(pool.submit(_one_case, store, case, settings))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def write_pseudo_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    settings: dict,
    threads: int = 1,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> dict:
    """Pseudo labels of every case of `store` into the pseudo-label store `out`.

    Returns a summary {case: n_segments}.
    """
    import zarr

    root = open_dataset(store)
    cases = list(root.attrs["cases"])
    results = _results(str(store), cases, settings, threads)
    if progress is not None:
        results = progress(results)
    summary = {}
    with atomic_path(out) as temporary:
        target = zarr.open_group(str(temporary), mode="w")
        target.attrs.update(
            {
                "dataset": root.attrs.get("dataset", Path(store).stem),
                "source": str(store),
                "categories": list(root.attrs.get("categories", [])),
                "cases": cases,
                "settings": settings,
                "format_version": FORMAT_VERSION,
            }
        )
        for case, pseudo, attrs in results:
            group = target.create_group(case)
            chunks = tuple(min(c, n) for c, n in zip(CHUNKS, pseudo.shape))
            array = group.create_array("pseudo", shape=pseudo.shape, dtype="int32", chunks=chunks, fill_value=0)
            array[...] = pseudo
            group.attrs.update(attrs)
            summary[case] = attrs["n_segments"]
    return summary
