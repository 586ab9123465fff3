"""Canonical category names, so that one structure has one text prompt across datasets.

Datasets spell the same structure differently ("kidney_left", "Left Kidney", "postcava", the
AMOS "arota" typo, ...). `canonical_name` maps them to one lower-case, space-separated name;
names it does not know pass through in that normalized form instead of failing, so new
categories keep working (they just are not merged with synonyms).

`known_categories` is the vocabulary a user can prompt with: every canonical name of this table,
of the dataset registry's label maps and of the demo's synthetic datasets (plus the categories of
any normalized store given), each with its synonyms and the datasets that carry it;
`segvol categories` prints it and `segvol predict` checks text prompts against it
(`check_text_prompt`, near names by difflib).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = REPO_ROOT / "config" / "datasets.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"

# canonical name -> spellings seen in public datasets (already in normalized form: lower-case,
# single spaces). Side-first and side-last forms are both listed where datasets use both.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "liver": ("hepar",),
    "spleen": (),
    "pancreas": (),
    "stomach": (),
    "duodenum": (),
    "esophagus": ("oesophagus",),
    "gallbladder": ("gall bladder",),
    "bladder": ("urinary bladder",),
    "aorta": ("arota", "abdominal aorta"),
    "inferior vena cava": ("postcava", "ivc", "vena cava inferior", "inferior vena cava ivc"),
    "portal vein and splenic vein": ("portal vein splenic vein", "portal and splenic vein", "portal splenic vein"),
    "kidney": ("kidneys",),
    "left kidney": ("kidney left", "kidney l", "l kidney"),
    "right kidney": ("kidney right", "kidney r", "r kidney"),
    "left adrenal gland": ("adrenal gland left", "left adrenal", "adrenal left"),
    "right adrenal gland": ("adrenal gland right", "right adrenal", "adrenal right"),
    "adrenal gland": ("adrenal", "adrenal glands"),
    "renal vein": ("renal veins", "kidney vein"),
    "renal artery": ("renal arteries", "kidney artery"),
    "lung": ("lungs",),
    "left lung": ("lung left",),
    "right lung": ("lung right",),
    "left femur": ("femur left",),
    "right femur": ("femur right",),
    "liver tumor": ("liver tumour", "liver cancer", "liver lesion", "hepatic tumor", "liver tumors"),
    "kidney tumor": ("kidney tumour", "kidney cancer", "renal tumor", "kidney tumors"),
    "kidney cyst": ("renal cyst", "kidney cysts"),
    "pancreas tumor": ("pancreas tumour", "pancreatic tumor", "pancreas cancer", "pancreatic tumour"),
    "lung tumor": ("lung tumour", "lung cancer", "lung nodule"),
    "colon tumor": ("colon tumour", "colon cancer"),
    "hepatic vessel": ("hepatic vessels",),
    "small bowel": ("small intestine",),
    "vertebrae": ("vertebra", "spine"),
    "prostate or uterus": ("prostate uterus", "prostate/uterus"),
}

_LOOKUP: dict[str, str] = {}
for _canonical, _spellings in SYNONYMS.items():
    for _spelling in (_canonical, *_spellings):
        _LOOKUP[_spelling] = _canonical


def normalize_text(name: str) -> str:
    """Lower-case, underscores and hyphens to spaces, single spaces, trimmed."""
    if not isinstance(name, str):
        raise ValueError(f"category name must be a string, got {name!r}")
    text = name.strip().lower().replace("_", " ").replace("-", " ")
    return re.sub(r"\s+", " ", text).strip()


def canonical_name(name: str) -> str:
    """The canonical prompt name of a dataset's category name (unknown names: normalized text)."""
    text = normalize_text(name)
    if not text:
        raise ValueError(f"empty category name {name!r}")
    return _LOOKUP.get(text, text)


def _add(vocabulary: dict, name: str, dataset: str | None) -> None:
    canonical = canonical_name(name)
    entry = vocabulary.setdefault(canonical, {"synonyms": set(SYNONYMS.get(canonical, ())), "datasets": set()})
    spelled = normalize_text(name)
    if spelled != canonical:
        entry["synonyms"].add(spelled)
    if dataset:
        entry["datasets"].add(dataset)


@lru_cache(maxsize=8)
def _known(
    registry: str | None, config: str | None, stores: tuple[str, ...], checkpoints: tuple[str, ...] = ()
) -> dict:
    import yaml

    vocabulary: dict = {}
    for canonical in SYNONYMS:
        _add(vocabulary, canonical, None)
    if registry:
        # Only names are read here (the download stage validates the registry), so this shared
        # module needs no stage's code.
        datasets = (yaml.safe_load(Path(registry).read_text(encoding="utf-8")) or {}).get("datasets") or {}
        for dataset, entry in datasets.items():
            entry = entry or {}
            for name in (entry.get("labels") or {}).values():
                _add(vocabulary, name, dataset)
            for name in entry.get("regions") or {}:
                _add(vocabulary, name, dataset)
    if config:
        synth = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("synth") or {}
        for dataset, spec in (synth.get("datasets") or {}).items():
            for name in (spec or {}).get("labels") or []:
                _add(vocabulary, name, dataset)
    for store in stores:
        import zarr

        if not Path(store).is_dir():
            raise FileNotFoundError(f"{store}: Zarr store not found")
        attrs = zarr.open_group(str(store), mode="r").attrs
        if "categories" not in attrs:
            raise ValueError(f"{store}: root attribute 'categories' is missing; not a dataset store")
        for name in attrs["categories"]:
            _add(vocabulary, name, attrs.get("dataset") or Path(store).stem)
    for source in checkpoints:
        from segvol.model.checkpoint import read_vocabulary

        for name in read_vocabulary(source):
            _add(vocabulary, name, f"checkpoint {Path(source).name}")
    return {
        name: {"synonyms": sorted(entry["synonyms"]), "datasets": sorted(entry["datasets"])}
        for name, entry in sorted(vocabulary.items())
    }


def known_categories(
    registry: str | os.PathLike | None = DEFAULT_REGISTRY,
    config: str | os.PathLike | None = DEFAULT_CONFIG,
    stores=(),
    checkpoints=(),
) -> dict[str, dict[str, list[str]]]:
    """`{canonical name: {"synonyms": [...], "datasets": [...]}}`, sorted by name.

    Sources: the synonym table, the registry's `labels`/`regions` (entries whose labels come from
    the release, `labels: null`, add theirs only through a normalized store), the synthetic
    datasets of `config`, the `categories` of each Zarr store in `stores` and the vocabulary each
    checkpoint in `checkpoints` records (`segvol.model.checkpoint.read_vocabulary`; its "dataset"
    is `checkpoint <file name>`). A missing default
    registry/config (an installed package without the repository) is skipped; a missing file
    given explicitly is an error.
    """

    def usable(path, default):
        if path is None:
            return None
        if not Path(path).is_file():
            if Path(path) == default:
                return None
            raise FileNotFoundError(f"{path}: not found")
        return str(Path(path).resolve())

    return _known(
        usable(registry, DEFAULT_REGISTRY),
        usable(config, DEFAULT_CONFIG),
        tuple(str(Path(s).resolve()) for s in stores),
        tuple(str(c if "://" in str(c) else Path(c).resolve()) for c in checkpoints),
    )


def near_names(name: str, vocabulary: dict, n: int = 3) -> list[str]:
    """Up to `n` canonical names that look like `name` (difflib over names and synonyms)."""
    spellings = {
        spelling: canonical for canonical, entry in vocabulary.items() for spelling in (canonical, *entry["synonyms"])
    }
    matches = difflib.get_close_matches(normalize_text(name), list(spellings), n=3 * n, cutoff=0.6)
    return list(dict.fromkeys(spellings[m] for m in matches))[:n]


def check_text_prompt(name: str, strict: bool = False, vocabulary: dict | None = None) -> str:
    """The canonical form of a text prompt; warn (or, `strict`, raise ValueError) when the model
    was never taught it, naming the nearest known categories."""
    vocabulary = known_categories() if vocabulary is None else vocabulary
    canonical = canonical_name(name)
    if canonical in vocabulary:
        return canonical
    near = near_names(name, vocabulary)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else "; `segvol categories` lists them"
    message = f"text prompt {name!r} is not a category SegVol was trained on{hint}"
    if strict:
        raise ValueError(message + " (refused: --strict)")
    log.warning("%s (segmenting it anyway: the result is likely meaningless)", message)
    return canonical
