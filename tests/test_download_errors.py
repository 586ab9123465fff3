"""Stale temporaries of killed jobs are removed; hf:// and other download errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segvol.download.cleanup import remove_stale_temporaries
from tests.test_download import _cli, _entry, _msd_zip, _registry, _sha, loopback_server


@pytest.fixture
def server():
    yield from loopback_server()


HOUR = 3600


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _aged(path: Path, seconds: float) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)
    return path


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".Spleen.tmp-{dead}"
    (stale_dir / "images").mkdir(parents=True)
    (stale_dir / "images" / "a.nii.gz").write_bytes(b"x" * 100)
    _aged(stale_dir, 2 * HOUR)
    stale_shard = tmp_path / f".Cap.tmp-{dead}.shard0003"
    stale_shard.mkdir()
    _aged(stale_shard, 2 * HOUR)
    alive = tmp_path / f".Spleen.tmp-{os.getppid()}"  # the process running pytest's parent
    alive.mkdir()
    _aged(alive, 2 * HOUR)
    recent = tmp_path / f".Spleen.tmp-{dead + 1_000_000}"  # dead PID, but written to a moment ago
    recent.mkdir()
    other_output = tmp_path / f".Spleen2.tmp-{dead}"
    other_output.write_text("not ours")
    _aged(other_output, 2 * HOUR)

    assert remove_stale_temporaries(tmp_path / "Spleen") == [stale_dir]
    assert remove_stale_temporaries(tmp_path / "Cap.shard0003") == [stale_shard]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, recent.name, other_output.name])


def test_download_removes_stale_temporaries_of_its_output(server, tmp_path):
    data = _msd_zip(1)
    server.files["/s.zip"] = data
    registry = _registry(tmp_path, {"Spleen": _entry(f"{server.url}/s.zip", _sha(data), len(data))})
    raw = tmp_path / "raw"
    stale = raw / f".Spleen.tmp-{_dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"x")
    _aged(stale, 2 * HOUR)
    assert (
        _cli("--dataset", "Spleen", "--registry", registry, "--out", raw / "Spleen", "--downloads", tmp_path / "dl")
        == 0
    )
    assert sorted(p.name for p in raw.iterdir()) == ["Spleen"]


def test_offline_hub_download_is_one_line_and_makes_no_request(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    entry = _entry("hf://datasets/owner/repo/M3D_Seg/0000.zip")
    entry["source"]["kind"] = "hf"
    registry = _registry(tmp_path, {"CHAOS": entry})
    assert (
        _cli(
            "--dataset",
            "CHAOS",
            "--registry",
            registry,
            "--out",
            tmp_path / "raw" / "CHAOS",
            "--downloads",
            tmp_path / "dl",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("segvol download: error: hf://datasets/owner/repo/M3D_Seg/0000.zip: HF_HUB_OFFLINE is set")
    assert str(tmp_path / "dl" / "CHAOS" / "0000.zip") in err
    assert server.requests == []


def test_manual_dataset_instructions_are_one_line(tmp_path, capsys):
    entry = _entry("https://unused.invalid/x.zip")
    entry["source"] = {
        "kind": "manual",
        "verified": False,
        "register_url": "https://example.org/register",
        "expected_files": ["train.zip", "test.zip"],
        "instructions": "two\nlines",
    }
    registry = _registry(tmp_path, {"SegTHOR": entry})
    params = json.dumps({"manual_dir": str(tmp_path / "manual")})
    assert _cli("--dataset", "SegTHOR", "--registry", registry, "--out", tmp_path / "raw", "--params", params) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"segvol download: error: {tmp_path / 'manual' / 'SegTHOR'}/: missing train.zip, test.zip.")
    assert "https://example.org/register" in err and "note: two lines" in err


def test_offline_hf_checkpoint_error_is_one_line_naming_the_reference(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from segvol.model.checkpoint import resolve

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set both.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as error:
        resolve("hf://owner/repo/weights.bin")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("hf://owner/repo/weights.bin: cannot download weights.bin from the Hugging Face Hub")
    assert "HF_HUB_OFFLINE is set" in message


def test_help_explains_verification_transport_and_unpacking():
    """`segvol download --help` prints this module docstring (segvol.cli)."""
    from segvol.download import cli

    text = " ".join((cli.__doc__ or "").split())
    for phrase in (
        "allow_http: true",
        "https to http is always refused",
        "never across a redirect",
        "<file>.sha256",
        "links in archives are never created",
        "download.max_extract_ratio",
        "`md5`",
        "Stale `.<out>.tmp-<pid>`",
    ):
        assert phrase in text, phrase


@pytest.mark.parametrize("filename", ["..", "../Snakefile", "a/b.zip", ""])
def test_download_name_must_be_a_plain_file_name(tmp_path, filename):
    from segvol.download.fetch import RemoteFile, fetch

    with pytest.raises(ValueError, match="is not a plain file name"):
        fetch(RemoteFile("https://example.invalid/x", filename), tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl").exists()


def test_downloaded_manifest_may_not_list_local_files(server, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    server.files["/manifest.txt"] = f"{secret}\n".encode()
    entry = {
        "role": "unlabelled",
        "modality": "CT",
        "license": {"name": "test", "acceptance_required": False},
        "source": {"kind": "manifest", "verified": False, "manifest": f"{server.url}/manifest.txt", "allow_http": True},
        "layout": {"kind": "volumes"},
        "labels": None,
        "n_cases": 1,
    }
    registry = _registry(tmp_path, {"Cap": entry})
    out = tmp_path / "raw" / "Cap.shard0000"
    assert _cli("--dataset", "Cap.shard0000", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 2
    err = capsys.readouterr().err
    assert "manifest.txt: volume 0 is a local path" in err and "may only list URLs" in err
    assert not out.exists()
