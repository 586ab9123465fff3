"""Stage settings: the `<stage>:` block of the workflow config, with the schema's defaults.

The schema (`segvol/config.schema.yaml`, linked from `workflow/schemas/`) is the one place where
defaults live, so a stage called from the command line behaves like the same stage in the workflow.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("segvol").joinpath("config.schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _fill_defaults(value: Any, node: dict) -> Any:
    if node.get("type") == "object" or "properties" in node:
        value = {} if value is None else dict(value)
        for key, child in node.get("properties", {}).items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], child)
    return value


def stage_settings(stage: str, given: dict | str | None = None) -> dict:
    """The settings of `stage`: `given` (a dict or a JSON object string) over the schema defaults.

    Unknown keys are an error, so that a typo in a config never passes silently.
    """
    if isinstance(given, str):
        given = json.loads(given) if given.strip() else {}
    node = schema()["properties"][stage]
    unknown = sorted(set(given or {}) - set(node.get("properties", {})))
    if unknown:
        raise ValueError(f"unknown key(s) in the '{stage}' settings: {', '.join(unknown)}")
    return _fill_defaults(given or {}, node)
