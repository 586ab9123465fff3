"""A download is never "done" until verified, with or without a registry checksum.

Regression tests of an outside audit: a download truncated by a connection that closed early
(no Content-Length, no sha256 in the registry) was kept under its final name and treated as done
forever: 0 requests on every rerun and "File is not a zip file" every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from segvol.download.fetch import RemoteFile, fetch, recorded_sha256
from tests.test_download import (
    FAST,
    _cli,
    _entry,
    _loopback_file,
    _msd_zip,
    _registry,
    _sha,
    _zip_bytes,
    loopback_server,
)


@pytest.fixture
def server():
    yield from loopback_server()


MSD_SPLEEN_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"  # as published for Task09_Spleen.tar


def _random_zip(n_bytes=150_000) -> bytes:
    return _zip_bytes({"a.bin": os.urandom(n_bytes)})


def test_connection_closed_early_without_size_or_checksum_is_resumed(server, tmp_path):
    data = _random_zip()
    server.files["/t.zip"] = data
    server.send_length = False  # the end of the body is only where the connection closes
    server.cuts_left, server.cut_after = 1, 60_000
    path = fetch(_loopback_file(f"{server.url}/t.zip", "t.zip"), tmp_path, **FAST)
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=60000-"]
    assert (tmp_path / "t.zip.sha256").read_text() == f"{_sha(data)}  t.zip\n"
    assert recorded_sha256(path) == _sha(data)
    # Verified and recorded: a rerun makes no request.
    fetch(_loopback_file(f"{server.url}/t.zip", "t.zip"), tmp_path, **FAST)
    assert len(server.requests) == 2


def test_truncated_file_kept_under_its_final_name_is_resumed_on_the_next_run(server, tmp_path, caplog):
    """What an older version left: a truncated zip at the final path, no checksum anywhere."""
    data = _msd_zip()
    server.files["/Task09_Spleen.zip"] = data
    registry = _registry(tmp_path, {"Spleen": _entry(f"{server.url}/Task09_Spleen.zip")})
    kept = tmp_path / "dl" / "Spleen" / "Task09_Spleen.zip"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data[: len(data) // 2])
    out = tmp_path / "raw" / "Spleen"
    with caplog.at_level(logging.WARNING, logger="segvol"):
        assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 0
    assert server.requests == [("/Task09_Spleen.zip", f"bytes={len(data) // 2}-")]
    assert kept.read_bytes() == data
    assert json.loads((out / "dataset.json").read_text())["cases"][0]["id"] == "spleen_0"
    # The observed checksum is printed so that it can be pinned, and recorded next to the file.
    assert f"sha256: {_sha(data)}, size: {len(data)}" in caplog.text
    assert recorded_sha256(kept) == _sha(data)
    # A file that no longer matches its record is resumed again, not trusted.
    kept.write_bytes(data[:1000])
    assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 0
    assert server.requests[-1] == ("/Task09_Spleen.zip", "bytes=1000-") and kept.read_bytes() == data


def test_corrupt_archive_is_removed_and_fetched_again(server, tmp_path):
    data = bytearray(_random_zip())
    data[len(data) // 3] ^= 0xFF  # inside the member data: only the CRC can tell
    server.files["/c.zip"] = bytes(data)
    with pytest.raises(ValueError, match=r"c.zip: .*corrupt.*removed; rerun to fetch it again"):
        fetch(_loopback_file(f"{server.url}/c.zip", "c.zip"), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []
    fixed = _random_zip()
    server.files["/c.zip"] = fixed
    assert fetch(_loopback_file(f"{server.url}/c.zip", "c.zip"), tmp_path, **FAST).read_bytes() == fixed
    assert server.requests[-1][1] is None  # from byte 0


def test_unverifiable_file_is_refused(server, tmp_path):
    server.files["/v.nii"] = b"\x00" * 5000
    server.send_length = False
    with pytest.raises(ValueError, match="v.nii: cannot be verified .* add its sha256 or md5"):
        fetch(_loopback_file(f"{server.url}/v.nii", "v.nii"), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_md5_is_verified_when_given(server, tmp_path):
    data = os.urandom(20_000)
    server.files["/m.bin"] = data
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(ValueError, match=f"m.bin: md5 mismatch: got {md5}, the registry expects {'0' * 32}"):
        fetch(RemoteFile(f"{server.url}/m.bin", "m.bin", md5="0" * 32, allow_http=True), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []
    path = fetch(RemoteFile(f"{server.url}/m.bin", "m.bin", md5=md5, allow_http=True), tmp_path, **FAST)
    assert path.read_bytes() == data and recorded_sha256(path) == _sha(data)
    # A later change of the file is caught by the md5 on the next run.
    path.write_bytes(data[::-1])
    fetch(RemoteFile(f"{server.url}/m.bin", "m.bin", md5=md5, allow_http=True), tmp_path, **FAST)
    assert path.read_bytes() == data


def test_registry_md5_field(server, tmp_path, capsys):
    from segvol.download.registry import load_registry

    data = _msd_zip(1)
    server.files["/s.zip"] = data
    entry = _entry(f"{server.url}/s.zip")
    entry["source"]["verified"] = True
    entry["source"]["files"][0]["md5"] = MSD_SPLEEN_MD5
    registry = _registry(tmp_path, {"Spleen": entry})
    assert load_registry(registry)["Spleen"]["source"]["files"][0]["md5"] == MSD_SPLEEN_MD5
    out = tmp_path / "raw" / "Spleen"
    assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 2
    assert f"md5 mismatch: got {hashlib.md5(data).hexdigest()}" in capsys.readouterr().err
    assert not out.exists()

    entry["source"]["files"][0]["md5"] = "410D4A30"
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(
        ValueError, match=r"invalid dataset registry: datasets/Spleen/source/files/0/md5: .410D4A30. is not valid"
    ) as error:
        load_registry(_registry(bad, {"Spleen": entry}))
    assert "\n" not in str(error.value)


def test_two_processes_fetching_the_same_file_take_turns(server, tmp_path):
    """The shard jobs of one manifest all fetch the manifest: one transfer, no interleaved bytes."""
    import threading

    data = _random_zip(400_000)
    server.files["/shared.zip"] = data
    results, errors = [], []

    def job():
        try:
            results.append(fetch(_loopback_file(f"{server.url}/shared.zip", "shared.zip"), tmp_path, **FAST))
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and len(results) == 4
    assert (tmp_path / "shared.zip").read_bytes() == data
    assert len(server.requests) == 1 and server.bytes_sent == len(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.zip", "shared.zip.sha256"]
