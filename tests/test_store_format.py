"""Store format 2: source intensities stored (int16 HU for CT), normalized on read bit-identically
to the float32 values format 1 stored; OME-Zarr (NGFF 0.5) metadata that a reader library accepts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvol.io import read_image
from segvol.io.intensity import foreground_statistics
from segvol.io.store import open_store
from segvol.normalize.convert import build_store, fit_chunks
from segvol.settings import stage_settings

SETTINGS = {"chunks": [4, 8, 8], "shards": [8, 16, 16]}


def normalize_the_old_way(image_path: Path, settings: dict) -> np.ndarray:
    """What format 1 stored: the float32 normalized volume, written slab by slab of whole shards,
    with the numpy operations `apply_normalization` used then (frozen here, so that a change to
    the compiled kernel is measured against them)."""
    image = read_image(image_path)
    stats = foreground_statistics(image.array)
    extremes = np.array([stats["lower"], stats["upper"]], dtype=np.float32)
    extremes -= np.float32(stats["mean"])
    extremes /= np.float32(max(stats["std"], 1e-8))
    z_low, z_high = extremes
    span = np.float32(max(float(z_high) - float(z_low), 1e-8))
    _, shards = fit_chunks(image.shape, settings["chunks"], settings["shards"])
    out = np.empty(image.shape, np.float32)
    for start in range(0, image.shape[0], shards[0]):
        block = out[start : start + shards[0]]
        block[...] = image.array[start : start + shards[0]]
        np.clip(block, np.float32(stats["lower"]), np.float32(stats["upper"]), out=block)
        block -= np.float32(stats["mean"])
        block /= np.float32(max(stats["std"], 1e-8))
        block -= z_low
        block /= span
    return out


def one_case_store(tmp_path: Path, image, label=None, settings=None) -> tuple[Path, Path]:
    """(store, image path) of a one-case dataset; `image` is a NIfTI image or a path to one."""
    raw = tmp_path / "raw"
    raw.mkdir()
    if isinstance(image, nib.Nifti1Image):
        nib.save(image, raw / "ct.nii.gz")
        image = raw / "ct.nii.gz"
    case = {"id": "ct", "image": str(image)}
    document = {"name": "format", "role": "unlabelled", "cases": [case]}
    if label is not None:
        case["label"] = str(label)
        document.update(role="train", categories={"liver": [5], "spleen": [1], "aorta": [52]})
    (raw / "dataset.json").write_text(json.dumps(document))
    settings = stage_settings("normalize", SETTINGS if settings is None else settings)
    return build_store(raw, tmp_path / "format.zarr", 0, settings, progress=False), Path(image)


def hu_volume(dtype, low=-1024, high=1500, shape=(18, 24, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 300, size=shape).clip(low, high)
    volume[:, :4] = low  # air
    return volume.astype(dtype) if np.issubdtype(dtype, np.floating) else np.round(volume).astype(dtype)


def with_metal(volume: np.ndarray) -> np.ndarray:
    volume[9:11, 10:12, 10:12] = 60000  # beyond int16
    return volume


@pytest.mark.parametrize(
    "volume, scaled, stored",
    [
        (hu_volume(np.int16), False, np.int16),  # the usual CT
        (hu_volume(np.int16), True, np.int16),  # float64 after scl_slope 0.5: integer HU
        (with_metal(hu_volume(np.uint16, low=0)), False, np.int32),  # too wide for int16
        (hu_volume(np.float32) + np.float32(0.25), False, np.float32),  # fractional values: no integer type fits
    ],
)
def test_read_values_are_bit_identical_to_the_old_float32_store(tmp_path, volume, scaled, stored):
    image = nib.Nifti1Image(volume * 2 if scaled else volume, np.diag([0.8, 0.8, 1.5, 1.0]))
    if scaled:
        image.header.set_slope_inter(0.5, 0)
    store, path = one_case_store(tmp_path, image)
    array = open_store(store).case("ct")["image"]
    assert array.stored_dtype == stored and array.dtype == np.float32
    new = array[...]
    assert np.array_equal(new, normalize_the_old_way(path, stage_settings("normalize", SETTINGS)))
    # windows (training crops) go through the same per-voxel map
    assert np.array_equal(array[3:9, 5:17, 2:11], new[3:9, 5:17, 2:11])


def test_real_ct_is_stored_as_int16_and_reads_bit_identically(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator" / "abdomen_ct_3mm_small"
    store, path = one_case_store(tmp_path, folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz", settings={})
    array = open_store(store).case("ct")["image"]
    assert array.stored_dtype == np.int16
    assert np.array_equal(array[...], normalize_the_old_way(path, stage_settings("normalize", {})))


# -- OME-Zarr ---------------------------------------------------------------------------------


def attributes(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def test_ngff_metadata_validates_and_a_reader_library_gets_the_spacing(tmp_path):
    ngff_zarr = pytest.importorskip("ngff_zarr")
    hu = hu_volume(np.int16)
    label = np.zeros(hu.shape, np.uint8)
    label[3:9, 4:12, 2:9] = 5
    label[11:15, 15:20, 12:18] = 1
    affine = np.diag([0.8, 0.7, 2.5, 1.0])  # x, y, z spacing -> (D, H, W) = (2.5, 0.7, 0.8)
    raw_label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), raw_label)
    store, _ = one_case_store(tmp_path, nib.Nifti1Image(hu, affine), raw_label)
    case = store / "ct"
    spacing = open_store(store).case_attrs("ct")["spacing"]
    assert spacing == pytest.approx([2.5, 0.7, 0.8])

    # the official NGFF 0.5 JSON schemas bundled with ngff-zarr (the non-strict ones: the MUSTs)
    ngff_zarr.validate({"ome": attributes(case)["ome"]}, version="0.5", model="image")
    labels = attributes(case / "labels")["ome"]
    assert labels == {"version": "0.5", "labels": ["categories"]}
    for name in labels["labels"]:
        ngff_zarr.validate({"ome": attributes(case / "labels" / name)["ome"]}, version="0.5", model="label")
    with pytest.raises(Exception, match="required"):  # the check can fail: a label image needs 'image-label'
        ngff_zarr.validate({"ome": attributes(case)["ome"]}, version="0.5", model="label")

    image = ngff_zarr.from_ngff_zarr(str(case), validate=True).images[0]
    assert image.dims == ("z", "y", "x")
    assert [image.scale[axis] for axis in image.dims] == pytest.approx(spacing)
    assert set(image.axes_units.values()) == {"millimeter"}
    assert np.array_equal(np.asarray(image.data), read_image(tmp_path / "raw" / "ct.nii.gz").array)  # HU

    categories = ngff_zarr.from_ngff_zarr(str(case / "labels" / "categories"), validate=True).images[0]
    assert categories.dims == ("c", "z", "y", "x")
    assert [categories.scale[axis] for axis in ("z", "y", "x")] == pytest.approx(spacing)
    assert np.array_equal(np.asarray(categories.data), open_store(store).case("ct")["labels"][...])
