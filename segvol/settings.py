"""Settings: the workflow config and each stage's `--params`, checked by one schema.

`segvol/config.schema.yaml` is the one place where keys, defaults and limits live. The workflow
validates its whole config with it (`validated_config`, called by `workflow/rules/common.smk`) and
every `segvol <stage> --params` validates its block with the same schema node
(`stage_settings`), so a stage called from the command line behaves like the same stage in the
workflow and a bad value fails before any job runs.

Why not `snakemake.utils.validate` alone: its error is a multi-line dump of the schema node, it
cannot serve the `segvol` commands (which must not import Snakemake), and it does not fill defaults
of `additionalProperties` entries. Validation itself is `jsonschema`'s; this module only fills
defaults and turns the most relevant error into one line that names the key path.

Checks a JSON schema cannot make, done here for the config and the `--params` alike: no number is NaN
or infinite (JSON-schema bounds let NaN through: every comparison with it is false), and a
`text_encoder` that is a path is a Hugging Face model folder that exists (else the run would fail
only when the model is built, hours into a workflow).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("segvol").joinpath("config.schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _fill_defaults(value: Any, node: dict) -> Any:
    if not isinstance(value, Mapping) and value is not None:
        return value
    if node.get("type") == "object" or "properties" in node:
        value = {} if value is None else dict(value)
        for key, child in node.get("properties", {}).items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(node.get("properties", {})):
                value[key] = _fill_defaults(value[key], extra)
    return value


def _key_path(path) -> str:
    return ".".join(str(part) for part in path)


def _describe(error, root: tuple = ()) -> str:
    """One line for a jsonschema error: `<key path>: <problem>` (the path starts with `root`)."""
    where = _key_path([*root, *error.absolute_path])
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        problem = f"unknown key(s) {', '.join(map(repr, unknown))}"
        if known:
            problem += f" (known: {', '.join(known)})"
    elif "propertyNames" in error.schema_path and error.validator == "enum":
        problem = f"unknown key {error.instance!r} (known: {', '.join(map(str, error.validator_value))})"
    elif error.validator == "anyOf":
        expected = " or ".join(branch.get("description", str(branch)) for branch in error.validator_value)
        problem = f"{error.instance!r} is not valid: expected {expected}"
    else:
        problem = error.message
    return f"{where}: {problem}" if where else problem


def _raise_first_error(value: Any, node: dict, root: tuple = (), flag: str = "") -> None:
    """Raise a one-line ValueError for the most relevant way `value` breaks `node`, if any."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(node).iter_errors(value))
    while error is not None and error.parent is not None and error.parent.validator == "anyOf":
        error = error.parent  # "none of the alternatives", not the complaint of one of them
    if error is not None:
        message = _describe(error, root)
        raise ValueError(f"{flag}: {message}" if flag else message)


def _refuse_non_finite(value: Any, path: tuple, flag: str = "") -> None:
    """ValueError naming the key path of the first NaN or infinite number in `value`."""
    if isinstance(value, float) and not math.isfinite(value):
        where = _key_path(path)
        message = f"{where}: {value} is not a finite number" if where else f"{value} is not a finite number"
        raise ValueError(f"{flag}: {message}" if flag else message)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_non_finite(item, (*path, key), flag)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _refuse_non_finite(item, (*path, index), flag)


TEXT_ENCODER_NAMES = ("clip", "minilm")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def text_encoder_folder_problem(value: str) -> str | None:
    """None when `value` names a built-in text encoder or a folder that looks like a Hugging Face
    text model (config.json with a model_type, a tokenizer, weights); else what is wrong."""
    if value in TEXT_ENCODER_NAMES:
        return None
    if not os.path.isdir(value):
        return f"{value!r} is neither {' nor '.join(TEXT_ENCODER_NAMES)} nor an existing folder"
    names = set(os.listdir(value))
    try:
        with open(os.path.join(value, "config.json"), encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if not isinstance(model_type, str):
        return f"{value!r} is not a Hugging Face model folder (no config.json with a model_type)"
    if not names & set(_TOKENIZER_FILES):
        return f"{value!r} holds no tokenizer ({', '.join(_TOKENIZER_FILES)})"
    if not names & set(_WEIGHT_FILES):
        return f"{value!r} holds no model weights ({', '.join(_WEIGHT_FILES)})"
    return None


def _check_model_paths(model: Mapping, root: tuple, flag: str = "") -> None:
    for path, value in (
        (("text_encoder",), model.get("text_encoder")),
        (("overrides", "text_encoder"), (model.get("overrides") or {}).get("text_encoder")),
    ):
        if isinstance(value, str):
            problem = text_encoder_folder_problem(value)
            if problem:
                message = f"{_key_path([*root, *path])}: {problem}"
                raise ValueError(f"{flag}: {message}" if flag else message)


def validated_config(config: Mapping) -> dict:
    """The whole workflow config, checked against the schema, with defaults filled in.

    Raises ValueError naming the key path, e.g. `finetune.lr: 'fast' is not of type 'number'`.
    """
    _refuse_non_finite(dict(config), ())
    _raise_first_error(dict(config), schema())
    filled = _fill_defaults(dict(config), schema())
    if not filled["datasets"]["train"]:
        raise ValueError(
            "datasets.train: no training dataset; fine-tuning (and every table made from its model) needs at least one"
        )
    _check_model_paths(filled["model"], ("model",))
    return filled


def typed_command_line(overrides: Mapping) -> dict:
    """`snakemake --config` values with their YAML types back.

    Snakemake reads `--config 'finetune={steps: 50}'` with YAML's BaseLoader, so nested scalars
    arrive as strings (`{'steps': '50'}`); re-reading each such string with `yaml.safe_load` gives
    `{'steps': 50}` as the README's override promises.
    """

    def retype(value):
        if isinstance(value, Mapping):
            return {key: retype(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [retype(item) for item in value]
        if isinstance(value, str):
            if _EXPONENT.match(value):
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; nobody means that
            try:
                return yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                return value
        return value

    return {key: retype(value) for key, value in overrides.items()}


def stage_settings(stage: str, given: Mapping | str | None = None, flag: str = "--params") -> dict:
    """The settings of `stage`: `given` (a dict or a JSON object string) over the schema defaults.

    `given` is checked against the schema node the workflow validates `<stage>:` with, so an
    unknown key or a bad value is a ValueError naming `flag` and the key path, e.g.
    `--params: finetune.lr: 'fast' is not of type 'number'`.
    """
    if isinstance(given, str):
        try:
            given = json.loads(given) if given.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag}: not valid JSON ({error})") from None
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ValueError(f"{flag}: expected a JSON object (the `{stage}:` config block), got {type(given).__name__}")
    node = schema()["properties"][stage]
    _refuse_non_finite(dict(given), (stage,), flag)
    _raise_first_error(dict(given), node, root=(stage,), flag=flag)
    filled = _fill_defaults(dict(given), node)
    if stage == "model":
        _check_model_paths(filled, ("model",), flag)
    return filled
