"""Dataset label spaces: category names -> tissues -> label-map values.

Public datasets label different, overlapping things ("kidney" vs "left kidney", "liver" with or
without its tumours, "postcava" for the inferior vena cava). A dataset's label map is a
partition of the voxels into *atoms*: tissues grouped by the exact set of the dataset's
categories they belong to. Each atom gets one value; each category lists the values of its
atoms. So with ["liver", "liver tumor"] the tumour atom is in both categories
({"liver": [1, 2], "liver tumor": [2]}), and with ["kidney"] both kidneys share one value.
"""

from __future__ import annotations

import numpy as np

from segvol.synth.anatomy import Tissue

T = Tissue
_LIVER = (T.LIVER, T.LIVER_VESSEL, T.LIVER_TUMOR)
_LEFT_KIDNEY = (T.KIDNEY_LEFT, T.KIDNEY_LEFT_MEDULLA, T.KIDNEY_LEFT_TUMOR)
_RIGHT_KIDNEY = (T.KIDNEY_RIGHT, T.KIDNEY_RIGHT_MEDULLA, T.KIDNEY_RIGHT_TUMOR)
_IVC = (T.IVC,)
_STOMACH = (T.STOMACH, T.STOMACH_CONTENT, T.STOMACH_GAS)
_VERTEBRAE = (T.VERTEBRA, T.VERTEBRA_CORTEX)

# Every category name a synthetic dataset may label, with the tissues it covers. Synonyms used
# by public datasets map to the same tissues and are written to dataset.json as given.
CATEGORY_TISSUES: dict[str, tuple[Tissue, ...]] = {
    "liver": _LIVER,
    "liver tumor": (T.LIVER_TUMOR,),
    "spleen": (T.SPLEEN,),
    "kidney": _LEFT_KIDNEY + _RIGHT_KIDNEY,
    "left kidney": _LEFT_KIDNEY,
    "right kidney": _RIGHT_KIDNEY,
    "kidney tumor": (T.KIDNEY_LEFT_TUMOR, T.KIDNEY_RIGHT_TUMOR),
    "pancreas": (T.PANCREAS,),
    "aorta": (T.AORTA,),
    "inferior vena cava": _IVC,
    "postcava": _IVC,
    "ivc": _IVC,
    "stomach": _STOMACH,
    "gallbladder": (T.GALLBLADDER,),
    "gall bladder": (T.GALLBLADDER,),
    "vertebrae": _VERTEBRAE,
    "ribs": (T.RIB,),
    "lung": (T.LUNG_LEFT, T.LUNG_RIGHT),
    "left lung": (T.LUNG_LEFT,),
    "right lung": (T.LUNG_RIGHT,),
    "heart": (T.HEART,),
}

LESION_CATEGORIES = ("liver tumor", "kidney tumor")


def supported_categories() -> list[str]:
    return sorted(CATEGORY_TISSUES)


def canonical_name(name: str) -> str:
    """Lower case, single spaces, underscores as spaces: how names are matched."""
    return " ".join(str(name).lower().replace("_", " ").split())


def validate_categories(names, where: str) -> list[str]:
    """`names` unchanged if every one is supported and none repeats; ValueError otherwise."""
    names = list(names)
    unknown = [n for n in names if canonical_name(n) not in CATEGORY_TISSUES]
    if unknown:
        raise ValueError(
            f"{where}: unknown label name(s) {', '.join(map(repr, unknown))}; "
            f"supported: {', '.join(supported_categories())}"
        )
    seen: set[str] = set()
    for name in names:
        if canonical_name(name) in seen:
            raise ValueError(f"{where}: label name {name!r} is listed twice")
        seen.add(canonical_name(name))
    return names


def category_tissues(name: str) -> tuple[Tissue, ...]:
    return CATEGORY_TISSUES[canonical_name(name)]


def label_space(names) -> tuple[dict[str, list[int]], np.ndarray]:
    """The dataset's `categories` (name -> label values) and a tissue -> value lookup table.

    Values are numbered in the order the categories are listed; tissues in no category map
    to 0 (background).
    """
    membership: dict[Tissue, frozenset[str]] = {}
    for name in names:
        for tissue in category_tissues(name):
            membership[tissue] = membership.get(tissue, frozenset()) | {name}
    atom_value: dict[frozenset[str], int] = {}
    lookup = np.zeros(len(Tissue), dtype=np.uint8)
    for name in names:
        for tissue in category_tissues(name):
            signature = membership[tissue]
            if signature not in atom_value:
                atom_value[signature] = len(atom_value) + 1
            lookup[tissue] = atom_value[signature]
    if len(atom_value) > 255:
        raise ValueError("too many label values for a uint8 label map")
    categories = {name: sorted({atom_value[membership[t]] for t in category_tissues(name)}) for name in names}
    return categories, lookup
