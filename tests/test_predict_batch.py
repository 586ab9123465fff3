"""`segvol predict` over many inputs: one model load, --continue skips finished files, outputs on request."""

import json

import nibabel as nib
import numpy as np
import pytest

import segvol.infer.predict as predict_module
from segvol.cli import main
from tests.test_predict import box_mask, write_phantom

BOX = [10, 5, 10, 30, 20, 40]


@pytest.fixture
def loads(monkeypatch):
    calls = []
    original = predict_module.load_model

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "load_model", counting)
    return calls


@pytest.fixture
def predict(tiny_checkpoint):
    def run(*args):
        return main(
            [
                "predict",
                *map(str, args),
                "--checkpoint",
                str(tiny_checkpoint),
                "--device",
                "cpu",
                "--mode",
                "window",
                "--box",
                *map(str, BOX),
            ]
        )

    return run


def test_folder_of_inputs_loads_the_model_once_and_continue_skips_finished(tmp_path, loads, caplog, predict):
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed, name in enumerate(["a.nii.gz", "b.nii.gz"]):
        write_phantom(scans / name, shape=(40, 30, 50), seed=seed)
    out = tmp_path / "out"
    assert predict(scans, "-o", out, "--masks") == 0
    assert len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.nii.gz", "a_masks", "b.json", "b.nii.gz", "b_masks"]
    manifest = json.loads((out / "a.json").read_text())
    assert manifest["status"] == "finished" and manifest["outputs"] == ["a_masks/01_prompt.nii.gz", "a.nii.gz"]
    assert manifest["segvol_version"] and manifest["device"] == "cpu" and manifest["seconds"]["total"] > 0
    mask = np.asarray(nib.load(str(out / "a_masks" / "01_prompt.nii.gz")).dataobj)
    assert not np.any(mask.astype(bool) & ~box_mask(mask.shape, BOX))

    write_phantom(scans / "c.nii.gz", shape=(40, 30, 50), seed=2)
    (out / "b.nii.gz").unlink()  # an unfinished input: its output is missing
    before = (out / "a.nii.gz").stat().st_mtime_ns
    caplog.set_level("INFO", logger="segvol")
    assert predict(str(scans / "*.nii.gz"), "-o", out, "--masks", "--continue") == 0
    assert (out / "a.nii.gz").stat().st_mtime_ns == before
    assert (out / "b.nii.gz").is_file() and (out / "c.nii.gz").is_file()
    assert "skipping" in caplog.text and "a.nii.gz" in caplog.text
    assert len(loads) == 2
    # everything finished: no model load at all
    assert predict(scans, "-o", out, "--masks", "--continue") == 0
    assert len(loads) == 2


def test_several_inputs_need_a_folder_output(tmp_path, capsys, loads, predict):
    for seed, name in enumerate(["a.nii.gz", "b.nii.gz"]):
        write_phantom(tmp_path / name, shape=(40, 30, 50), seed=seed)
    assert predict(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", "-o", tmp_path / "x.nii.gz") == 2
    assert "need a folder" in capsys.readouterr().err and not loads


def test_help_hides_test_options_and_documents_indices(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "--random-weights" not in text and "--preset" not in text
    assert "0-based" in text and "InstanceNumber" in text and "--continue" in text


def test_the_product_command_has_no_test_only_model_flags(tmp_path, capsys):
    """Random weights are a test helper (`tiny_checkpoint`), not hidden options of `segvol predict`."""
    for flag in (["--random-weights"], ["--preset", "tiny"], ["--text-encoder", "minilm"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"), "--text", "liver", *flag])
        assert exit_info.value.code == 2
        assert f"unrecognized arguments: {' '.join(flag)}" in capsys.readouterr().err
