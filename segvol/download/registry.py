"""The dataset registry (`config/datasets.yaml`): sources, checksums, licenses, layouts, labels.

Loaded and validated against `segvol/download/datasets.schema.yaml` (linked as
`workflow/schemas/datasets.schema.yaml`). Light on purpose (yaml +
jsonschema only): the workflow imports it at DAG-build time to expand unlabelled datasets into
shards without touching the network.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().with_name("datasets.schema.yaml")
SHARD_PATTERN = re.compile(r"^(?P<base>.+)\.shard(?P<index>\d{4,})$")


def shard_name(base: str, index: int) -> str:
    return f"{base}.shard{index:04d}"


def split_shard(name: str) -> tuple[str, int | None]:
    """`"M3D-Cap.shard0012"` -> `("M3D-Cap", 12)`; a plain name -> `(name, None)`."""
    match = SHARD_PATTERN.match(name)
    if not match:
        return name, None
    return match["base"], int(match["index"])


def n_shards(entry: dict, shard_size: int) -> int:
    """Number of shard jobs of an unlabelled manifest dataset (0 for any other dataset)."""
    if entry.get("source", {}).get("kind") != "manifest":
        return 0
    return math.ceil(int(entry["n_cases"]) / shard_size)


def shard_names(name: str, entry: dict, shard_size: int) -> list[str]:
    return [shard_name(name, index) for index in range(n_shards(entry, shard_size))]


def refuse_unavailable(name: str, entry: dict, where: str | os.PathLike = "registry") -> None:
    """ValueError with the registry's reason when a dataset can no longer be obtained."""
    gone = entry.get("unavailable")
    if gone:
        raise ValueError(
            f"{where}: {name} can no longer be obtained: {gone['reason']} (see {', '.join(gone['evidence'])})"
        )


def expand_stores(names, registry: dict, shard_size: int) -> list[str]:
    """Dataset names as raw/Zarr store names: manifest datasets become their shards.

    A dataset marked `unavailable` is refused here, so a workflow naming it fails when the DAG is
    built rather than in hundreds of download jobs.
    """
    out: list[str] = []
    for name in names:
        entry = registry.get(name)
        if entry is not None:
            refuse_unavailable(name, entry)
        if entry is not None and entry.get("source", {}).get("kind") == "manifest":
            out.extend(shard_names(name, entry, shard_size))
        else:
            out.append(name)
    return out


def validate(document: dict, source: str = "registry") -> None:
    """Raise ValueError naming the dataset and field when `document` breaks the schema."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        problems = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ValueError(f"{source}: invalid dataset registry: " + "; ".join(" ".join(p.split()) for p in problems))
    for name, entry in document["datasets"].items():
        source_kind = entry["source"]["kind"]
        if source_kind == "manifest" and entry.get("n_cases") is None:
            raise ValueError(f"{source}: {name}: a manifest dataset needs n_cases (shards are planned from it)")
        for item in entry["source"].get("files", []):
            if (item.get("sha256") or item.get("md5")) and not entry["source"].get("verified", False):
                raise ValueError(f"{source}: {name}: has a checksum but verified: false; decide which is true")


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or "datasets" not in document:
        raise ValueError(f"{path}: a registry needs a top-level 'datasets:' mapping")
    # JSON round trip: YAML integer keys (label values) become strings, as JSON-Schema expects.
    document = json.loads(json.dumps(document))
    validate(document, path)
    return document


def load_registry(path: str | os.PathLike) -> dict[str, dict]:
    """`{dataset name: entry}` from a registry file, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset registry not found")
    return _load_cached(str(path.resolve()), path.stat().st_mtime)["datasets"]


def lookup(registry: dict, name: str, registry_path: str | os.PathLike = "registry") -> tuple[str, dict, int | None]:
    """Resolve a dataset or shard name to `(base name, entry, shard index or None)`."""
    base, index = split_shard(name)
    if base not in registry:
        known = ", ".join(sorted(registry))
        raise ValueError(f"{registry_path}: unknown dataset {name!r}; registered: {known}")
    entry = registry[base]
    refuse_unavailable(base, entry, registry_path)
    if index is not None and entry["source"]["kind"] != "manifest":
        raise ValueError(f"{registry_path}: {base} is not an unlabelled manifest dataset; {name!r} has no shards")
    return base, entry, index


def categories(entry: dict) -> dict[str, list[int]]:
    """Registry `labels` (value -> name) and `regions` (name -> values) as contract categories."""
    result: dict[str, list[int]] = {}
    for value, name in sorted((entry.get("labels") or {}).items(), key=lambda kv: int(kv[0])):
        if int(value) == 0:
            continue
        result.setdefault(str(name), []).append(int(value))
    for name, values in (entry.get("regions") or {}).items():
        result[str(name)] = sorted({int(v) for v in values})
    return result
