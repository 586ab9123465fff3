"""Fetch one registered dataset into the raw dataset contract (`<out>/dataset.json` + files).

Sources come from the registry (config/datasets.yaml). Public URLs and Hugging Face files are
downloaded resumably (HTTP Range into `<downloads>/<dataset>/<file>.partial`, continued after a
cut connection or on the next run), retried with backoff, verified, then unpacked safely and
atomically. Datasets whose license needs acceptance fail before any byte is fetched unless
listed in `download.accept_license`; registration-only datasets are taken from
`download.manual_dir/<dataset>/`. Unlabelled manifests are ingested as shards `<name>.shardNNNN`.

verification: a file is only used once it is complete and verified: its size must match the
  server's announced size and the registry's `size`, its `sha256` / `md5` the registry's. Without
  a registry checksum an archive must also pass its own CRCs (zip) or a full read (tar, gzip), and
  a file with no checksum, no announced size and no internal checksum is refused. The observed
  sha256 is written to `<file>.sha256` and logged, so that you can pin it in the registry. A file
  that fails is resumed, or fetched again from byte 0, never kept. Jobs that need the same file
  (the shards of one manifest) take turns on it.
hf:// files: huggingface_hub resolves the revision to one commit (pin it with
  hf://datasets/<owner>/<repo>@<commit>/<path>; the log prints the pinned URL) and, when the
  registry gives no checksum, reads the Hub's LFS sha256 and size (or git blob id) at that commit;
  the bytes come from that commit with the same resumable fetcher. HF_ENDPOINT mirrors are honoured.
transport: only https, unless the registry source sets `allow_http: true`; a redirect from https
  to http is always refused. The Hugging Face token (HF_TOKEN or `huggingface-cli login`) is sent
  only over https to huggingface.co or the host of an https HF_ENDPOINT, never across a redirect
  to another host. With HF_HUB_OFFLINE set, hf:// files must already be downloaded.
unpacking: links in archives are never created (a link to a file of the archive becomes a copy;
  others are refused), nothing is written outside the output folder or through an existing link,
  and archive bombs are refused by member count, total size (download.max_extract_bytes) and
  compression ratio (download.max_extract_ratio, per zip member and per archive).
  Stale `.<out>.tmp-<pid>` folders of killed runs are removed first.

examples:
  segvol download --dataset MSD-spleen --registry config/datasets.yaml --out data/raw/MSD-spleen
  segvol download --dataset KiTS23 --out data/raw/KiTS23 \\
      --params '{"accept_license": ["KiTS23"]}'
  segvol download --dataset M3D-Cap.shard0003 --out data/raw/M3D-Cap.shard0003
  segvol download --list                  # registered datasets, sources, licenses

In the workflow the rule holds the resource `downloads=1`; run e.g.
`snakemake --resources downloads=4 ...` to allow four parallel downloads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from segvol.cli_options import add_common_arguments

log = logging.getLogger("segvol.download")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="registry name, or <name>.shardNNNN for an unlabelled manifest")
    parser.add_argument("--registry", help="registry YAML (default: download.registry = config/datasets.yaml)")
    parser.add_argument("--out", help="raw dataset folder to create (e.g. data/raw/<dataset>)")
    parser.add_argument(
        "--downloads", default="data/downloads", help="where verified archives are kept (default: %(default)s)"
    )
    add_common_arguments(parser, params="download", quiet=True)
    parser.add_argument("--list", action="store_true", help="list the registry and exit")


def _gate(name: str, entry: dict, settings: dict) -> None:
    """License gate: runs before any network request."""
    license_ = entry["license"]
    if license_["acceptance_required"] and name not in settings["accept_license"]:
        where = entry["source"].get("register_url") or license_.get("url") or entry.get("homepage")
        raise ValueError(
            f"{name}: its license ({license_['name']}) must be accepted before download. Read and "
            f"accept it at {where}, then add '{name}' to download.accept_license in your config "
            f'(or --params \'{{"accept_license": ["{name}"]}}\'). Nothing was downloaded.'
        )


def _remote_files(name: str, entry: dict):
    from segvol.download.fetch import RemoteFile

    allow_http = entry["source"].get("allow_http", False)
    for item in entry["source"]["files"]:
        filename = item.get("filename") or item["url"].rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        remote = RemoteFile(item["url"], filename, item.get("sha256"), item.get("size"), item.get("md5"), allow_http)
        yield remote, item.get("extract", True)


def _place(path: Path, dest: Path, extract: bool, limits) -> None:
    """Unpack an archive into `dest`, or link/copy a plain file or folder there."""
    from segvol.download.extract import extract_into, is_archive

    if extract and path.is_file() and is_archive(path):
        log.info("unpacking %s", path)
        extract_into(path, dest, limits)
        return
    target = dest / path.name
    if path.is_dir():
        target.symlink_to(path.resolve(), target_is_directory=True)
        return
    try:
        os.link(path, target)  # same filesystem: no second copy of a large file
    except OSError:
        shutil.copy2(path, target)


def _manual(name: str, entry: dict, settings: dict) -> list[Path]:
    source = entry["source"]
    folder = Path(settings["manual_dir"]) / name
    expected = source["expected_files"]
    missing = [f for f in expected if not (folder / f).exists()]
    if missing:
        note = f"; note: {' '.join(source['instructions'].split())}" if source.get("instructions") else ""
        raise FileNotFoundError(
            f"{folder.resolve()}/: missing {', '.join(missing)}. {name} can only be downloaded by hand: "
            f"register / accept the terms at {source['register_url']}, download exactly "
            f"{', '.join(expected)} and put them there unchanged (archives not unpacked){note}"
        )
    return [folder / f for f in expected]


def _manifest_lines(
    name: str, entry: dict, settings: dict, downloads: Path, fetch_kwargs: dict
) -> tuple[list[str], Path | None]:
    """The manifest's volume lines, and the folder its local paths are relative to (None for a
    downloaded manifest: it may not point into this machine's files)."""
    from segvol.download.fetch import RemoteFile, fetch

    manifest = entry["source"]["manifest"]
    if manifest.startswith(("http://", "https://", "hf://")):
        remote = RemoteFile(
            manifest, manifest.rstrip("/").rsplit("/", 1)[-1], allow_http=entry["source"].get("allow_http", False)
        )
        path = fetch(remote, downloads / name, **fetch_kwargs)
    else:
        path = Path(settings["manual_dir"]) / name / manifest
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: manifest {path} not found. Write one volume path or URL per line "
                f"(optionally followed by its sha256 or md5) into {path}; instructions: "
                f"{entry['source'].get('instructions', entry.get('homepage'))}"
            )
    lines = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if entry["n_cases"] != len(lines):
        raise ValueError(
            f"{path}: lists {len(lines)} volumes but the registry says n_cases: {entry['n_cases']} "
            f"for {name}; fix n_cases (the shard plan is computed from it)"
        )
    return lines, (None if manifest.startswith(("http://", "https://", "hf://")) else path.parent)


def _ingest_shard(
    name: str, index: int, entry: dict, settings: dict, downloads: Path, dest: Path, fetch_kwargs: dict
) -> None:
    from segvol.download.fetch import RemoteFile, fetch
    from segvol.progress import progress_bar

    lines, base_dir = _manifest_lines(name, entry, settings, downloads, fetch_kwargs)
    size = settings["unlabelled_shard_size"]
    chosen = lines[index * size : (index + 1) * size]
    if not chosen:
        raise ValueError(f"{name}.shard{index:04d}: beyond the {len(lines)} volumes of the manifest")
    images = dest / "images"
    images.mkdir()
    for offset, line in enumerate(
        progress_bar(chosen, desc=f"{name} shard {index}", unit="volume", disable=not fetch_kwargs["progress"])
    ):
        location, _, checksum = line.partition(" ")
        checksum = checksum.strip() or None
        number = index * size + offset
        stem = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        filename = f"{number:06d}_{stem}"
        if location.startswith(("http://", "https://", "hf://")):
            kind = "md5" if checksum is not None and len(checksum) == 32 else "sha256"
            remote = RemoteFile(
                location, filename, allow_http=entry["source"].get("allow_http", False), **{kind: checksum}
            )
            # Fetched next to the other downloads (resumable across runs, with its .sha256
            # record), then linked into the shard.
            _place(fetch(remote, downloads / name / "volumes", **fetch_kwargs), images, False, None)
        else:
            if base_dir is None:
                raise ValueError(
                    f"{entry['source']['manifest']}: volume {number} is a local path ({location}); a downloaded "
                    f"manifest may only list URLs"
                )
            path = Path(location) if Path(location).is_absolute() else base_dir / location
            if not path.exists():
                raise FileNotFoundError(f"{path}: volume {number} of the {name} manifest not found")
            (images / filename).symlink_to(path.resolve())


def _list(registry: dict) -> int:
    for name, entry in registry.items():
        source = entry["source"]
        gate = "GONE" if entry.get("unavailable") else "accept" if entry["license"]["acceptance_required"] else "open"
        print(
            f"{name:22s} {entry['role']:10s} {source['kind']:8s} verified={str(source['verified']).lower():5s} "
            f"{gate:6s} {entry['license']['name']}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from segvol.download.cleanup import remove_stale_temporaries
    from segvol.download.extract import Limits
    from segvol.download.fetch import record_path
    from segvol.download.layouts import describe
    from segvol.download.registry import load_registry, lookup
    from segvol.io.atomic import atomic_path
    from segvol.settings import stage_settings

    settings = stage_settings("download", args.params)
    registry_path = args.registry or settings["registry"]
    registry = load_registry(registry_path)
    if args.list:
        return _list(registry)
    if not args.dataset or not args.out:
        raise ValueError("segvol download needs --dataset and --out (or --list)")
    base, entry, shard = lookup(registry, args.dataset, registry_path)
    _gate(base, entry, settings)
    kind = entry["source"]["kind"]
    if kind == "manifest" and shard is None:
        raise ValueError(f"{base}: an unlabelled manifest is downloaded in shards: use --dataset {base}.shard0000 ...")
    if not entry["source"]["verified"]:
        log.warning("%s: source not verified in the registry (no confirmed checksum)", base)

    downloads = Path(args.downloads)
    limits = Limits(settings["max_members"], settings["max_extract_bytes"], settings["max_extract_ratio"])
    fetch_kwargs = {
        "retries": settings["retries"],
        "timeout_s": settings["timeout_s"],
        "progress": not args.quiet,
    }
    # Manual files are checked before the output folder is touched.
    manual_paths = _manual(base, entry, settings) if kind == "manual" else []
    remove_stale_temporaries(args.out)

    with atomic_path(args.out) as temporary:
        temporary.mkdir(parents=True)
        if kind in ("url", "hf"):
            from segvol.download.fetch import fetch

            for remote, extract in _remote_files(base, entry):
                path = fetch(remote, downloads / base, **fetch_kwargs)
                _place(path, temporary, extract, limits)
        elif kind == "manual":
            for path in manual_paths:
                _place(path, temporary, True, limits)
        else:
            _ingest_shard(base, shard, entry, settings, downloads, temporary, fetch_kwargs)
        document = describe(temporary, args.dataset, entry)
        (temporary / "dataset.json").write_text(json.dumps(document, indent=1) + "\n")
    log.info(
        "%s: %d cases, %d categories -> %s", args.dataset, len(document["cases"]), len(document["categories"]), args.out
    )
    if not settings["keep_archives"] and kind in ("url", "hf"):
        for remote, extract in _remote_files(base, entry):
            archive = downloads / base / remote.filename
            if extract and archive.exists():
                archive.unlink()
                record_path(archive).unlink(missing_ok=True)
    return 0
