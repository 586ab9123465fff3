"""The dataset registry (config/datasets.yaml): schema, the paper's datasets, shard planning."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import yaml

from segvol.download.registry import (
    categories, expand_stores, load_registry, lookup, shard_names, split_shard, validate,
)

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "config" / "datasets.yaml"

# M3D-Seg codes 0000-0024 (docs/method.md#m3d-seg-files), i.e. the 25 training datasets of the paper's Table 4.
M3D_CODES = {
    "CHAOS": "0000", "HaN-Seg": "0001", "AMOS22": "0002", "AbdomenCT-1k": "0003", "KiTS23": "0004",
    "KiPA22": "0005", "KiTS19": "0006", "BTCV": "0007", "Pancreas-CT": "0008", "3D-IRCADb": "0009",
    "FLARE22": "0010", "TotalSegmentator": "0011", "CT-ORG": "0012", "WORD": "0013", "VerSe19": "0014",
    "VerSe20": "0015", "SLIVER07": "0016", "QUBIQ": "0017", "MSD-colon": "0018",
    "MSD-hepatic_vessel": "0019", "MSD-liver": "0020", "MSD-lung": "0021", "MSD-pancreas": "0022",
    "MSD-spleen": "0023", "LUNA16": "0024",
}


@pytest.fixture(scope="module")
def registry():
    return load_registry(REGISTRY)


def test_registry_has_the_25_training_datasets(registry):
    for name, code in M3D_CODES.items():
        entry = registry[name]
        assert entry["role"] == "train" and entry["m3d_code"] == code
        assert entry["layout"] == {"kind": "m3d", "code": code}
        urls = [f["url"] for f in entry["source"]["files"]]
        assert all(u.startswith("hf://datasets/GoodBaiBai88/M3D-Seg/M3D_Seg/" + code) for u in urls)


def test_external_mri_and_unlabelled_sets(registry):
    for name in ("AMOS22-val", "ULS23", "SegTHOR"):
        assert registry[name]["role"] == "external"
    assert registry["CHAOS-MR"]["modality"] == "MR"
    assert registry["M3D-Cap"]["role"] == "unlabelled"
    assert registry["M3D-Cap"]["source"]["kind"] == "manifest"


def test_checksums_only_where_verified(registry):
    for name, entry in registry.items():
        for item in entry["source"].get("files", []):
            if entry["source"]["verified"]:
                assert re.fullmatch(r"[0-9a-f]{64}", item["sha256"]) and item["size"] > 0, name
            else:
                assert item["sha256"] is None, name
        if entry["source"]["kind"] == "manual":
            assert entry["source"]["register_url"].startswith("http") and entry["source"]["expected_files"]


def test_paper_config_names_are_registered(registry):
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))["datasets"]
    assert paper["train"] == list(M3D_CODES)
    for name in paper["train"] + paper["external"] + paper["unlabelled"]:
        assert name in registry


def test_schema_rejects_bad_entries(registry):
    document = {"datasets": copy.deepcopy(registry)}
    validate(document)
    broken = copy.deepcopy(document)
    broken["datasets"]["CHAOS"]["source"]["files"][0]["sha256"] = "not-a-checksum"
    with pytest.raises(ValueError, match="CHAOS"):
        validate(broken)
    broken = copy.deepcopy(document)
    del broken["datasets"]["SegTHOR"]["source"]["register_url"]
    with pytest.raises(ValueError, match="register_url"):
        validate(broken)
    broken = copy.deepcopy(document)
    broken["datasets"]["MSD-spleen"]["role"] = "training"
    with pytest.raises(ValueError, match="MSD-spleen/role"):
        validate(broken)
    broken = copy.deepcopy(document)
    broken["datasets"]["CHAOS"]["source"]["files"][0]["sha256"] = "0" * 64  # checksum, verified: false
    with pytest.raises(ValueError, match="verified: false"):
        validate(broken)


def test_shards_are_planned_from_n_cases(registry):
    n_cases = registry["M3D-Cap"]["n_cases"]
    names = shard_names("M3D-Cap", registry["M3D-Cap"], 200)
    assert len(names) == math.ceil(n_cases / 200)
    assert names[0] == "M3D-Cap.shard0000" and names[-1] == f"M3D-Cap.shard{len(names) - 1:04d}"
    assert split_shard(names[7]) == ("M3D-Cap", 7)
    assert expand_stores(["CHAOS", "M3D-Cap", "synthetic_x"], registry, 200) == ["CHAOS", *names, "synthetic_x"]
    assert lookup(registry, "M3D-Cap.shard0003")[2] == 3
    with pytest.raises(ValueError, match="no shards"):
        lookup(registry, "CHAOS.shard0000")
    with pytest.raises(ValueError, match="unknown dataset 'Nope'"):
        lookup(registry, "Nope")


def test_categories_from_labels_and_regions():
    entry = {"labels": {"1": "kidney", "2": "kidney tumor", "3": "kidney cyst"}, "regions": {"kidney and masses": [1, 2, 3]}}
    assert categories(entry) == {"kidney": [1], "kidney tumor": [2], "kidney cyst": [3], "kidney and masses": [1, 2, 3]}


def test_missing_registry_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_registry(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_registry(bad)
