"""The dataset registry (config/datasets.yaml): schema, the paper's datasets, shard planning."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from segvol.download.registry import (
    categories,
    expand_stores,
    load_registry,
    lookup,
    shard_names,
    split_shard,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "config" / "datasets.yaml"

# M3D-Seg codes 0000-0024 (docs/method.md#m3d-seg-files), i.e. the 25 training datasets of the paper's Table 4.
M3D_CODES = {
    "CHAOS": "0000",
    "HaN-Seg": "0001",
    "AMOS22": "0002",
    "AbdomenCT-1k": "0003",
    "KiTS23": "0004",
    "KiPA22": "0005",
    "KiTS19": "0006",
    "BTCV": "0007",
    "Pancreas-CT": "0008",
    "3D-IRCADb": "0009",
    "FLARE22": "0010",
    "TotalSegmentator": "0011",
    "CT-ORG": "0012",
    "WORD": "0013",
    "VerSe19": "0014",
    "VerSe20": "0015",
    "SLIVER07": "0016",
    "QUBIQ": "0017",
    "MSD-colon": "0018",
    "MSD-hepatic_vessel": "0019",
    "MSD-liver": "0020",
    "MSD-lung": "0021",
    "MSD-pancreas": "0022",
    "MSD-spleen": "0023",
    "LUNA16": "0024",
}
# The M3D_Seg/ folder of the Hub repository last changed in this commit (2024-04-22).
M3D_REVISION = "56f7deb4b74ad4bf4b2665baf7509fefdd1e9a73"


@pytest.fixture(scope="module")
def registry():
    return load_registry(REGISTRY)


def test_registry_has_the_25_training_datasets(registry):
    for name, code in M3D_CODES.items():
        entry = registry[name]
        assert entry["role"] == "train" and entry["m3d_code"] == code
        assert entry["layout"] == {"kind": "m3d", "code": code}
        urls = [f["url"] for f in entry["source"]["files"]]
        assert all(u.startswith(f"hf://datasets/GoodBaiBai88/M3D-Seg@{M3D_REVISION}/M3D_Seg/{code}") for u in urls)


def test_every_hub_file_is_pinned_to_a_commit(registry):
    for name, entry in registry.items():
        for item in entry["source"].get("files", []):
            if item["url"].startswith("hf://"):
                assert re.match(r"hf://datasets/[^/]+/[^/@]+@[0-9a-f]{40}/", item["url"]), (name, item["url"])


def test_external_mri_and_unlabelled_sets(registry):
    for name in ("AMOS22-val", "ULS23", "SegTHOR"):
        assert registry[name]["role"] == "external"
    assert registry["CHAOS-MR"]["modality"] == "MR"
    unlabelled = {name for name, entry in registry.items() if entry["role"] == "unlabelled"}
    assert {"M3D-Cap", "FLARE23-unlabelled", "CT-RATE", "RAD-ChestCT", "DeepLesion", "own-unlabelled-CT"} <= unlabelled
    assert all(registry[name]["source"]["kind"] == "manifest" for name in unlabelled)


def test_m3d_cap_is_listed_as_gone_and_refused(registry):
    gone = registry["M3D-Cap"]["unavailable"]
    assert "DMCA" in gone["reason"]
    assert any("M3D-Cap/discussions" in url for url in gone["evidence"])
    with pytest.raises(ValueError, match="M3D-Cap can no longer be obtained: access to the Hub dataset was disabled"):
        lookup(registry, "M3D-Cap.shard0000")
    with pytest.raises(ValueError, match="M3D-Cap can no longer be obtained"):  # at DAG-build time
        expand_stores(["CHAOS", "M3D-Cap"], registry, 200)
    assert not any(entry.get("unavailable") for name, entry in registry.items() if name != "M3D-Cap")


def test_release_facts_that_changed_since_the_paper(registry):
    # 0010 is AbdomenCT-12organ today: the 13-organ FLARE22 map would mismatch, so the release json decides.
    assert registry["FLARE22"]["labels"] is None and "AbdomenCT-12organ" in registry["FLARE22"]["title"]
    # AMOS22 validation: ids below 500 are CT (100 cases); 0500 and up are MRI.
    pattern = re.compile(registry["AMOS22-val"]["layout"]["case_pattern"])
    assert pattern.fullmatch("0499") and pattern.fullmatch("0008")
    assert not pattern.fullmatch("0500") and not pattern.fullmatch("0540")
    assert registry["AMOS22-val"]["n_cases"] == 100
    # ULS23 labels: zipped per case in the GitHub repository, pinned to SegVol's commit (750+744+124).
    uls = registry["ULS23"]
    assert uls["layout"]["label"].startswith("ULS23-0abaa82eef5656819c6d27b982d44282cd33b423/annotations/")
    assert uls["layout"]["label"].endswith("{case}.nii.gz.zip") and uls["n_cases"] == 750 + 744 + 124
    assert registry["KiPA22"]["labels"] == {"1": "Renal vein", "2": "Kidney", "3": "Renal artery", "4": "Tumor"}
    assert registry["WORD"]["license"]["acceptance_required"] and "GPL-3.0" in registry["WORD"]["license"]["name"]
    assert registry["AMOS22"]["license"]["acceptance_required"]


def test_pinned_checksums(registry):
    def checksum(name):
        return [(f.get("sha256"), f.get("md5"), f.get("size")) for f in registry[name]["source"]["files"]]

    assert checksum("FLARE22") == [("14fc6ec278b39c0c738aaa698e8146250888b454a676f8beca04f9a45ae2fd85", None, None)]
    assert checksum("MSD-hepatic_vessel")[0][0] == "1cc287bd53de671f3781bbd481fa2805c2b030028d6acd25ff4d86539d23b2b5"
    assert checksum("MSD-spleen-original") == [(None, "410d4a301da4e5b2f6f86ec3ddba524e", None)]
    assert checksum("TotalSegmentator-original") == [(None, "fe250e5718e0a3b5df4c4ea9d58a62fe", 23_581_218_285)]
    verified = sorted(name for name, entry in registry.items() if entry["source"]["verified"])
    assert len(verified) == 14, verified


def test_checksums_only_where_verified(registry):
    for name, entry in registry.items():
        for item in entry["source"].get("files", []):
            if entry["source"]["verified"]:
                sha256, md5 = item.get("sha256"), item.get("md5")
                assert (sha256 and re.fullmatch(r"[0-9a-f]{64}", sha256)) or (
                    md5 and re.fullmatch(r"[0-9a-f]{32}", md5)
                ), name
                assert item.get("size") is None or item["size"] > 0, name
                assert entry["source"].get("evidence"), name
            else:
                assert item.get("sha256") is None and item.get("md5") is None, name
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
    broken = copy.deepcopy(document)
    broken["datasets"]["CHAOS"]["source"]["files"][0]["md5"] = "0" * 32  # an md5 is a checksum too
    with pytest.raises(ValueError, match="verified: false"):
        validate(broken)
    broken = copy.deepcopy(document)
    broken["datasets"]["CHAOS"]["evidence"] = {"rumour": "https://example.org"}
    with pytest.raises(ValueError, match="CHAOS/evidence"):
        validate(broken)


def test_shards_are_planned_from_n_cases(registry):
    n_cases = registry["CT-RATE"]["n_cases"]
    names = shard_names("CT-RATE", registry["CT-RATE"], 200)
    assert len(names) == math.ceil(n_cases / 200) == 251
    assert names[0] == "CT-RATE.shard0000" and names[-1] == f"CT-RATE.shard{len(names) - 1:04d}"
    assert split_shard(names[7]) == ("CT-RATE", 7)
    assert expand_stores(["CHAOS", "CT-RATE", "synthetic_x"], registry, 200) == ["CHAOS", *names, "synthetic_x"]
    assert lookup(registry, "CT-RATE.shard0003")[2] == 3
    with pytest.raises(ValueError, match="no shards"):
        lookup(registry, "CHAOS.shard0000")
    with pytest.raises(ValueError, match="unknown dataset 'Nope'"):
        lookup(registry, "Nope")


def test_unlabelled_total_of_the_paper_config(registry):
    """What config/paper.yaml pretrains on now that M3D-Cap is gone (docs/data.md)."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))["datasets"]
    assert "M3D-Cap" not in paper["unlabelled"]
    assert sum(registry[name]["n_cases"] for name in paper["unlabelled"]) == 68_412


def test_categories_from_labels_and_regions():
    entry = {
        "labels": {"1": "kidney", "2": "kidney tumor", "3": "kidney cyst"},
        "regions": {"kidney and masses": [1, 2, 3]},
    }
    assert categories(entry) == {"kidney": [1], "kidney tumor": [2], "kidney cyst": [3], "kidney and masses": [1, 2, 3]}


def test_missing_registry_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_registry(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_registry(bad)


# --------------------------------------------------------------------------- category vocabulary


def test_vocabulary_merges_registry_synth_and_store_names(tmp_path):
    import zarr

    from segvol.vocabulary import known_categories

    store = tmp_path / "mine.zarr"
    zarr.open_group(str(store), mode="w").attrs.update(
        {
            "dataset": "mine",
            "role": "train",
            "modality": "CT",
            "categories": ["left kidney", "gallstone"],
            "cases": [],
            "split": {"train": [], "test": [], "seed": 0, "test_fraction": 0.2},
            "format_version": 1,
        }
    )
    vocabulary = known_categories(REGISTRY, REPO / "config" / "config.yaml", [store])
    # Release spellings become synonyms of one canonical name, with every dataset that carries it.
    assert "arota" in vocabulary["aorta"]["synonyms"]
    assert {"AMOS22", "AMOS22-val", "BTCV", "SegTHOR", "ext_vessels"} <= set(vocabulary["aorta"]["datasets"])
    assert "postcava" in vocabulary["inferior vena cava"]["synonyms"]
    assert {"CT-ORG", "AbdomenCT-1k", "abdomen_a"} <= set(vocabulary["kidney"]["datasets"])
    assert vocabulary["renal vein"]["datasets"] == ["KiPA22"] and vocabulary["lesion"]["datasets"] == ["ULS23"]
    assert "mine" in vocabulary["left kidney"]["datasets"] and vocabulary["gallstone"]["datasets"] == ["mine"]
    assert "vertebrae l6" in vocabulary and "banana" not in vocabulary
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        known_categories(tmp_path / "nope.yaml")


def test_categories_command(capsys):
    from segvol.cli import main

    assert main(["categories", "renal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "7 categories"  # renal artery/vein, kidney tumor/cyst (renal ...), the adrenal glands
    assert any(line.startswith("renal vein") and line.endswith("| KiPA22") for line in lines)
    assert any(line.startswith("kidney tumor") and "renal tumor" in line for line in lines)
    assert main(["categories", "--json"]) == 0
    vocabulary = json.loads(capsys.readouterr().out)
    assert vocabulary["gallbladder"]["synonyms"] == ["gall bladder"]
    assert "AMOS22" in vocabulary["gallbladder"]["datasets"] and "BTCV" in vocabulary["gallbladder"]["datasets"]


def test_predict_warns_about_unknown_text_and_refuses_it_with_strict(tmp_path, caplog, capsys):
    from segvol.cli import main
    from segvol.infer.prompts import command_line_records
    from segvol.vocabulary import check_text_prompt

    assert check_text_prompt("Kidney_Left", strict=True) == "left kidney"
    with caplog.at_level("WARNING"):
        records = command_line_records(["banana", "liver"])
    assert [r["text"] for r in records] == ["banana", "liver"]  # warned, still segmented
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'banana' is not a category" in warnings[0]
    with pytest.raises(ValueError, match=r"'livr'.*did you mean 'liver'.*--strict"):
        command_line_records(["livr"], strict=True)
    # Through the command: one line, exit 2, before any file is read or written.
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(tmp_path / "absent.nii.gz"), "-o", str(out), "--text", "spleeen", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segvol predict: error: text prompt 'spleeen'") and "'spleen'" in err and not out.exists()
