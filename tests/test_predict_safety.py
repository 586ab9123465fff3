"""`segvol predict` never destroys a user's file and checks everything before loading the model."""

import json
import os
import stat

import pytest
import torch

from segvol.cli import main
from segvol.io.atomic import atomic_path
from tests.test_predict import write_phantom

BOX = ["--box", "10", "5", "10", "30", "20", "40"]


@pytest.fixture
def predict(tiny_checkpoint):
    """`segvol predict ARGS` with a tiny random-weight model (the `tmp_path` argument is not used)."""

    def run(tmp_path, *args):
        return main(["predict", *map(str, args), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])

    return run


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def ct(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_phantom(path, shape=(40, 30, 50))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if the model is loaded: these errors must come before it."""
    import segvol.infer.predict as predict_module

    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predict_module, "load_model", refuse)


def test_output_equal_to_input_is_refused(tmp_path, ct, capsys, no_model, predict):
    before = snapshot(tmp_path)
    assert predict(tmp_path, ct, "-o", ct, *BOX) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    # not even with --overwrite
    assert predict(tmp_path, ct, "-o", ct, *BOX, "--overwrite") == 2
    assert snapshot(tmp_path) == before


def test_output_naming_an_existing_folder_is_refused(tmp_path, ct, capsys, no_model, predict):
    folder = tmp_path / "x.nii.gz"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    before = snapshot(tmp_path)
    assert predict(tmp_path, ct, "-o", folder, *BOX, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "existing folder" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_manifest_never_overwrites_the_prompt_file(tmp_path, ct, capsys, no_model, predict):
    prompts = tmp_path / "organs.json"
    prompts.write_text(json.dumps([{"name": "thing", "box": [10, 5, 10, 30, 20, 40]}]))
    before = snapshot(tmp_path)
    assert predict(tmp_path, ct, "-o", tmp_path / "organs.nii.gz", "--prompts", prompts) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_foreign_existing_file_needs_overwrite_but_our_own_output_is_replaced(tmp_path, ct, capsys, predict):
    out = tmp_path / "seg.nii.gz"
    (tmp_path / "seg.json").write_text('{"my": "notes"}')
    before = snapshot(tmp_path)
    assert predict(tmp_path, ct, "-o", out, *BOX) == 2
    assert "not written by segvol" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert predict(tmp_path, ct, "-o", out, *BOX, "--overwrite") == 0
    assert json.loads((tmp_path / "seg.json").read_text())["format"] == "segvol-predict-manifest"
    # a second run may replace what the first one wrote, without --overwrite
    assert predict(tmp_path, ct, "-o", out, *BOX, "--masks") == 0
    assert (tmp_path / "seg_masks" / "01_prompt.nii.gz").is_file()


def test_bad_prompt_and_bad_image_fail_before_the_model_loads(tmp_path, ct, capsys, no_model, predict):
    assert predict(tmp_path, ct, "-o", tmp_path / "s.nii.gz", "--box", "0", "0", "0", "99", "5", "5") == 2
    assert "outside" in capsys.readouterr().err
    broken = tmp_path / "broken.nrrd"
    broken.write_text("NRRD0004\ntype: garbage\n")
    assert predict(tmp_path, broken, "-o", tmp_path / "b.nii.gz", *BOX) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err and "garbage" in err and ".cxx" not in err
    assert not (tmp_path / "s.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()


def test_inverted_box_names_the_prompt_and_the_axis(tmp_path, ct, capsys, no_model, predict):
    assert (
        predict(
            tmp_path, ct, "-o", tmp_path / "s.nii.gz", "--text", "liver", "--box", "30", "5", "10", "10", "20", "40"
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "prompt 0 'liver' (from --box/--point/--negative-point)" in err and "axis 0: 30 > 10" in err
    assert "(?)" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_one_line(tmp_path, ct, capsys, no_model):
    code = main(["predict", str(ct), "-o", str(tmp_path / "s.nii.gz"), *BOX, "--device", "cuda"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err


def test_pickle_refusal_does_not_advise_weights_only_false(tmp_path):
    import pickle

    from segvol.model.checkpoint import read_weights

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": os.system}))
    with pytest.raises(ValueError) as caught:
        read_weights(path)
    message = str(caught.value)
    assert "never unpickled" in message and "weights_only" not in message and "\n" not in message


def test_atomic_path_refuses_to_replace_a_folder_with_a_file(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="existing folder"):
        with atomic_path(folder) as temporary:
            temporary.write_text("new")
    assert (folder / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_atomic_files_get_umask_permissions_not_0600(tmp_path):
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "m.safetensors") as temporary:
            save_file({"a": torch.zeros(1)}, str(temporary))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644


def test_threads_and_quiet_are_accepted_and_checked(tmp_path, ct, capsys, no_model, predict):
    with pytest.raises(SystemExit) as exit_info:  # checked by the parser, as in every command
        predict(tmp_path, ct, "-o", tmp_path / "s.nii.gz", *BOX, "--threads", "0", "--quiet")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "at least 1, got 0" in err
    # accepted: the command runs (and stops at the prompt that reaches outside the image)
    assert (
        predict(
            tmp_path, ct, "-o", tmp_path / "s.nii.gz", "--box", "0", "0", "0", "99", "5", "5", "--threads", "1", "-q"
        )
        == 2
    )
    assert "outside" in capsys.readouterr().err
