"""Untrusted inputs other than images: prompt files, `predict -o`, checkpoint metadata, the workflow config.
Each is refused with one line before it costs time or memory, and before the model is loaded."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from segvol.cli import main
from tests import hostile_files as hostile
from tests.test_predict import write_phantom

REPO = Path(__file__).resolve().parents[1]
BOX = ["--box", "10", "5", "10", "30", "20", "40"]


@pytest.fixture
def predict(tiny_checkpoint):
    """`segvol predict ARGS` with a tiny random-weight model."""

    def run(*args):
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
    import segvol.infer.predict as predict_module

    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predict_module, "load_model", refuse)


# ----------------------------------------------------------------------------- prompt files

BOMB_CHILD = """
import sys, time
from segvol.cli import main
started = time.process_time()
code = main(["predict", sys.argv[1], "-o", sys.argv[2], "--prompts", sys.argv[3], "--checkpoint", sys.argv[4],
             "--device", "cpu"])
print(f"rc={code} cpu_seconds={time.process_time() - started:.3f}")
"""


@pytest.mark.parametrize("key", ["name", "text"])
def test_a_yaml_alias_bomb_in_a_prompt_file_fails_fast_with_one_line(tmp_path, ct, tiny_checkpoint, key):
    """9 levels of aliases (9^9 strings): 42 s and 3.2 GB before, then a traceback. Run in a child with
    an address-space cap and a timeout, so that a regression fails the test, not the machine. The child's
    CPU time is what is bounded (about 0.2 s; the bomb costs tens of seconds of it): its wall time
    also counts the waits of a loaded machine."""
    prompts = hostile.bomb_prompt_file(tmp_path / "organs.yaml", key=key, levels=9)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                BOMB_CHILD,
                str(ct),
                str(tmp_path / "out.nii.gz"),
                str(prompts),
                str(tiny_checkpoint),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb ran for more than 30 s")
    rc, cpu_seconds = (field.split("=")[1] for field in result.stdout.split())
    assert rc == "2" and float(cpu_seconds) < 1.0, result.stdout + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(prompts) in errors[0] and "aliases" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize(
    "record, message",
    [
        ({"name": {"nested": "mapping"}, "box": [10, 5, 10, 30, 20, 40]}, "'name' must be a string, got a mapping"),
        ({"name": 7, "box": [10, 5, 10, 30, 20, 40]}, "'name' must be a string, got 7"),
        ({"text": ["liver", "spleen"]}, "'text' must be a string, got a list of 2 items"),
        ({"text": "liver", "box": ["10", 5, 10, 30, 20, 40]}, "'box' must be 6 numbers"),
        ({"text": "liver", "box": [10, 5, 10, 30, 20, True]}, "'box' must be 6 numbers"),
        ({"text": "liver", "points": [[1, 2, [3]]]}, "'points' must be a list"),
        ({"text": "liver", "points": [[1, 2, 3]], "point_labels": ["1"]}, "'point_labels' must be a list of 1"),
        ({"text": "x" * 5000}, "'text' is 5000 characters long"),
    ],
)
def test_prompt_file_values_are_type_checked_before_they_are_used(
    tmp_path, ct, capsys, no_model, predict, record, message
):
    prompts = tmp_path / "organs.json"
    prompts.write_text(json.dumps([record]))
    before = snapshot(tmp_path)
    assert predict(ct, "-o", tmp_path / "out.nii.gz", "--prompts", prompts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(prompts) in err, err
    assert snapshot(tmp_path) == before


def test_prompt_records_from_code_are_checked_without_converting_huge_values():
    """The same checks for records that come from code (segvol serve's objects): a list nested 9 deep
    (shared references, 9^8 numbers) is refused at once, never converted or printed."""
    from segvol.infer.prompts import Prompt, prompts_from_records

    value = [1] * 6
    for _ in range(8):
        value = [value] * 9
    started = time.perf_counter()
    for key in ("name", "text", "box", "points", "point_labels"):
        record = {"text": "liver", "points": [[1, 2, 3]], key: value}
        with pytest.raises(ValueError, match=f"'{key}' must be"):
            prompts_from_records([record])
        if key != "name":
            with pytest.raises(ValueError, match="must be"):
                Prompt(**{"text": "liver", "points": [[1, 2, 3]], key: value})
    assert time.perf_counter() - started < 1.0


def test_a_yaml_prompt_file_without_aliases_still_works(tmp_path):
    from segvol.infer.prompts import load_prompt_file

    path = tmp_path / "organs.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "liver": {"text": "liver", "box": [1, 2, 3, 4, 5, 6]},
                "spleen": {"points": [[1, 2, 3]], "point_labels": [1]},
            }
        )
    )
    prompts = load_prompt_file(path)
    assert [p.label for p in prompts] == ["liver", "spleen"] and prompts[0].box.tolist() == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- predict -o


def unwritable_targets(tmp_path) -> list[Path]:
    """Outputs no one can write: under /proc (even root cannot create files there) and, when not root,
    in a read-only folder and under a missing folder of a read-only one."""
    targets = [Path("/proc/self/segvol-out/seg.nii.gz")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        targets += [locked / "seg.nii.gz", locked / "missing" / "seg.nii.gz"]
    return targets


def test_an_unwritable_output_is_found_before_the_model_loads(tmp_path, ct, capsys, no_model, predict):
    for target in unwritable_targets(tmp_path):
        before = snapshot(tmp_path)
        assert predict(ct, "-o", target, *BOX) == 2, target
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(target) in err and "cannot be written" in err, err
        assert snapshot(tmp_path) == before


def test_a_missing_output_folder_that_can_be_made_is_fine(tmp_path):
    from segvol.infer.outputs import writable_folder_problem

    assert writable_folder_problem(tmp_path / "new" / "deeper" / "seg.nii.gz") is None
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe left nothing
    assert "cannot create files in /proc/self" in writable_folder_problem(Path("/proc/self/x/seg.nii.gz"))


# ----------------------------------------------------------------------------- checkpoints


def forged_safetensors(path: Path, **config_values) -> Path:
    """A safetensors file of one 4-byte tensor whose metadata describes a model of `config_values`."""
    from segvol.model.config import model_config

    values = {**model_config("tiny").to_dict(), **config_values}
    header = {
        "__metadata__": {"format": "segvol-workflow", "format_version": "1", "model_config": json.dumps(values)},
        "mask_decoder.iou_token.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4)
    return path


@pytest.fixture
def no_build(monkeypatch):
    from segvol.model import checkpoint

    def refuse(*_, **__):
        raise AssertionError("build_model allocated the network before the checkpoint was checked")

    monkeypatch.setattr(checkpoint, "build_model", refuse)


def test_a_700_byte_checkpoint_claiming_64_layers_of_width_65536_is_refused_in_milliseconds(tmp_path, no_build):
    from segvol.model import checkpoint

    path = forged_safetensors(tmp_path / "huge.safetensors", num_layers=64, hidden_size=65536, num_heads=64)
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        checkpoint.load(path)
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "hidden_size: 65536 is greater than the maximum" in message


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_layers": 10**9}, "num_layers: 1000000000 is greater than the maximum"),
        ({"hidden_size": "128"}, "hidden_size: '128' is not of type 'integer'"),
        ({"spatial_size": [1024, 1024, 1024], "patch_size": [2, 2, 2]}, "image tokens, over the limit"),
        ({"dense_box_prompt": "yes"}, "dense_box_prompt: 'yes' is not of type 'boolean'"),
    ],
)
def test_checkpoint_config_values_are_bounded(tmp_path, no_build, values, message):
    from segvol.model import checkpoint

    with pytest.raises(ValueError, match=message):
        checkpoint.load(forged_safetensors(tmp_path / "bad.safetensors", **values))


def test_tensor_shapes_must_fit_the_config_before_the_model_is_built(tmp_path, no_build):
    """Within the limits (128 layers of width 8192: ~100 GB of parameters) but the file holds one
    tensor: refused from the header's shapes, nothing built."""
    from segvol.model import checkpoint

    path = forged_safetensors(
        tmp_path / "big.safetensors", num_layers=128, hidden_size=8192, mlp_dim=32768, num_heads=128, decoder_heads=8
    )
    started = time.perf_counter()
    with pytest.raises(ValueError, match="checkpoint does not fit the model .* missing") as caught:
        checkpoint.load(path)
    assert time.perf_counter() - started < 5.0 and "\n" not in str(caught.value)


def test_our_own_checkpoint_still_loads_exactly(tmp_path):
    from segvol.model import build_model, checkpoint, model_config

    torch.manual_seed(0)
    model = build_model(model_config("tiny"))
    path = checkpoint.save(model, tmp_path / "model.safetensors")
    loaded = checkpoint.load(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# ----------------------------------------------------------------------------- config


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("finetune={lr: .nan}", "finetune.lr: nan is not a finite number"),
        ("pretrain={lr: .inf}", "pretrain.lr: inf is not a finite number"),
        ("pretrain={steps: 1e23}", "pretrain.steps: 1e+23 is greater than the maximum of 10000000"),
        ("finetune={batch_size: 100000}", "finetune.batch_size: 100000 is greater than the maximum"),
        ("datasets={train: []}", "datasets.train: [] should be non-empty"),
        ("model={text_encoder: /etc}", "model.text_encoder: '/etc' is not a Hugging Face model folder"),
        ("model={overrides: {hidden_size: 65536}}", "model.overrides.hidden_size: 65536 is greater than the maximum"),
    ],
)
def test_bad_config_values_are_refused_at_config_check_time(override, message):
    """`snakemake -n --config <override>` as the workflow sees it (the same path as its dry run)."""
    from snakemake.cli import parse_config  # what `--config` uses

    from segvol.settings import typed_command_line, validated_config

    config = demo_config()
    for key, value in typed_command_line(parse_config([override])).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError) as caught:
        validated_config(config)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)


def test_params_refuse_the_same_values():
    from segvol.settings import stage_settings

    with pytest.raises(ValueError, match=r"^--params: finetune.lr: nan is not a finite number"):
        stage_settings("finetune", '{"lr": NaN}')
    with pytest.raises(ValueError, match=r"^--model: model.text_encoder: '/etc' is not a Hugging Face"):
        stage_settings("model", '{"text_encoder": "/etc"}', flag="--model")
    assert stage_settings("model", '{"text_encoder": "minilm"}')["text_encoder"] == "minilm"


def test_a_real_text_encoder_folder_passes(tmp_path):
    from segvol.model.text_encoder import minilm_directory
    from segvol.settings import text_encoder_folder_problem

    assert text_encoder_folder_problem(str(minilm_directory())) is None
    assert "no model weights" in text_encoder_folder_problem(
        _copy_without(minilm_directory(), tmp_path / "enc", "model.safetensors")
    )


def _copy_without(folder: Path, target: Path, missing: str) -> str:
    import shutil

    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(missing, "1_Pooling"))
    return str(target)


def test_a_dry_run_with_a_text_encoder_that_is_not_one_fails_with_one_line():
    from tests.test_workflow import snakemake

    result = snakemake("-n", "--config", "model={text_encoder: /etc}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert any(
        line.startswith("model.text_encoder: '/etc' is not a Hugging Face model folder") for line in output.splitlines()
    ), output[-3000:]
