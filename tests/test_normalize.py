"""segvol.normalize: intensity recipe, vocabulary, split, Zarr store layout, failure atomicity."""

from __future__ import annotations

import argparse
import json
import pickle

import nibabel as nib
import numpy as np
import pytest

from segvol.io import intensity
from segvol.io.intensity import foreground_normalize
from segvol.io.store import open_store
from segvol.normalize import cli
from segvol.normalize.convert import fit_chunks, split_cases
from segvol.vocabulary import canonical_name

# --------------------------------------------------------------------------- intensity


def test_normalization_matches_hand_computed_example():
    hu = np.array([0, 0, 0, 0, 0, 0, 10, 20, 30, 40], dtype=np.int16)
    # mean 10 -> kept {20, 30, 40}; 0.05th pct = 20 + 0.001*10 = 20.01, 99.95th = 30 + 0.999*10 = 39.99;
    # clipping then z-scoring then min-max is (clip(x) - 20.01) / (39.99 - 20.01).
    expected = np.array([0, 0, 0, 0, 0, 0, 0, 0, 9.99 / 19.98, 1.0])
    result = foreground_normalize(hu)
    assert result.dtype == np.float32
    assert np.allclose(result, expected, atol=1e-6)


def _reference(hu: np.ndarray) -> np.ndarray:
    x = hu.astype(np.float64)
    kept = x[x > x.mean()]
    lower, upper = np.percentile(kept, 0.05), np.percentile(kept, 99.95)
    z = (np.clip(x, lower, upper) - kept.mean()) / max(kept.std(), 1e-8)
    return (z - z.min()) / max(z.max() - z.min(), 1e-8)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_normalization_matches_float64_reference(monkeypatch, dtype):
    monkeypatch.setattr(intensity, "_BLOCK", 1000)  # many blocks on a small volume
    rng = np.random.default_rng(3)
    hu = rng.normal(-200, 400, size=(20, 30, 40)).astype(dtype)
    hu[:5] = -1024  # air
    if dtype == np.int32:
        hu[0, 0, 0] = 5_000_000  # too wide a range for the histogram: the generic path
    result = foreground_normalize(hu)
    assert result.dtype == np.float32 and result.shape == hu.shape
    assert result.min() == 0.0 and result.max() == pytest.approx(1.0)
    assert np.allclose(result, _reference(hu), atol=2e-6)
    stats = intensity.foreground_statistics(hu)
    kept = hu[hu > hu.mean()].astype(np.float64)
    assert stats["std"] == pytest.approx(kept.std(), rel=1e-9)
    assert stats["lower"] == pytest.approx(np.percentile(kept, 0.05), abs=1e-9)
    assert stats["upper"] == pytest.approx(np.percentile(kept, 99.95), abs=1e-9)


def test_slabwise_normalization_equals_whole_volume():
    hu = np.random.default_rng(5).integers(-1000, 1500, size=(9, 6, 7)).astype(np.int16)
    stats = intensity.foreground_statistics(hu)
    slabs = np.concatenate([intensity.apply_normalization(hu[i : i + 4], stats) for i in range(0, 9, 4)])
    assert np.array_equal(slabs, foreground_normalize(hu))


def test_constant_and_nan_volumes_are_rejected():
    with pytest.raises(ValueError, match="constant"):
        foreground_normalize(np.full((4, 4, 4), 7, np.int16))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        foreground_normalize(bad)


# --------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("kidney left", "left kidney"),
        ("kidney_left", "left kidney"),
        ("Left_Kidney", "left kidney"),
        ("postcava", "inferior vena cava"),
        ("arota", "aorta"),
        ("gall bladder", "gallbladder"),
        ("gall_bladder", "gallbladder"),
        ("liver tumour", "liver tumor"),
        ("Liver Cancer", "liver tumor"),
        ("adrenal_gland_right", "right adrenal gland"),
        ("  Spleen ", "spleen"),
        ("celiac_trunk", "celiac trunk"),  # unknown: passes through normalized
    ],
)
def test_vocabulary_maps_synonyms(raw, canonical):
    assert canonical_name(raw) == canonical


def test_vocabulary_rejects_empty_names():
    with pytest.raises(ValueError):
        canonical_name(" _ ")


# --------------------------------------------------------------------------- split, chunks


def test_split_is_deterministic_and_sized():
    ids = [f"case_{i:03d}" for i in range(14)]
    first = split_cases(ids, "train", seed=2023, test_fraction=0.2)
    again = split_cases(list(reversed(ids)), "train", seed=2023, test_fraction=0.2)
    assert first == again
    assert len(first["test"]) == 3 and sorted(first["train"] + first["test"]) == ids
    assert first["seed"] == 2023 and first["test_fraction"] == 0.2
    others = {tuple(split_cases(ids, "train", seed=s, test_fraction=0.2)["test"]) for s in range(10)}
    assert len(others) > 1  # the seed matters
    assert split_cases(ids[:2], "train", 0, 0.2)["test"].__len__() == 1  # tiny sets still get a test case
    assert split_cases(ids, "external", 0, 0.2) == {"train": [], "test": ids, "seed": 0, "test_fraction": 0.2}
    assert split_cases(ids, "unlabelled", 0, 0.2)["train"] == ids


def test_fit_chunks_clips_to_volume():
    assert fit_chunks((20, 512, 512), [32, 128, 128], [128, 512, 512]) == ((20, 128, 128), (20, 512, 512))
    assert fit_chunks((100, 300, 300), [32, 128, 128], [128, 512, 512]) == ((32, 128, 128), (128, 384, 384))


# --------------------------------------------------------------------------- store


RAS = np.diag([1.5, 1.0, 1.0, 1.0])
LPS = np.diag([-1.5, -1.0, 1.0, 1.0])


def _phantom(rng, shape=(10, 12, 8)):
    """A CT-like volume: air frame, soft tissue body, an organ (1) holding a lesion (2), a kidney (3)."""
    ct = np.full(shape, -1000, np.int16)
    ct[2:-2, 2:-2, 1:-1] = rng.integers(-50, 80, size=(shape[0] - 4, shape[1] - 4, shape[2] - 2))
    label = np.zeros(shape, np.uint8)
    label[3:6, 3:7, 2:5] = 1
    label[4, 4, 3] = 2
    label[6:8, 8:10, 2:4] = 3
    return ct, label


def _write_dataset(root, role="train", n_cases=5, bad_case=None):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases, volumes = [], {}
    for i in range(n_cases):
        ct, label = _phantom(rng)
        affine = RAS if i % 2 == 0 else LPS
        case_id = f"case_{i:03d}"
        nib.save(nib.Nifti1Image(ct, affine), root / "images" / f"{case_id}.nii.gz")
        label_affine = affine.copy()
        if case_id == bad_case:
            label_affine[0, 3] += 30.0
        nib.save(nib.Nifti1Image(label, label_affine), root / "labels" / f"{case_id}.nii.gz")
        entry = {"id": case_id, "image": f"images/{case_id}.nii.gz"}
        if role != "unlabelled":
            entry["label"] = f"labels/{case_id}.nii.gz"
        cases.append(entry)
        volumes[case_id] = (ct, label, affine)
    spec = {
        "name": "phantoms",
        "role": role,
        "modality": "CT",
        "categories": {"liver": [1, 2], "liver_tumour": [2], "Kidney_Left": [3], "hepatic tumor": [2]},
        "cases": cases,
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return volumes


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    # Independent of segvol.io: RAS arrays just reverse their axes; LPS ones first flip x and y.
    if affine[0, 0] < 0:
        array = array[::-1, ::-1, :]
    return array.transpose(2, 1, 0)


def _normalize(tmp_path, params=None):
    """`segvol normalize` through its own CLI module (segvol.cli would import every stage)."""
    out = tmp_path / "store.zarr"
    params = {"chunks": [4, 8, 8], "shards": [8, 16, 16]} if params is None else params
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--raw", str(tmp_path / "raw"), "--out", str(out), "--seed", "7", "--params", json.dumps(params), "--quiet"]
    )
    return cli.run(args), out


def test_store_layout_attrs_and_labels(tmp_path):
    volumes = _write_dataset(tmp_path / "raw")
    code, out = _normalize(tmp_path)
    assert code == 0
    store = open_store(out)
    attrs = store.attrs
    assert attrs["dataset"] == "phantoms" and attrs["role"] == "train" and attrs["modality"] == "CT"
    # liver tumour and hepatic tumor are one category; the order is that of dataset.json.
    assert attrs["categories"] == ["liver", "liver tumor", "left kidney"]
    assert attrs["cases"] == sorted(volumes)
    assert attrs["split"] == split_cases(sorted(volumes), "train", 7, 0.2)
    assert attrs["format_version"] == 2

    for case_id, (ct, label, affine) in volumes.items():
        group = store.case(case_id)
        image = group["image"]
        assert image.dtype == np.float32 and image.shape == ct.shape[::-1]
        assert image.chunks == (4, 8, 8)
        assert np.allclose(image[:], foreground_normalize(_canonical(ct, affine)), atol=1e-7)
        labels = group["labels"][:]
        canonical_label = _canonical(label, affine)
        assert labels.dtype == np.uint8 and labels.shape == (3, *canonical_label.shape)
        assert np.array_equal(labels[0], np.isin(canonical_label, [1, 2]))
        assert np.array_equal(labels[1], canonical_label == 2)  # overlaps the liver channel, both kept
        assert np.array_equal(labels[2], canonical_label == 3)
        case_attrs = store.case_attrs(case_id)
        assert case_attrs["spacing"] == pytest.approx([1.0, 1.0, 1.5])
        assert case_attrs["original_shape"] == list(ct.shape)
        assert np.allclose(case_attrs["original_affine"], affine)
        assert case_attrs["categories_present"] == ["liver", "liver tumor", "left kidney"]
        assert case_attrs["source"].endswith(f"images/{case_id}.nii.gz")
        # to_original puts a canonical array back onto the source grid exactly.
        from segvol.io.orientation import to_original

        assert np.array_equal(to_original(labels[2], case_attrs["to_original"]), label == 3)


def test_store_pickles_without_open_handles(tmp_path):
    _write_dataset(tmp_path / "raw", n_cases=2)
    _, out = _normalize(tmp_path)
    store = open_store(out)
    before = store.case("case_000")["image"][:]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._groups == {}
    assert np.array_equal(clone.case("case_000")["image"][:], before)
    with pytest.raises(ValueError, match="no case"):
        store.case("nope")


def test_unlabelled_and_external_roles(tmp_path):
    _write_dataset(tmp_path / "raw", role="unlabelled", n_cases=3)
    code, out = _normalize(tmp_path)
    store = open_store(out)
    assert code == 0 and store.categories == [] and store.split["test"] == []
    assert "labels" not in store.case("case_000")

    external = tmp_path / "ext"
    _write_dataset(external / "raw", role="external", n_cases=2)
    code, out = _normalize(external)
    assert open_store(out).split["train"] == [] and open_store(out).split["test"] == ["case_000", "case_001"]


def test_bad_case_fails_whole_job_and_leaves_nothing(tmp_path):
    _write_dataset(tmp_path / "raw", bad_case="case_003")
    with pytest.raises(ValueError) as error:
        _normalize(tmp_path)
    message = str(error.value)
    assert "case_003" in message and "labels/case_003.nii.gz" in message and "not on the grid" in message
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]  # neither the store nor a temporary


def test_corrupt_image_and_bad_manifest(tmp_path):
    _write_dataset(tmp_path / "raw", n_cases=2)
    path = tmp_path / "raw" / "images" / "case_001.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"case_001.nii.gz: cannot read NIfTI"):
        _normalize(tmp_path)

    spec = json.loads((tmp_path / "raw" / "dataset.json").read_text(encoding="utf-8"))
    spec["role"] = "training"
    (tmp_path / "raw" / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"dataset\.json: role must be one of"):
        _normalize(tmp_path)
    spec["role"] = "train"
    spec["cases"][0]["image"] = "images/missing.nii.gz"
    (tmp_path / "raw" / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        _normalize(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]


def test_real_cases_normalize(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator"
    raw = tmp_path / "raw"
    raw.mkdir()
    spec = {
        "name": "totalseg",
        "role": "train",
        "categories": {"liver": [5], "spleen": [1], "kidney_left": [3], "aorta": [52]},
        "cases": [
            {
                "id": "abdomen",
                "image": str(folder / "abdomen_ct_3mm_small" / "example_ct_sm.nii.gz"),
                "label": str(folder / "abdomen_ct_3mm_small" / "example_seg.nii.gz"),
            },
            {
                "id": "dicom",
                "image": str(folder / "ct_dicom_series" / "dicom"),
                "label": str(folder / "ct_dicom_series" / "example_seg_dicom.nii.gz"),
            },
        ],
    }
    (raw / "dataset.json").write_text(json.dumps(spec))
    code, out = _normalize(tmp_path, params={})  # default chunks and shards
    assert code == 0
    store = open_store(out)
    assert store.case("dicom")["image"].chunks == (20, 128, 128)
    dicom = store.case("dicom")
    assert dicom["image"].shape == (20, 512, 512)
    image, labels = dicom["image"][:], dicom["labels"][:]
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
    # Contrast-enhanced aorta is brighter than liver after normalization (aorta 177 HU, liver 89).
    assert image[labels[3] == 1].mean() > image[labels[0] == 1].mean()
    assert "liver" in store.case_attrs("abdomen")["categories_present"]


def _read_in_child(store, queue):
    queue.put(float(store.case("case_001")["image"][:].sum()))


def test_store_is_usable_in_a_forked_worker_after_parent_reads(tmp_path):
    import multiprocessing

    _write_dataset(tmp_path / "raw", n_cases=2)
    _, out = _normalize(tmp_path)
    store = open_store(out)
    expected = float(store.case("case_001")["image"][:].sum())  # the parent has used zarr already
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_read_in_child, args=(store, queue))
    worker.start()
    try:
        assert queue.get(timeout=60) == pytest.approx(expected)
    finally:
        worker.join(timeout=10)


def test_category_masks_from_boxes_match_isin():
    from segvol.normalize.convert import _category_mask, _label_boxes

    rng = np.random.default_rng(2)
    labelmap = np.zeros((12, 14, 16), np.uint8)
    for value in (1, 2, 5):
        d, h, w = rng.integers(0, 8, size=3)
        labelmap[d : d + 3, h : h + 4, w : w + 2] = value
    boxes = _label_boxes(labelmap)
    for values in ([1], [2, 5], [1, 2, 5], [3], [5, 200]):
        region, mask = _category_mask(labelmap, values, boxes)
        expected = np.isin(labelmap, values)
        if not expected.any():
            assert mask is None
            continue
        full = np.zeros(labelmap.shape, np.uint8)
        full[region] = mask
        assert np.array_equal(full, expected)
        _, fallback = _category_mask(labelmap, values, None)  # the path for huge label ids
        assert np.array_equal(fallback, expected)
