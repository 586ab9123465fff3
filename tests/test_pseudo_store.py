"""`segvol pseudo`: dataset store in, pseudo-label store out, atomic, bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from segvol.cli import main
from segvol.pseudo.labels import case_pseudo_labels
from segvol.settings import stage_settings

PARAMS = {"grid": [12, 24, 24], "min_size": 50}


def blob_image(seed, shape):
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = 0.3 * (h**2 + w**2 < 0.8) + 0.5 * ((h - 0.2) ** 2 + (w + 0.2) ** 2 + d**2 < 0.2)
    return (image + 0.02 * rng.random(shape)).astype(np.float32)


def make_store(path, images, labels=None, categories=("liver",)):
    root = zarr.open_group(str(path), mode="w")
    cases = sorted(images)
    root.attrs.update({"dataset": "toy", "role": "train", "categories": list(categories), "cases": cases})
    for case in cases:
        group = root.create_group(case)
        group.create_array("image", data=images[case])
        if labels is not None:
            group.create_array("labels", data=labels[case])
    return path


@pytest.fixture()
def toy_store(tmp_path):
    images = {"case_000": blob_image(0, (14, 20, 22)), "case_001": blob_image(1, (12, 26, 18))}
    labels = {case: (image > 0.6)[None].astype(np.uint8) for case, image in images.items()}
    return make_store(tmp_path / "toy.zarr", images, labels), images, labels


def test_cli_writes_the_contract(toy_store, tmp_path):
    store, images, labels = toy_store
    out = tmp_path / "pseudo" / "toy.zarr"
    assert main(["pseudo", "--zarr", str(store), "--out", str(out), "--params", json.dumps(PARAMS)]) == 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["cases"] == ["case_000", "case_001"]
    settings = stage_settings("pseudo", PARAMS)
    for case, image in images.items():
        pseudo = root[case]["pseudo"][...]
        assert pseudo.dtype == np.int32 and pseudo.shape == image.shape
        expected, attrs = case_pseudo_labels(image, labels[case], ["liver"], settings)
        assert np.array_equal(pseudo, expected)
        stored = dict(root[case].attrs)
        assert {key: stored[key] for key in attrs} == attrs
        assert stored["integrity"]["pseudo"]["sum"] == [int(expected.sum())]
        assert attrs["gt_ids"] == {"liver": attrs["n_segments"] + 1}
    assert not list(out.parent.glob(".*tmp*"))


def test_process_pool_gives_the_same_store(toy_store, tmp_path):
    store, images, _ = toy_store
    outs = [tmp_path / "one.zarr", tmp_path / "two.zarr"]
    for out, jobs in zip(outs, ("1", "2")):
        assert (
            main(["pseudo", "--zarr", str(store), "--out", str(out), "--jobs", jobs, "--params", json.dumps(PARAMS)])
            == 0
        )
    one, two = (zarr.open_group(str(out), mode="r") for out in outs)
    for case in images:
        assert np.array_equal(one[case]["pseudo"][...], two[case]["pseudo"][...])


def test_unlabelled_store(tmp_path):
    store = make_store(tmp_path / "u.zarr", {"a": blob_image(2, (10, 16, 16))}, categories=())
    out = tmp_path / "u_pseudo.zarr"
    assert main(["pseudo", "--zarr", str(store), "--out", str(out), "--params", json.dumps(PARAMS)]) == 0
    group = zarr.open_group(str(out), mode="r")["a"]
    assert group.attrs["gt_ids"] == {} and group["pseudo"][...].max() == group.attrs["n_segments"] >= 1


@pytest.mark.parametrize(
    "problem,message",
    [
        ("nan", "NaN"),
        ("constant", "constant"),
        ("four_d", "3-D"),
        ("grid", "do not match"),
    ],
)
def test_bad_case_fails_cleanly(tmp_path, capsys, problem, message):
    good = blob_image(3, (10, 16, 16))
    bad = {
        "nan": np.where(good > 0.5, np.nan, good).astype(np.float32),
        "constant": np.full((10, 16, 16), 0.25, np.float32),
        "four_d": good[None],
        "grid": good,
    }[problem]
    labels = {"a": (good > 0.5)[None].astype(np.uint8), "b": np.zeros((1, 10, 16, 17), np.uint8)}
    store = make_store(tmp_path / "bad.zarr", {"a": good, "b": bad}, labels)
    out = tmp_path / "out" / "bad.zarr"
    assert main(["pseudo", "--zarr", str(store), "--out", str(out), "--params", json.dumps(PARAMS)]) == 2
    error = capsys.readouterr().err
    assert message in error and "case 'b'" in error and "bad.zarr" in error
    assert not out.exists() and not list(out.parent.glob(".*"))  # nothing half-written


def test_bad_store_and_params(tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(["pseudo", "--zarr", str(tmp_path / "missing.zarr"), "--out", str(out)]) == 2
    assert "missing.zarr: Zarr store not found" in capsys.readouterr().err
    store = tmp_path / "nocases.zarr"
    zarr.open_group(str(store), mode="w").attrs["dataset"] = "x"
    assert main(["pseudo", "--zarr", str(store), "--out", str(out)]) == 2
    assert "'cases'" in capsys.readouterr().err
    assert main(["pseudo", "--zarr", str(store), "--out", str(out), "--params", '{"sigmaa": 1}']) == 2
    assert "unknown key" in capsys.readouterr().err
    assert not out.exists()
