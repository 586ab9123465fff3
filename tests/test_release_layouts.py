"""Release-format fixtures: tiny archives laid out exactly like each real release, fetched from a
loopback HTTP server with the REAL registry entry (templates, case patterns, label maps; only the
URL and checksum point at the fixture), then `segvol download` -> `segvol normalize`.

What each fixture copies from the release (docs/data.md, lists the sources):
- M3D-Seg: `M3D_Seg/<code>.zip` holding `<code>/<code>.json` + `<code>/<case>/image.npy` and
  `mask_(C, X, Y, Z).npz`; 0024 comes as two archives that unpack into one `0024/` folder; 0010
  is AbdomenCT-12organ today (12 organs, one "kidney").
- ULS23: images `ULS23/novel_data/ULS23_<subset>/images/<case>.nii.gz` (X, Y, Z, 1) from Zenodo,
  labels `annotations/ULS23/novel_data/ULS23_<subset>/labels/<case>.nii.gz.zip` in the GitHub
  archive of commit 0abaa82e.
- AMOS22: `amos22/imagesVa|labelsVa/amos_<id>.nii.gz`, ids >= 500 are MRI.
- CHAOS: `Train_Sets/{CT,MR}/<n>/...`, MR T2SPIR `DICOM_anon/*.dcm` + `Ground/*.png`.
- SegTHOR: `train/Patient_XX/Patient_XX.nii.gz` + `GT.nii.gz`.
- MSD: `Task09_Spleen.tar` with dataset.json, imagesTr/labelsTr/imagesTs and macOS `._` files.
- KiTS23: `dataset/case_XXXXX/imaging.nii.gz` + `segmentation.nii.gz`.
- TotalSegmentator v2: `s0000/ct.nii.gz` + `s0000/segmentations/<structure>.nii.gz`, `meta.csv`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from segvol.download.registry import load_registry
from segvol.io.m3d import write_m3d_case
from tests.test_download import _cli, _sha, _zip_bytes, server, write_dicom_series  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(REPO / "config" / "datasets.yaml")
ULS23_COMMIT = "0abaa82eef5656819c6d27b982d44282cd33b423"


# --------------------------------------------------------------------------- helpers


def _real(name: str) -> dict:
    return copy.deepcopy(REGISTRY[name])


def _serve(server, entry: dict, archives: dict[str, bytes]) -> dict:
    """Point the entry's url source at fixture archives on the loopback server (sha256 + md5)."""
    files = []
    for filename, data in archives.items():
        server.files[f"/{filename}"] = data
        files.append(
            {
                "url": f"{server.url}/{filename}",
                "sha256": _sha(data),
                "md5": hashlib.md5(data).hexdigest(),
                "size": len(data),
            }
        )
    entry["source"] = {
        "kind": "url",
        "verified": True,
        "evidence": "test fixture",
        "files": files,
        "allow_http": True,
    }  # the loopback server speaks plain http
    return entry


def _serve_hub(server, monkeypatch, entry: dict, archives: dict[str, bytes]) -> dict:
    """Keep the entry's pinned hf:// URLs; the Hub's resolve endpoint is the loopback server."""
    from huggingface_hub import constants

    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    entry["source"]["allow_http"] = True  # the loopback Hub speaks plain http
    for item in entry["source"]["files"]:
        data = archives[item["url"].rsplit("/", 1)[-1]]
        repo_rev, path = item["url"].removeprefix("hf://datasets/").split("/M3D_Seg/")
        repo, revision = repo_rev.split("@")
        server.files[f"/datasets/{repo}/resolve/{revision}/M3D_Seg/{path}"] = data
        item.update(sha256=_sha(data), size=len(data))
    entry["source"]["verified"] = True
    return entry


def _download(tmp_path, name: str, entry: dict, manual: Path | None = None, capsys=None) -> tuple[int, Path]:
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {name: entry}}))
    out = tmp_path / "raw" / name
    params = {"accept_license": [name]}
    if manual is not None:
        params["manual_dir"] = str(manual)
    rc = _cli(
        "--dataset",
        name,
        "--registry",
        registry,
        "--out",
        out,
        "--downloads",
        tmp_path / "dl",
        "--params",
        json.dumps(params),
    )
    return rc, out


def _normalize(raw: Path, out: Path):
    from segvol.io.store import open_store
    from segvol.normalize.convert import build_store
    from segvol.settings import stage_settings

    build_store(raw, out, 2023, stage_settings("normalize", "{}"), progress=False)
    return open_store(out)


def _niigz(array: np.ndarray, affine=None) -> bytes:
    """A gzipped NIfTI file, as every release ships them (nibabel refuses a plain one named .nii.gz)."""
    import gzip

    import nibabel as nib

    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), mtime=0)


def _volume(rng, shape=(10, 9, 8)) -> np.ndarray:
    return rng.normal(40, 200, size=shape).astype(np.float32)


def _blob_label(shape, values, rng) -> np.ndarray:
    """A label map with one box per value (every category present, no overlap)."""
    label = np.zeros(shape, np.uint8)
    for index, value in enumerate(values):
        label[1 + index % 3 : 4 + index % 3, 1 + 2 * index : 3 + 2 * index, 2:6] = value
    return label


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _folder_zip(folder: Path, prefix: str = "") -> bytes:
    return _zip_bytes(
        {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    )


# --------------------------------------------------------------------------- M3D-Seg


def _m3d_archive_members(tmp_path, code: str, names: list[str], cases: list[str], rng) -> dict[str, dict[str, bytes]]:
    """{case: {member: bytes}} and the json, as the release's zip holds them (`<code>/...`)."""
    work = tmp_path / f"m3d_{code}"
    per_case = {}
    for case in cases:
        image = rng.normal(size=(9, 10, 8)).astype(np.float32)  # (X, Y, Z) after foreground normalization
        channels = np.zeros((len(names), 9, 10, 8), np.uint8)
        for c in range(len(names)):
            channels[c, 1 + c : 3 + c, 2:5, 1:4] = 1
        image_path, mask_path = write_m3d_case(work / code / case, image, channels)
        per_case[case] = {f"{code}/{case}/{p.name}": p.read_bytes() for p in (image_path, mask_path)}
    split = {"train": cases[:-1], "test": cases[-1:]}
    meta = {
        "name": code,
        "description": "fixture",
        "tensorImageSize": "4D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}},
        "numTraining": len(split["train"]),
        "numTest": len(split["test"]),
    }
    for key, chosen in split.items():
        meta[key] = [
            {
                "image": f"{code}/{case}/image.npy",
                "label": f"{code}/{case}/" + next(n for n in per_case[case] if "mask_" in n).split("/")[-1],
            }
            for case in chosen
        ]
    per_case["json"] = {f"{code}/{code}.json": json.dumps(meta).encode()}
    return per_case


def test_m3d_seg_single_archive_from_the_pinned_hub_revision(server, tmp_path, monkeypatch, capsys):
    members = _m3d_archive_members(
        tmp_path, "0023", ["spleen"], ["case_a", "case_b", "case_c"], np.random.default_rng(0)
    )
    archive = _zip_bytes({k: v for part in members.values() for k, v in part.items()})
    entry = _serve_hub(server, monkeypatch, _real("MSD-spleen"), {"0023.zip": archive})
    rc, raw = _download(tmp_path, "MSD-spleen", entry)
    assert rc == 0, capsys.readouterr().err
    assert (
        server.requests[0][0]
        == "/datasets/GoodBaiBai88/M3D-Seg/resolve/56f7deb4b74ad4bf4b2665baf7509fefdd1e9a73/M3D_Seg/0023.zip"
    )
    store = _normalize(raw, tmp_path / "zarr" / "MSD-spleen.zarr")
    assert store.categories == ["spleen"]
    assert sorted(store.attrs["cases"]) == ["case_a", "case_b", "case_c"]


def test_m3d_seg_0024_arrives_as_two_archives_of_one_folder(server, tmp_path, monkeypatch, capsys):
    members = _m3d_archive_members(
        tmp_path, "0024", ["lung nodule"], ["c1", "c2", "c3", "c4"], np.random.default_rng(1)
    )
    first = _zip_bytes({**members["json"], **members["c1"], **members["c2"]})
    second = _zip_bytes({**members["c3"], **members["c4"]})
    entry = _serve_hub(server, monkeypatch, _real("LUNA16"), {"0024_1.zip": first, "0024_2.zip": second})
    rc, raw = _download(tmp_path, "LUNA16", entry)
    assert rc == 0, capsys.readouterr().err
    document = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in document["cases"]] == ["c1", "c2", "c3", "c4"]  # cases of both archives
    store = _normalize(raw, tmp_path / "zarr" / "LUNA16.zarr")
    assert store.categories == ["lung tumor"]  # "lung nodule" unified by the vocabulary


def test_m3d_seg_0010_is_abdomenct_12organ_with_one_kidney(server, tmp_path, monkeypatch, capsys):
    organs = [
        "liver",
        "kidney",
        "spleen",
        "pancreas",
        "aorta",
        "inferior vena cava",
        "right adrenal gland",
        "left adrenal gland",
        "gallbladder",
        "esophagus",
        "stomach",
        "duodenum",
    ]
    members = _m3d_archive_members(tmp_path, "0010", organs, ["a", "b"], np.random.default_rng(2))
    archive = _zip_bytes({k: v for part in members.values() for k, v in part.items()})
    entry = _serve_hub(server, monkeypatch, _real("FLARE22"), {"0010.zip": archive})
    rc, raw = _download(tmp_path, "FLARE22", entry)
    assert rc == 0, capsys.readouterr().err
    document = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    assert len(document["categories"]) == 12 and "kidney" in document["categories"]
    assert "left kidney" not in document["categories"]


# --------------------------------------------------------------------------- ULS23


def _uls23_manual(
    tmp_path, rng, subsets: dict[str, list[str]], labelled: dict[str, list[str]], commit=ULS23_COMMIT
) -> Path:
    manual = tmp_path / "manual" / "ULS23"
    for subset, cases in subsets.items():
        for case in cases:
            path = manual / "ULS23" / "novel_data" / f"ULS23_{subset}" / "images" / f"{case}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_niigz(_volume(rng)[..., None]))  # stored with a trailing singleton axis
    members = {}
    for subset, cases in labelled.items():
        for case in cases:
            label = np.zeros((10, 9, 8, 1), np.uint8)
            label[3:7, 2:6, 2:5] = 1
            inner = _zip_bytes({f"{case}.nii.gz": _niigz(label)})
            members[f"ULS23-{commit}/annotations/ULS23/novel_data/ULS23_{subset}/labels/{case}.nii.gz.zip"] = inner
    members[f"ULS23-{commit}/README.md"] = b"ULS23 Challenge Repository"
    (manual / f"ULS23-{commit}.zip").write_bytes(_zip_bytes(members))
    return manual.parent


def test_uls23_zenodo_images_with_zipped_labels_of_the_pinned_commit(tmp_path, capsys):
    rng = np.random.default_rng(3)
    subsets = {
        "DeepLesion3D": ["000010_02_02_100_lesion_01", "000026_06_01_257_lesion_01"],
        "Radboudumc_Bone": ["bone_0001"],
        "Radboudumc_Pancreas": ["pancreas_0001"],
    }
    manual = _uls23_manual(tmp_path, rng, subsets, subsets)
    rc, raw = _download(tmp_path, "ULS23", _real("ULS23"), manual)
    assert rc == 0, capsys.readouterr().err
    document = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in document["cases"]] == [
        "DeepLesion3D_000010_02_02_100_lesion_01",
        "DeepLesion3D_000026_06_01_257_lesion_01",
        "Radboudumc_Bone_bone_0001",
        "Radboudumc_Pancreas_pancreas_0001",
    ]
    assert all(c["label"].startswith("labels/") and c["label"].endswith(".nii.gz") for c in document["cases"])
    store = _normalize(raw, tmp_path / "zarr" / "ULS23.zarr")
    assert store.categories == ["lesion"]
    labels = np.asarray(store.case("Radboudumc_Bone_bone_0001")["labels"])
    assert labels.shape[0] == 1 and labels.sum() == 4 * 4 * 3  # the unzipped lesion, voxel for voxel


def test_uls23_later_commit_with_fewer_labels_is_refused(tmp_path, capsys):
    """After b41cbcc6 some labels were removed: pairing must fail loudly, not evaluate fewer cases."""
    rng = np.random.default_rng(4)
    subsets = {"Radboudumc_Bone": ["bone_0001", "bone_0002"]}
    manual = _uls23_manual(tmp_path, rng, subsets, {"Radboudumc_Bone": ["bone_0001"]})
    rc, raw = _download(tmp_path, "ULS23", _real("ULS23"), manual)
    assert rc == 2
    assert "1 label file(s) missing" in capsys.readouterr().err and not raw.exists()


def test_zipped_label_with_more_than_one_file_is_refused(tmp_path):
    from segvol.download.layouts import unzip_label

    archive = tmp_path / "case.nii.gz.zip"
    archive.write_bytes(_zip_bytes({"a.nii.gz": b"1", "../b.nii.gz": b"2"}))
    with pytest.raises(ValueError, match="case.nii.gz.zip: expected one zipped label map"):
        unzip_label(archive, tmp_path / "labels" / "case")
    assert not (tmp_path / "labels").exists() or list((tmp_path / "labels").iterdir()) == []


# --------------------------------------------------------------------------- AMOS22 validation


def test_amos22_validation_keeps_ct_ids_below_500_only(server, tmp_path, capsys):
    rng = np.random.default_rng(5)
    members = {"amos22/dataset.json": b"{}", "amos22/readme.md": b"ids below 500 are CT"}
    for case in ("0008", "0123", "0499", "0500", "0540"):  # 0500 and 0540 are MRI
        members[f"amos22/imagesVa/amos_{case}.nii.gz"] = _niigz(_volume(rng))
        members[f"amos22/labelsVa/amos_{case}.nii.gz"] = _niigz(_blob_label((10, 9, 8), [1, 6, 8], rng))
        members[f"amos22/imagesTr/amos_{case}.nii.gz"] = b"not part of the validation split"
    entry = _serve(server, _real("AMOS22-val"), {"amos22.zip": _zip_bytes(members)})
    rc, raw = _download(tmp_path, "AMOS22-val", entry)
    assert rc == 0, capsys.readouterr().err
    document = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in document["cases"]] == ["0008", "0123", "0499"]
    store = _normalize(raw, tmp_path / "zarr" / "AMOS22-val.zarr")
    assert {"spleen", "liver", "aorta", "inferior vena cava"} <= set(store.categories)  # "arota"/"postcava" unified


# --------------------------------------------------------------------------- CHAOS MR


def test_chaos_mr_dicom_and_png_ground_truth(server, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(6)
    release = tmp_path / "chaos"
    volume = rng.integers(0, 1000, size=(4, 12, 16))
    truth = np.zeros(volume.shape, np.uint8)
    truth[1, 2:6, 3:9] = 1
    truth[2, 6:10, 10:14] = 4
    series = release / "Train_Sets" / "MR" / "1" / "T2SPIR"
    names = write_dicom_series(series / "DICOM_anon", volume)
    (series / "Ground").mkdir()
    grey = {0: 0, 1: 63, 2: 126, 3: 189, 4: 252}
    for k, name in enumerate(names):
        Image.fromarray(np.vectorize(grey.get)(truth[k]).astype(np.uint8)).save(series / "Ground" / f"{name[:-4]}.png")
    (release / "Train_Sets" / "MR" / "1" / "T1DUAL" / "DICOM_anon" / "InPhase").mkdir(parents=True)
    (release / "Train_Sets" / "CT" / "1" / "DICOM_anon").mkdir(parents=True)
    (release / "Train_Sets" / "CT" / "1" / "DICOM_anon" / "i0000,0000b.dcm").write_bytes(b"CT slices are not used")
    entry = _serve(server, _real("CHAOS-MR"), {"CHAOS_Train_Sets.zip": _folder_zip(release)})
    rc, raw = _download(tmp_path, "CHAOS-MR", entry)
    assert rc == 0, capsys.readouterr().err
    store = _normalize(raw, tmp_path / "zarr" / "CHAOS-MR.zarr")
    assert store.attrs["modality"] == "MR" and store.attrs["cases"] == ["1"]
    labels = np.asarray(store.case("1")["labels"])
    by_name = dict(zip(store.categories, labels))
    assert by_name["liver"].sum() == (truth == 1).sum() and by_name["spleen"].sum() == (truth == 4).sum()


# --------------------------------------------------------------------------- SegTHOR, MSD, KiTS23, TotalSegmentator


def test_segthor_train_archive(tmp_path, capsys):
    rng = np.random.default_rng(7)
    manual = tmp_path / "manual" / "SegTHOR"
    manual.mkdir(parents=True)
    members = {}
    for patient in ("Patient_01", "Patient_02"):
        members[f"train/{patient}/{patient}.nii.gz"] = _niigz(_volume(rng))
        members[f"train/{patient}/GT.nii.gz"] = _niigz(_blob_label((10, 9, 8), [1, 2, 3, 4], rng))
    (manual / "train.zip").write_bytes(_zip_bytes(members))
    rc, raw = _download(tmp_path, "SegTHOR", _real("SegTHOR"), manual.parent)
    assert rc == 0, capsys.readouterr().err
    store = _normalize(raw, tmp_path / "zarr" / "SegTHOR.zarr")
    assert sorted(store.categories) == ["aorta", "esophagus", "heart", "trachea"]
    assert store.attrs["cases"] == ["Patient_01", "Patient_02"]


def test_msd_task_tarball_with_dataset_json(server, tmp_path, capsys):
    rng = np.random.default_rng(8)
    members = {
        "Task09_Spleen/dataset.json": json.dumps(
            {
                "name": "Spleen",
                "labels": {"0": "background", "1": "spleen"},
                "numTraining": 2,
                "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}],
            }
        ).encode()
    }
    for case in ("spleen_2", "spleen_3"):
        members[f"Task09_Spleen/imagesTr/{case}.nii.gz"] = _niigz(_volume(rng))
        members[f"Task09_Spleen/labelsTr/{case}.nii.gz"] = _niigz(_blob_label((10, 9, 8), [1], rng))
        members[f"Task09_Spleen/imagesTr/._{case}.nii.gz"] = b"\x00\x05\x16\x07 AppleDouble"
    members["Task09_Spleen/imagesTs/spleen_1.nii.gz"] = _niigz(_volume(rng))
    entry = _serve(server, _real("MSD-spleen-original"), {"Task09_Spleen.tar": _tar_bytes(members)})
    rc, raw = _download(tmp_path, "MSD-spleen-original", entry)
    assert rc == 0, capsys.readouterr().err
    store = _normalize(raw, tmp_path / "zarr" / "MSD.zarr")
    assert store.categories == ["spleen"] and store.attrs["cases"] == ["spleen_2", "spleen_3"]


def test_kits23_case_folders(tmp_path, capsys):
    rng = np.random.default_rng(9)
    manual = tmp_path / "manual" / "KiTS23-original"
    for case in ("case_00000", "case_00001"):
        (manual / "dataset" / case).mkdir(parents=True)
        (manual / "dataset" / case / "imaging.nii.gz").write_bytes(_niigz(_volume(rng)))
        (manual / "dataset" / case / "segmentation.nii.gz").write_bytes(_niigz(_blob_label((10, 9, 8), [1, 2, 3], rng)))
    (manual / "dataset" / "kits23.json").write_text("[]")
    rc, raw = _download(tmp_path, "KiTS23-original", _real("KiTS23-original"), manual.parent)
    assert rc == 0, capsys.readouterr().err
    store = _normalize(raw, tmp_path / "zarr" / "KiTS23.zarr")
    assert sorted(store.categories) == ["kidney", "kidney cyst", "kidney tumor"]
    assert store.attrs["cases"] == ["case_00000", "case_00001"]


def test_totalsegmentator_v2_zip(server, tmp_path, capsys):
    rng = np.random.default_rng(10)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    members = {"meta.csv": b"image_id;age;gender;split\ns0000;60;m;train\ns0001;70;f;test\n"}
    for case in ("s0000", "s0001"):
        members[f"{case}/ct.nii.gz"] = _niigz(_volume(rng), affine)
        for index, structure in enumerate(("kidney_left", "liver", "spleen")):
            mask = np.zeros((10, 9, 8), np.uint8)
            mask[1 + 3 * index : 3 + 3 * index, 2:6, 2:6] = 1
            members[f"{case}/segmentations/{structure}.nii.gz"] = _niigz(mask, affine)
    entry = _serve(
        server, _real("TotalSegmentator-original"), {"Totalsegmentator_dataset_v201.zip": _zip_bytes(members)}
    )
    rc, raw = _download(tmp_path, "TotalSegmentator-original", entry)
    assert rc == 0, capsys.readouterr().err
    store = _normalize(raw, tmp_path / "zarr" / "TS.zarr")
    assert sorted(store.categories) == ["left kidney", "liver", "spleen"]
    labels = np.asarray(store.case("s0001")["labels"])
    assert labels.reshape(3, -1).sum(axis=1).tolist() == [2 * 4 * 4] * 3
