import json
import re

import pytest
import yaml

from segvol.settings import schema, stage_settings, typed_command_line, validated_config
from tests.conftest import REPO


def test_defaults_fill_missing_keys():
    settings = stage_settings("finetune", {"steps": 7})
    assert settings["steps"] == 7
    assert settings["lr"] == schema()["properties"]["finetune"]["properties"]["lr"]["default"]


def test_json_string_is_accepted():
    assert stage_settings("pretrain", '{"batch_size": 3}')["batch_size"] == 3


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="stpes"):
        stage_settings("finetune", {"stpes": 3})


def test_the_package_schema_is_the_only_config_schema():
    common = (REPO / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    assert "validated_config(config)" in common and "validate(" not in common.replace("validated_config(", "")
    assert not (REPO / "workflow" / "schemas" / "config.schema.yaml").exists()


# Every way a config was accepted before and failed late (or never).
BAD_SETTINGS = [
    ("finetune", {"steps": -5}, "finetune.steps: -5 is less than the minimum of 0"),
    ("finetune", {"lr": "fast"}, "finetune.lr: 'fast' is not of type 'number'"),
    ("finetune", {"lr": -1e-4}, "finetune.lr: -0.0001 is less than the minimum of 0"),
    ("pretrain", {"checkpoint_every": -1}, "pretrain.checkpoint_every: -1 is less than the minimum of 0"),
    ("finetune", {"gpu": -1}, "finetune.gpu: -1 is less than the minimum of 0"),
    ("pseudo", {"grid": [32, 64]}, "pseudo.grid: [32, 64] is too short"),
    ("model", {"preset": "huge"}, "model.preset: 'huge' is not one of ['base', 'tiny']"),
    ("model", {"text_encoder": "clipp"}, "model.text_encoder: 'clipp' is not valid"),
    ("model", {"overrides": {"num_layer": 6}}, "model.overrides: unknown key 'num_layer'"),
    ("evaluate", {"methods": ["SegVol", "SAMM"]}, "evaluate.methods.1: 'SAMM' is not one of"),
    ("evaluate", {"prompt": "boxes"}, "evaluate.prompt: 'boxes' is not one of"),
    ("evaluate", {"baseline_checkpoints": {"MedSam": None}}, "evaluate.baseline_checkpoints: unknown key 'MedSam'"),
    ("finetune", {"stpes": 3}, "finetune: unknown key(s) 'stpes'"),
]


@pytest.mark.parametrize("stage, given, message", BAD_SETTINGS, ids=[m.split(":")[0] for _, _, m in BAD_SETTINGS])
def test_bad_params_are_one_line_errors_naming_flag_and_key_path(stage, given, message):
    with pytest.raises(ValueError) as error:
        stage_settings(stage, json.dumps(given))
    text = str(error.value)
    assert text.startswith(f"--params: {message}") and "\n" not in text


@pytest.mark.parametrize("stage, given, message", BAD_SETTINGS, ids=[m.split(":")[0] for _, _, m in BAD_SETTINGS])
def test_the_workflow_config_fails_on_the_same_values(stage, given, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config[stage] = {**config.get(stage, {}), **given}
    with pytest.raises(ValueError) as error:
        validated_config(config)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sed": 1}, "unknown key(s) 'sed'"),
        ({"paths": {"rwa": "data/raw"}}, "paths: unknown key(s) 'rwa'"),
        ({"datasets": {"trian": []}}, "datasets: unknown key(s) 'trian'"),
        (
            {"synth": {"datasets": {"a": {"role": "train", "n_cases": 2, "lables": []}}}},
            "synth.datasets.a: unknown key(s) 'lables'",
        ),
    ],
)
def test_top_level_and_paths_typos_are_errors(change, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(change)
    with pytest.raises(ValueError, match=re.escape(message)):
        validated_config(config)


def test_good_values_pass_and_defaults_fill(tmp_path, monkeypatch):
    encoder = tmp_path / "encoders" / "my-bert"
    encoder.mkdir(parents=True)
    (encoder / "config.json").write_text('{"model_type": "bert"}')
    (encoder / "vocab.txt").write_text("[PAD]\n")
    (encoder / "model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    settings = stage_settings("model", '{"text_encoder": "./encoders/my-bert", "overrides": {"num_layers": 6}}')
    assert settings["overrides"] == {"num_layers": 6} and settings["preset"] == "base"
    config = validated_config(
        {"synth": {"datasets": {"a": {"role": "train", "n_cases": 2}}}, "datasets": {"train": ["a"]}}
    )
    assert config["synth"]["datasets"]["a"]["labels"] == [] and config["paths"]["raw"] == "data/raw"


def test_bad_params_json_names_the_flag():
    with pytest.raises(ValueError, match=r"^--model: not valid JSON"):
        stage_settings("model", "{preset: tiny}", flag="--model")
    with pytest.raises(ValueError, match=r"^--params: expected a JSON object"):
        stage_settings("finetune", "[1, 2]")


def test_command_line_overrides_get_their_yaml_types_back():
    # what Snakemake's parse_config makes of --config 'finetune={steps: 50}' ... (YAML BaseLoader)
    given = {
        "finetune": yaml.load("{steps: 50, lr: 1e-3, shared_embedding: false}", Loader=yaml.BaseLoader),
        "pseudo": yaml.load("{grid: [32, 64, 64]}", Loader=yaml.BaseLoader),
        "model": yaml.load("{preset: tiny, init_checkpoint: null}", Loader=yaml.BaseLoader),
        "seed": 7,
    }
    assert given["finetune"]["steps"] == "50"
    typed = typed_command_line(given)
    assert typed == {
        "finetune": {"steps": 50, "lr": 1e-3, "shared_embedding": False},
        "pseudo": {"grid": [32, 64, 64]},
        "model": {"preset": "tiny", "init_checkpoint": None},
        "seed": 7,
    }
    for stage in ("finetune", "pseudo", "model"):
        stage_settings(stage, typed[stage])


def test_enums_are_the_code_registries():
    import dataclasses

    from segvol.evaluate.baselines import BASELINE_PROMPTS
    from segvol.evaluate.prompts import PROMPT_KINDS
    from segvol.model.config import PRESETS, ModelConfig

    model = schema()["properties"]["model"]["properties"]
    evaluate = schema()["properties"]["evaluate"]["properties"]
    assert model["preset"]["enum"] == sorted(PRESETS)
    assert model["overrides"]["propertyNames"]["enum"] == [f.name for f in dataclasses.fields(ModelConfig)]
    assert evaluate["methods"]["items"]["enum"] == ["SegVol", *BASELINE_PROMPTS]
    assert evaluate["baseline_checkpoints"]["propertyNames"]["enum"] == list(BASELINE_PROMPTS)
    assert evaluate["prompt"]["enum"] == list(PROMPT_KINDS)


@pytest.mark.parametrize("config", ["config.yaml", "paper.yaml", "test.yaml"])
def test_every_config_validates(config):
    import jsonschema

    data = yaml.safe_load((REPO / "config" / config).read_text(encoding="utf-8"))
    jsonschema.validate(data, schema())
