"""The demo's external test sets are pinned: the training recipe may change, what it is scored on may not.

`ext_organs`, `ext_lesions` and `ext_vessels` of `config/config.yaml` (and the smaller ones of
`config/test.yaml` layered over it, which the end-to-end test scores) keep their populations, shapes and
seeds: their dataset entries are compared with the pinned ones, and the first case of each set is
generated through `segvol synth`'s own code path and its arrays (image HU, label map, affine, label
space) compared with a pinned checksum. A change to the phantom generator, the scanner populations,
the label spaces or the seeds changes these checksums. Only the first case of each set is generated
(about 2 s per full-size case); every case comes from the same code with its own seed stream.
"""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from snakemake.utils import update_config

from segvol.synth.dataset import synthesize_dataset
from tests.test_workflow import REPO

EXTERNAL = ("ext_organs", "ext_lesions", "ext_vessels")
ORGANS = ["liver", "spleen", "left kidney", "right kidney", "aorta", "inferior vena cava"]
LABELS = {
    "ext_organs": ORGANS,
    "ext_lesions": ["liver tumor", "kidney tumor"],
    "ext_vessels": ["aorta", "inferior vena cava", "vertebrae"],
}

# config name -> (seed, orientations, {dataset: (n_cases, shape_max)})
PINNED_SPECS = {
    "demo": (2023, ["RAS", "LPS"], {name: (8, [128, 256, 256]) for name in EXTERNAL}),
    "test": (2023, ["RAS", "LPS"], {name: (2, [48, 96, 96]) for name in EXTERNAL}),
}
# sha256 of case_000's arrays (see `case_digest`), as generated before the demo's training recipe was retuned
PINNED_DIGESTS = {
    ("demo", "ext_organs"): "805146b9cac0770853461bed3064d16f998c834876ba1f057075c921512f9366",
    ("demo", "ext_lesions"): "b0023ef19b312c2d90cc33c345ae2e342e167c0af54ec44b68c9af00f03e93cf",
    ("demo", "ext_vessels"): "2dec605ac3ae98e9c5f6d1fa98a5f489c23e05813b39ebe833acb6fd9607fa31",
    ("test", "ext_organs"): "5989e17b7dcbcd70abe8f4eb305bced6691d1c15a99d32a694149cdb1dc6dff4",
    ("test", "ext_lesions"): "29ad8b8d97075a4139626efa96f228b120e534f6b70c9d891f2bb80892c9c640",
    ("test", "ext_vessels"): "ef834d322944c918c9c732e254e465407c7fa2a76518b74d45f10e6144012b12",
}


def load_config(name: str) -> dict:
    """config/config.yaml, with config/test.yaml merged over it as Snakemake merges --configfile."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if name == "test":
        update_config(config, yaml.safe_load((REPO / "config" / "test.yaml").read_text()))
    return config


def case_digest(folder) -> str:
    """sha256 over case_000's decoded image and label arrays (dtype, shape, bytes), its affine (to 1e-6 mm)
    and the dataset's label space: what the evaluation reads, independent of gzip's byte stream."""
    description = json.loads((folder / "dataset.json").read_text())
    digest = hashlib.sha256(json.dumps(description["categories"], sort_keys=True).encode())
    case = description["cases"][0]
    for relative in (case["image"], case["label"]):
        image = nib.load(folder / relative)
        array = np.asarray(image.dataobj)
        digest.update(f"{array.dtype.str}{array.shape}{image.header.get_data_dtype().str}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(np.round(image.affine, 6).astype("<f8").tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("config_name", sorted(PINNED_SPECS))
def test_external_dataset_entries_are_pinned(config_name):
    config = load_config(config_name)
    seed, orientations, sets = PINNED_SPECS[config_name]
    assert config["seed"] == seed
    assert config["synth"]["orientations"] == orientations
    assert config["datasets"]["external"] == list(EXTERNAL)
    for name, (n_cases, shape_max) in sets.items():
        entry = config["synth"]["datasets"][name]
        assert entry == {"role": "external", "n_cases": n_cases, "shape_max": shape_max, "labels": LABELS[name]}, name


@pytest.mark.parametrize("config_name,dataset", sorted(PINNED_DIGESTS))
def test_external_case_arrays_are_pinned(tmp_path, config_name, dataset):
    config = load_config(config_name)
    block = dict(config["synth"])
    entry = dict(block["datasets"][dataset], n_cases=1)  # case 0 does not depend on how many follow it
    block["datasets"] = {dataset: entry}
    folder = synthesize_dataset(dataset, tmp_path / dataset, seed=config["seed"], params=block, progress=False)
    assert case_digest(folder) == PINNED_DIGESTS[(config_name, dataset)]
