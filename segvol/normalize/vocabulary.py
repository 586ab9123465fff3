"""Canonical category names, so that one structure has one text prompt across datasets.

Datasets spell the same structure differently ("kidney_left", "Left Kidney", "postcava", the
AMOS "arota" typo, ...). `canonical_name` maps them to one lower-case, space-separated name;
names it does not know pass through in that normalized form instead of failing, so new
categories keep working (they just are not merged with synonyms).
"""

from __future__ import annotations

import re

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
    "portal vein and splenic vein": ("portal vein splenic vein", "portal and splenic vein",
                                     "portal splenic vein"),
    "left kidney": ("kidney left", "kidney l", "l kidney"),
    "right kidney": ("kidney right", "kidney r", "r kidney"),
    "left adrenal gland": ("adrenal gland left", "left adrenal", "adrenal left"),
    "right adrenal gland": ("adrenal gland right", "right adrenal", "adrenal right"),
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


def is_known(name: str) -> bool:
    return normalize_text(name) in _LOOKUP
