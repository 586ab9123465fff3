"""`segvol predict` over many inputs: one model load, --continue skips finished files, outputs on request."""

import json

import nibabel as nib
import numpy as np
import pytest

import segvol.infer.cli as cli
from segvol.cli import main
from tests.test_predict import box_mask, write_phantom

BOX = [10, 5, 10, 30, 20, 40]


@pytest.fixture
def loads(monkeypatch):
    calls = []
    original = cli.load_model

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cli, "load_model", counting)
    return calls


def predict(*args):
    return main(["predict", *map(str, args), "--random-weights", "--preset", "tiny", "--device", "cpu",
                 "--mode", "window", "--box", *map(str, BOX)])


def test_folder_of_inputs_loads_the_model_once_and_continue_skips_finished(tmp_path, loads, caplog):
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


def test_several_inputs_need_a_folder_output(tmp_path, capsys, loads):
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
