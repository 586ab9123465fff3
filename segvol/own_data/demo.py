"""A synthetic nnU-Net v2 raw dataset: the own-data demo's stand-in for your labelled CTs.

Procedural abdominal CT phantoms of `segvol.synth` (the demo's data), written the way nnU-Net v2 users
have their data: `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz` and a `dataset.json` with
`channel_names`, `labels`, `numTraining` and `file_ending`. A category that covers several label values
(e.g. "liver" over a liver and its tumours) is a region, as in nnU-Net's region-based training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from segvol.io.atomic import atomic_path
from segvol.synth.appearance import DOMAINS
from segvol.synth.dataset import dataset_spec, to_nifti
from segvol.synth.labels import LESION_CATEGORIES, canonical_name, label_space
from segvol.synth.phantom import case_rng, make_phantom

log = logging.getLogger(__name__)

DEMO_NAME = "Dataset900_OwnDemo"


def write_demo(out: str | Path, seed: int, demo: dict, progress: bool = True) -> Path:
    """Write the `own_data.demo` phantoms (n_cases, labels, domain, shape_max) to the folder `out`, atomically."""
    import nibabel as nib

    from segvol.progress import progress_bar

    spec = dataset_spec({"datasets": {DEMO_NAME: {"role": "train", **demo}}}, DEMO_NAME)
    categories, lookup = label_space(spec["labels"])
    required = tuple(kind for kind in LESION_CATEGORIES if kind in {canonical_name(n) for n in spec["labels"]})
    shape_max = tuple(spec["shape_max"])
    out = Path(out)
    with atomic_path(out) as folder:
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        for index in progress_bar(range(spec["n_cases"]), desc="own-data demo", unit="case", disable=not progress):
            case = f"owndemo_{index:03d}"
            phantom = make_phantom(
                case_rng(seed, DEMO_NAME, index), DOMAINS[spec["domain"]], shape_max, require_lesion=required
            )
            nib.save(to_nifti(phantom.hu, phantom.affine), folder / "imagesTr" / f"{case}_0000.nii.gz")
            nib.save(to_nifti(lookup[phantom.tissue], phantom.affine), folder / "labelsTr" / f"{case}.nii.gz")
        labels = {"background": 0}
        labels.update({name: values[0] if len(values) == 1 else values for name, values in categories.items()})
        description = {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": spec["n_cases"],
            "file_ending": ".nii.gz",
            "name": DEMO_NAME,
            "description": "Synthetic abdominal CT phantoms (segvol.synth) in nnU-Net v2's raw layout: "
            "the own-data demo's stand-in for your labelled CTs.",
        }
        (folder / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    log.info("own-data demo: %d cases, labels %s -> %s", spec["n_cases"], spec["labels"], out)
    return out
