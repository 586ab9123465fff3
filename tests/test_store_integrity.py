"""Stores detect corruption on read: flipped bytes, lost chunks, swapped chunks, broken metadata.

Every store here is written by the real `segvol normalize` / `segvol pseudo` code, then damaged
on disk the way a bad disk, a partial copy or a careless edit would, then read by each consumer
(evaluation, training views, the pseudo stage). Each must refuse with one line that names the
store, the case and the array.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvol.io.store import StoreCorruptError, open_store
from segvol.normalize.convert import build_store
from segvol.settings import stage_settings

SHAPE = (18, 24, 20)  # (x, y, z) of the NIfTI files -> canonical (D, H, W) = (20, 24, 18)
SETTINGS = {"chunks": [4, 8, 8], "shards": [8, 16, 16]}


def write_raw(raw: Path, n_cases: int = 2, seed: int = 0) -> None:
    """Integer HU volumes with a liver box and a spleen box, axis-aligned affines."""
    rng = np.random.default_rng(seed)
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    cases = []
    for index in range(n_cases):
        hu = rng.integers(-1024, 1500, size=SHAPE).astype(np.int16)
        label = np.zeros(SHAPE, np.uint8)
        label[3:9, 4:12, 2:9] = 1
        label[11:15, 15:20, 12:18] = 2
        affine = np.diag([1.5, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(hu, affine), raw / "images" / f"case_{index:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), raw / "labels" / f"case_{index:03d}.nii.gz")
        cases.append(
            {
                "id": f"case_{index:03d}",
                "image": f"images/case_{index:03d}.nii.gz",
                "label": f"labels/case_{index:03d}.nii.gz",
            }
        )
    document = {"name": "intact", "role": "train", "categories": {"liver": [1], "spleen": [2]}, "cases": cases}
    (raw / "dataset.json").write_text(json.dumps(document))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("integrity")
    write_raw(base / "raw")
    return build_store(base / "raw", base / "intact.zarr", 0, stage_settings("normalize", SETTINGS), progress=False)


@pytest.fixture()
def store(pristine, tmp_path) -> Path:
    """A private copy of the pristine store, free to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "damaged.zarr"))


# -- the three readers ------------------------------------------------------------------------


def read_for_evaluation(path: Path, case: str):
    from segvol.evaluate.stores import open_store as open_for_evaluation
    from segvol.evaluate.stores import read_case

    return read_case(open_for_evaluation(path), case)


def read_for_training(path: Path, case: str):
    from segvol.training.volumes import StoreReader, View, read_image

    reader = StoreReader([path], split="all")
    ref = next(ref for ref in reader.cases if ref.case == case)
    image = read_image(reader, ref, View("resize"), (8, 8, 8))
    return image, np.asarray(reader.group(ref)["labels"][...])


def read_for_pseudo(path: Path, case: str):
    from segvol.pseudo.store import read_case

    return read_case(path, case)


READERS = [read_for_evaluation, read_for_training, read_for_pseudo]


def expect_refusal(path: Path, case: str, array: str, problem: str) -> None:
    for reader in READERS:
        with pytest.raises(StoreCorruptError) as error:
            reader(path, case)
        message = str(error.value)
        assert "\n" not in message, reader.__name__
        assert str(path) in message and f"case '{case}'" in message and f"array '{array}'" in message, message
        assert problem in message, message


def test_intact_store_reads_the_same_through_every_reader(pristine):
    evaluated = read_for_evaluation(pristine, "case_001")
    image, labels = read_for_training(pristine, "case_001")
    pseudo_image, pseudo_labels, categories = read_for_pseudo(pristine, "case_001")
    assert np.array_equal(evaluated.image, pseudo_image) and np.array_equal(evaluated.labels, pseudo_labels > 0)
    assert np.array_equal(labels, pseudo_labels) and categories == ["liver", "spleen"]
    assert image.shape == (1, 8, 8, 8) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def flip_byte(path: Path, offset_from_middle: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + offset_from_middle] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_an_image_chunk_is_refused(store):
    flip_byte(store / "case_001" / "image" / "c" / "0" / "0" / "0")
    expect_refusal(store, "case_001", "image", "unreadable chunk (Stored and computed checksum do not match")
    read_for_evaluation(store, "case_000")  # other cases stay readable


def test_flipped_byte_in_a_label_chunk_is_refused(store):
    flip_byte(store / "case_000" / "labels" / "categories" / "0" / "c" / "0" / "0" / "0" / "0", -3)
    expect_refusal(store, "case_000", "labels", "unreadable chunk (Stored and computed checksum do not match")


def test_deleted_image_shard_is_refused(store):
    (store / "case_000" / "image" / "c" / "1" / "0" / "0").unlink()
    expect_refusal(store, "case_000", "image", "chunk file(s) missing, e.g. image/c/1/0/0")


def test_deleted_label_chunk_is_refused(store):
    shards = sorted((store / "case_001" / "labels" / "categories" / "0" / "c" / "1").rglob("*"))
    victim = next(path for path in shards if path.is_file())  # a spleen shard: a whole row of evaluation
    victim.unlink()
    expect_refusal(store, "case_001", "labels", "chunk file(s) missing, e.g. labels/categories/0/c/1/")


@pytest.mark.parametrize("keep", [0, 100])
def test_emptied_or_truncated_shard_is_refused_even_for_a_crop(store, keep):
    from segvol.training.volumes import StoreReader, View, read_image

    shard = store / "case_000" / "image" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:keep])  # zarr reads an empty shard file as fill value
    with pytest.raises(
        StoreCorruptError, match=rf"case 'case_000', array 'image': chunk file image/c/0/0/0 has {keep} bytes"
    ):
        reader = StoreReader([store], split="all")
        read_image(reader, reader.cases[0], View("crop", (0, 0, 0)), (4, 8, 8))


def test_chunk_swapped_for_another_valid_chunk_is_caught_by_the_statistics(store):
    # A whole, checksummed shard of another case: every CRC passes. Its size usually differs
    # (tested above); here the recorded size is made to match, so only the recorded min/max/sum
    # of the volume can tell.
    source = store / "case_000" / "image" / "c" / "1" / "0" / "0"
    target = store / "case_001" / "image" / "c" / "1" / "0" / "0"
    shutil.copyfile(source, target)
    metadata = store / "case_001" / "zarr.json"
    document = json.loads(metadata.read_text())
    document["attributes"]["integrity"]["image"]["chunks"]["1/0/0"] = source.stat().st_size
    metadata.write_text(json.dumps(document))
    expect_refusal(store, "case_001", "image", "differ from the recorded")


@pytest.mark.parametrize(
    "metadata, array",
    [
        ("case_000/image/zarr.json", "image"),
        ("case_000/labels/categories/0/zarr.json", "labels"),
    ],
)
def test_broken_array_metadata_is_refused(store, metadata, array):
    path = store / metadata
    path.write_text(path.read_text()[:-40])
    with pytest.raises(StoreCorruptError) as error:
        read_for_evaluation(store, "case_000")
    assert str(path) in str(error.value) and "corrupt" in str(error.value)


def test_broken_case_and_root_metadata_are_refused(store):
    case_metadata = store / "case_001" / "zarr.json"
    case_metadata.write_text("{ not json")
    for reader in READERS:
        with pytest.raises(StoreCorruptError, match=rf"{case_metadata}: corrupt group of case 'case_001'"):
            reader(store, "case_001")
    (store / "zarr.json").write_text("")
    with pytest.raises(StoreCorruptError, match=rf"{store / 'zarr.json'}: corrupt store metadata"):
        open_store(store)


def test_edited_shape_or_lost_integrity_record_is_refused(store):
    metadata = store / "case_000" / "image" / "zarr.json"
    document = json.loads(metadata.read_text())
    document["shape"][0] -= 4  # still valid zarr, silently drops slices
    metadata.write_text(json.dumps(document))
    expect_refusal(store, "case_000", "image", "differ from the recorded")

    group = store / "case_001" / "zarr.json"
    document = json.loads(group.read_text())
    del document["attributes"]["integrity"]
    group.write_text(json.dumps(document))
    with pytest.raises(StoreCorruptError, match="case 'case_001'.*no 'integrity' record"):
        read_for_evaluation(store, "case_001")


def test_cli_prints_one_line_naming_store_case_and_array(store, tmp_path, capsys):
    from segvol.cli import main

    (store / "case_001" / "image" / "c" / "0" / "0" / "0").unlink()
    out = tmp_path / "pseudo.zarr"
    assert main(["pseudo", "--zarr", str(store), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("segvol pseudo: error: ") and "\n" not in error
    assert str(store) in error and "case 'case_001'" in error and "array 'image'" in error
    assert not out.exists()


def test_pseudo_store_chunks_are_checked_too(pristine, tmp_path):
    from segvol.pseudo.store import write_pseudo_store
    from segvol.training.volumes import LazyGroup

    out = tmp_path / "pseudo.zarr"
    write_pseudo_store(pristine, out, stage_settings("pseudo", {"grid": [8, 12, 12], "min_size": 20}))
    pseudo = LazyGroup(out).get()["case_000"]["pseudo"]
    assert pseudo[...].max() >= 1
    chunk = next(path for path in sorted((out / "case_000" / "pseudo" / "c").rglob("*")) if path.is_file())
    flip_byte(chunk)
    with pytest.raises(
        StoreCorruptError,
        match=rf"{out}: case 'case_000', array 'pseudo': unreadable chunk \(Stored and computed checksum",
    ):
        LazyGroup(out).get()["case_000"]["pseudo"][...]


def test_stores_from_a_newer_segvol_are_refused(store):
    metadata = store / "zarr.json"
    document = json.loads(metadata.read_text())
    document["attributes"]["format_version"] = 99
    metadata.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="format_version 99 is newer"):
        open_store(store)


def test_format_1_stores_are_read_unchecked_with_a_warning(tmp_path, caplog):
    import zarr

    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    root.attrs.update({"dataset": "old", "categories": ["liver"], "cases": ["a"], "format_version": 1})
    image = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    root.create_group("a").create_array("image", data=image)
    with caplog.at_level("WARNING"):
        case = open_store(tmp_path / "old.zarr").case("a")
    assert "read without integrity checks" in caplog.text
    assert "labels" not in case and np.array_equal(case["image"][...], image)  # stored values, not renormalized
