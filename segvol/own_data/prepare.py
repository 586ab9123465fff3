"""Your dataset -> one normalized store with a train / validation / test split.

The store is the normalize stage's (docs/architecture.md#zarr-store-contract-datazarrdatasetzarr),
written by its writer (`segvol.normalize.convert.write_store`) with unknown label ids refused, plus a
`validation` list in its `split`: the fine-tuning trains on `train`, picks its best weights on
`validation` and is scored before and after on `test`, which it never sees.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segvol.normalize.convert import split_cases, write_store
from segvol.own_data.sources import read_source


def own_split(case_ids: list[str], seed: int, test_fraction: float, validation_fraction: float) -> dict:
    """{"train", "validation", "test", "seed", "test_fraction", "validation_fraction"}.

    `test` is the normalize stage's seeded split (at least one case); `validation` takes
    round(validation_fraction * rest) of the rest (at least one when the fraction is above 0 and two
    cases remain; never the last training case), drawn with the seed too.
    """
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(
            f"{len(ids)} labelled case(s): fine-tuning needs at least 2 (one to train on, one held "
            "out to score before and after)"
        )
    split = split_cases(ids, "train", seed, test_fraction)
    rest = split["train"]
    count = math.floor(len(rest) * validation_fraction + 0.5)
    if validation_fraction > 0 and len(rest) >= 2:
        count = max(count, 1)
    count = min(count, len(rest) - 1)
    chosen = {rest[i] for i in np.random.default_rng([seed, 1]).permutation(len(rest))[:count]}
    return {
        "train": [c for c in rest if c not in chosen],
        "validation": sorted(chosen),
        "test": split["test"],
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "validation_fraction": float(validation_fraction),
    }


def prepare(
    source: str | Path, out: str | Path, seed: int, settings: dict, normalize_settings: dict, progress: bool = True
) -> Path:
    """Check `source` (`settings["names"]` for the pairs layout) and write the store `out` atomically;
    any problem is one line naming the file, and nothing is left at `out`."""
    dataset = read_source(source, settings.get("names"))
    split = own_split(
        [case["id"] for case in dataset["cases"]], seed, settings["test_fraction"], settings["validation_fraction"]
    )
    out = Path(out)
    created = [folder for folder in out.parents if not folder.exists()]
    try:
        return write_store(dataset, out, split, normalize_settings, progress=progress, strict_labels=True)
    except (ValueError, FileNotFoundError) as error:
        for folder in created:  # the folders made for the store go with it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        # the grid check explains itself over several lines (both affines): one line here
        raise type(error)(" ".join(str(error).split())) from error
