"""What made an output: `<output>.provenance.json` beside every table, figure, model file and prediction.

A sidecar records the segvol version, the git commit of the code (and whether the work tree had
changes), the versions of the key packages, Python and platform, the device the command ran on (with the
torchrun world size and the Slurm job id, when there are), the command line, and the sha256 of every input
named on it (files: their bytes; folders such as Zarr stores: the relative path and size of every file plus
the bytes of those outside Zarr chunk folders `c/`, i.e. the metadata, so that a multi-GB store is
identified without reading its chunks). Writers call `write_sidecar(path)` right after the output is in
place; `segvol.cli` registers the command line and `segvol.device.resolve_device` the device. Snakemake's
own records (`--report`, `.snakemake/metadata`) say which rule and parameters made a file but not which
code or packages, so this complements them; the workflow's `provenance` rule gathers the sidecars of the
results into the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path

SUFFIX = ".provenance.json"
# The packages whose version changes a number in our outputs.
PACKAGES = (
    "torch",
    "numpy",
    "monai",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "scipy",
    "pandas",
    "zarr",
    "nibabel",
    "SimpleITK",
    "snakemake",
)
# Folder entries hashed by content (the rest, Zarr chunks, by name and size): outside `c/`, this small.
_METADATA_BYTES = 1 << 20

_context: dict = {"command": None, "device": None}


def set_command(argv: list[str]) -> None:
    """Remember the command line of this process (its existing paths are the inputs)."""
    _context["command"] = list(argv)


def set_device(device) -> None:
    """Remember the device this process computes on (`torch.device` or text)."""
    _context["device"] = str(device)


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (the project's one sha256-of-a-file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike) -> str:
    """Digest of a folder: relative paths and sizes of all files, contents of the metadata files."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        size, relative = path.stat().st_size, path.relative_to(folder)
        digest.update(f"{relative.as_posix()}\0{size}\0".encode())
        if size <= _METADATA_BYTES and "c" not in relative.parts[:-1]:
            digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def digest(path: str | os.PathLike) -> str:
    """sha256 of a file or folder, computed once per process for an unchanged path."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1)
def _git() -> dict:
    """Commit of the repository the segvol package runs from (none for an installed copy)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _inputs(exclude: set[Path]) -> list[dict]:
    """Existing files and folders named on the command line (each once, as paths: with a `/` or a
    suffix), with their sha256."""
    seen, inputs = set(), []
    for token in (_context["command"] or [])[1:]:
        # bare words (the program, subcommands, `cpu`) are not paths even when a folder has that name
        pathlike = "/" in token or "." in token.strip(".")
        if token.startswith("-") or "://" in token or len(token) > 4096 or not pathlike:
            continue
        path = Path(token)
        try:
            if not path.exists():
                continue
            resolved = path.resolve()
        except OSError:
            continue
        if resolved in seen or resolved in exclude or resolved == Path.cwd().resolve():
            continue
        seen.add(resolved)
        inputs.append({"path": token, "sha256": digest(path)})
    return inputs


def record(path: str | os.PathLike, inputs: list[str | os.PathLike] | None = None, **extra) -> dict:
    """The provenance of `path` (already written): see the module docstring. `inputs` adds paths
    (e.g. a checkpoint given by reference) to those of the command line; `extra` adds fields."""
    from segvol import __version__

    path = Path(path)
    outputs = {path.resolve(), sidecar_path(path).resolve()}
    listed = _inputs(outputs)
    named = {entry["path"] for entry in listed}
    for extra_input in inputs or []:
        if str(extra_input) not in named and Path(extra_input).exists():
            listed.append({"path": str(extra_input), "sha256": digest(extra_input)})
    return {
        "output": path.name,
        "sha256": digest(path),
        "segvol": __version__,
        "git": _git(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _context["device"],
        # torchrun's process count, and the Slurm job when the command ran in one
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": platform.node(),
        "command": _context["command"] if _context["command"] is not None else list(sys.argv),
        "inputs": listed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_sidecar(path: str | os.PathLike, inputs: list[str | os.PathLike] | None = None, **extra) -> Path:
    """Write `<path>.provenance.json` (atomically) for the output `path`; returns the sidecar path."""
    from segvol.io.atomic import atomic_path

    payload = record(path, inputs, **extra)
    sidecar = sidecar_path(path)
    with atomic_path(sidecar) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sidecar


def read_sidecar(path: str | os.PathLike) -> dict:
    """The provenance of `path` (its sidecar must exist)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar}: no provenance sidecar for {path}")
    return json.loads(sidecar.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ `segvol provenance` (report tables)


def provenance_table(results: str | os.PathLike):
    """One row per output under `results` that has a sidecar: what made it."""
    import pandas as pd

    rows = []
    for sidecar in sorted(Path(results).rglob("*" + SUFFIX)):
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        rows.append(
            {
                "output": sidecar.relative_to(results).as_posix()[: -len(SUFFIX)],
                "sha256": record.get("sha256", "")[:12],
                "segvol": record.get("segvol"),
                "commit": (record.get("git") or {}).get("commit"),
                "dirty": (record.get("git") or {}).get("dirty"),
                "device": record.get("device"),
                "world_size": record.get("world_size"),
                "slurm_job_id": record.get("slurm_job_id"),
                "torch": (record.get("packages") or {}).get("torch"),
                "inputs": len(record.get("inputs") or []),
                "created": record.get("created"),
            }
        )
    return pd.DataFrame(rows)


def runtime_table(benchmarks: str | os.PathLike):
    """One row per job that Snakemake benchmarked (`benchmark:` TSVs): wall seconds, peak memory."""
    import pandas as pd

    rows = []
    for tsv in sorted(Path(benchmarks).rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        if frame.empty or "s" not in frame:
            continue
        relative = tsv.relative_to(benchmarks).with_suffix("")
        rule = relative.parts[0]
        last = frame.iloc[-1]
        rows.append(
            {
                "rule": rule,
                "job": "/".join(relative.parts[1:]) or rule,
                "seconds": round(float(last["s"]), 2),
                "max_rss_mb": round(float(last.get("max_rss", float("nan"))), 1),
                "max_vms_mb": round(float(last.get("max_vms", float("nan"))), 1),
                "cpu_seconds": round(float(last.get("cpu_time", float("nan"))), 2),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb", "max_vms_mb", "cpu_seconds"])


def add_arguments(parser) -> None:
    parser.add_argument("--results", required=True, help="folder whose outputs carry .provenance.json sidecars")
    parser.add_argument("--benchmarks", required=True, help="folder of Snakemake benchmark TSVs")
    parser.add_argument("--provenance-out", required=True, help="CSV: one row per output and what made it")
    parser.add_argument("--runtime-out", required=True, help="CSV: seconds and peak memory per job")


def _write_csv(frame, path) -> None:
    from segvol.io.atomic import atomic_path

    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def run(args) -> int:
    for folder in (args.results, args.benchmarks):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
    provenance = provenance_table(args.results)
    runtime = runtime_table(args.benchmarks)
    _write_csv(provenance, args.provenance_out)
    _write_csv(runtime, args.runtime_out)
    return 0
