"""Pseudo labels for every case of a dataset store, written as a pseudo-label store.

Reads the dataset store through `segvol.io.store` (checked; `image` (D, H, W) float32
normalized on read, optional `labels` (C, D, H, W) uint8) and writes `data/pseudo/<dataset>.zarr`:
one group per case with `pseudo` int32 (D, H, W) (CRC32C-checked chunks) and attrs `n_segments`,
`segment_sizes`, `gt_ids`, the `integrity` record and NGFF `multiscales` (so a viewer shows it
with the image's spacing). The store is written to a temporary sibling and renamed
into place, so a failed run leaves nothing at the output path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from segvol.io.atomic import atomic_path

FORMAT_VERSION = 2  # CRC32C on every chunk plus the integrity record of segvol.io.store
CHUNKS = (32, 128, 128)
COMPRESSION_LEVEL = 1


def open_dataset(path: str | os.PathLike):
    """The dataset store, read through the integrity checks; FileNotFoundError/ValueError when unusable."""
    from segvol.io.store import open_store

    store = open_store(path)
    for case in store.cases:
        if "image" not in store.case(case):
            raise ValueError(f"{path}: case '{case}' has no 'image' array")
    store.close()
    return store


def read_case(path: str | os.PathLike, case: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(image, labels or None, categories) of one case, checked and normalized."""
    from segvol.io.store import open_store

    store = open_store(path)
    group = store.case(case)
    image = group["image"][...]
    labels = group["labels"][...] if "labels" in group else None
    return image, labels, store.categories


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

    from segvol.io.store import (
        VolumeStatistics,
        checked_codecs,
        integrity_record,
        ngff_image,
        spatial_dimension_names,
    )

    dataset = open_dataset(store)
    cases = dataset.cases
    results = _results(str(store), cases, settings, threads)
    if progress is not None:
        results = progress(results)
    summary = {}
    with atomic_path(out) as temporary:
        target = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        target.attrs.update(
            {
                "dataset": dataset.name,
                "source": str(store),
                "categories": dataset.categories,
                "cases": cases,
                "settings": settings,
                "format_version": FORMAT_VERSION,
            }
        )
        for case, pseudo, attrs in results:
            group = target.create_group(case)
            chunks = tuple(min(c, n) for c, n in zip(CHUNKS, pseudo.shape))
            array = group.create_array(
                "pseudo",
                shape=pseudo.shape,
                dtype="int32",
                chunks=chunks,
                fill_value=0,
                compressors=checked_codecs(COMPRESSION_LEVEL),
                dimension_names=spatial_dimension_names(),
            )
            array[...] = pseudo
            statistics = VolumeStatistics(1)
            statistics.add(0, pseudo)
            spacing = dataset.case_attrs(case).get("spacing", [1.0, 1.0, 1.0])
            group.attrs.update(
                {
                    **attrs,
                    "integrity": {"pseudo": integrity_record(temporary / case, "pseudo", array, statistics)},
                    "ome": ngff_image(case, "pseudo", spacing),
                }
            )
            summary[case] = attrs["n_segments"]
    return summary
