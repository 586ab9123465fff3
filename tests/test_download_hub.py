"""hf:// files: one commit resolved by huggingface_hub, the Hub's LFS sha256 as the reference,
the bytes through the resumable fetcher.

The loopback server below emulates the Hub endpoints that huggingface_hub's
`get_hf_file_metadata` / `hf_hub_download` and `HfApi.get_paths_info` call (HEAD/GET
`/<type>s/<repo>/resolve/<rev>/<path>`, POST `/api/<type>s/<repo>/paths-info/<rev>`) and, for the
https test, a storage host LFS downloads are redirected to; HF_ENDPOINT points at it. Most tests
speak plain http, so the registry sources opt in with allow_http, and no token may reach it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

import pytest

from segvol.download.fetch import RemoteFile, fetch, recorded_sha256
from tests.test_download_transport import make_certificate

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret_token_for_tests"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
FAST = {"retries": 1, "backoff_s": 0.0, "timeout_s": 10.0, "progress": False}
RESOLVE = re.compile(r"^/(?P<type>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
PATHS_INFO = re.compile(r"^/api/(?P<type>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Hub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _commit(self, revision: str) -> str | None:
        return self.server.branches.get(
            unquote(revision), unquote(revision) if unquote(revision) in self.server.commits else None
        )

    def _resolve(self, head: bool):
        server = self.server
        server.seen.append((self.command, self.path, self.headers.get("Authorization"), self.headers.get("Range")))
        if self.path.startswith("/cdn/"):  # a signed storage URL: the bytes only
            self._send(server.cdn_files[self.path.split("?")[0]], head, {})
            return
        match = RESOLVE.match(self.path.split("?")[0])
        commit = match and self._commit(match["rev"])
        entry = commit and server.commits[commit].get((match["repo"], unquote(match["path"])))
        if not entry:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if commit else "RevisionNotFound")
            self.send_header("X-Error-Message", "Entry not found" if commit else "Invalid rev id")
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = hashlib.sha256(entry["data"]).hexdigest() if entry["lfs"] else _git_blob_id(entry["data"])
        if entry["lfs"] and server.cdn is not None:
            # What the Hub does for LFS files: metadata here, bytes behind a signed URL elsewhere.
            location = f"/cdn/{etag}"
            server.cdn.cdn_files[location] = entry["served"]
            self.send_response(302)
            for name, value in {
                "Location": f"{server.cdn.url}{location}?signature=x",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(len(entry["data"])),
                "Content-Length": "0",
            }.items():
                self.send_header(name, value)
            self.end_headers()
            return
        self._send(entry["served"], head, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'})

    def _send(self, data: bytes, head: bool, headers: dict):
        server = self.server
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not head:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        payload = data[start:]
        if server.cuts:  # bytes to send before dropping the connection, one entry per GET
            payload = payload[: server.cuts.pop(0)]
            self.close_connection = True
        self.wfile.write(payload)

    def do_HEAD(self):
        self._resolve(head=True)

    def do_GET(self):
        if self.path.startswith(
            "/api/"
        ):  # the library's own side requests (agent registry): not the Hub API we emulate
            self.send_error(404)
            return
        self._resolve(head=False)

    def do_POST(self):
        server = self.server
        server.seen.append(("POST", self.path, self.headers.get("Authorization"), None))
        match = PATHS_INFO.match(self.path)
        body = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        commit = match and self._commit(match["rev"])
        listing = []
        for path in body.get("paths", []):
            entry = commit and server.commits[commit].get((match["repo"], path))
            if entry:
                data = entry["data"]
                item = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_id(data)}
                if entry["lfs"]:
                    item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    item["oid"] = _git_blob_id(b"pointer")
                listing.append(item)
        payload = json.dumps(listing).encode()
        self.send_response(200 if commit else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _start(tls=None):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.seen, httpd.commits, httpd.branches = [], {COMMIT: {}, OLD_COMMIT: {}}, {"main": COMMIT}
    httpd.cuts, httpd.cdn, httpd.cdn_files = [], None, {}
    httpd.url = f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"

    def publish(repo, path, data, lfs=True, commit=COMMIT, served=None):
        httpd.commits[commit][(repo, path)] = {"data": data, "lfs": lfs, "served": data if served is None else served}

    httpd.publish = publish
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, thread


def _stop(httpd, thread):
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _hub_environment(monkeypatch, tmp_path, endpoint):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    httpd, thread = _start()
    _hub_environment(monkeypatch, tmp_path, httpd.url)
    try:
        yield httpd
    finally:
        _stop(httpd, thread)


def _remote(url, filename, **checksums) -> RemoteFile:
    return RemoteFile(url, filename, allow_http=True, **checksums)


def test_hub_file_is_fetched_at_one_commit_and_verified_by_its_lfs_sha256(hub, tmp_path, caplog):
    data = os.urandom(300_000)
    hub.publish("owner/repo", "M3D_Seg/0000.zip", data)
    with caplog.at_level(logging.WARNING, logger="segvol"):
        path = fetch(_remote("hf://datasets/owner/repo/M3D_Seg/0000.zip", "0000.zip"), tmp_path, **FAST)
    assert path == tmp_path / "0000.zip" and path.read_bytes() == data
    assert recorded_sha256(path) == hashlib.sha256(data).hexdigest()
    # main was resolved once; the checksum and the bytes both come from that commit.
    assert hub.seen[0][:2] == ("HEAD", "/datasets/owner/repo/resolve/main/M3D_Seg/0000.zip")
    assert all(COMMIT in request for _, request, _, _ in hub.seen[1:])
    assert ("POST", f"/api/datasets/owner/repo/paths-info/{COMMIT}") in [s[:2] for s in hub.seen]
    assert any(method == "GET" for method, *_ in hub.seen)
    assert all(auth is None for *_, auth, _ in hub.seen)  # plain http: no token, whatever HF_TOKEN says
    assert f"url: hf://datasets/owner/repo@{COMMIT}/M3D_Seg/0000.zip" in caplog.text
    assert "the Hub's LFS sha256" in caplog.text
    before = len(hub.seen)
    fetch(_remote("hf://datasets/owner/repo/M3D_Seg/0000.zip", "0000.zip"), tmp_path, **FAST)
    assert len(hub.seen) == before  # verified and recorded: no request


def test_hub_bytes_that_do_not_match_the_lfs_sha256_are_refused(hub, tmp_path):
    data = os.urandom(50_000)
    hub.publish("owner/repo", "a.zip", data, served=data[::-1])
    with pytest.raises(ValueError, match="a.zip: sha256 mismatch: got .* the Hub's LFS sha256 expects"):
        fetch(_remote("hf://datasets/owner/repo/a.zip", "a.zip"), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_registry_checksum_wins_over_the_hub(hub, tmp_path):
    data = os.urandom(10_000)
    hub.publish("owner/repo", "b.bin", data)
    with pytest.raises(ValueError, match="b.bin: md5 mismatch: .* the registry expects"):
        fetch(_remote("hf://datasets/owner/repo/b.bin", "b.bin", md5="0" * 32), tmp_path, **FAST)
    path = fetch(
        _remote("hf://datasets/owner/repo/b.bin", "b.bin", md5=hashlib.md5(data).hexdigest()), tmp_path, **FAST
    )
    assert path.read_bytes() == data
    assert not any(method == "POST" for method, *_ in hub.seen)  # no need to ask the Hub


def test_pinned_revision_is_used_as_given(hub, tmp_path):
    hub.publish("owner/repo", "c.bin", b"old content " * 100, commit=OLD_COMMIT)
    hub.publish("owner/repo", "c.bin", b"new content " * 100)
    path = fetch(_remote(f"hf://datasets/owner/repo@{OLD_COMMIT}/c.bin", "c.bin"), tmp_path, **FAST)
    assert path.read_bytes() == b"old content " * 100
    assert all(OLD_COMMIT in request for _, request, _, _ in hub.seen)


def test_small_non_lfs_file_is_verified_by_its_git_blob_id(hub, tmp_path):
    hub.publish("owner/repo", "notes.txt", b"hello\n", lfs=False, served=b"HELLO\n")
    with pytest.raises(ValueError, match="notes.txt: git blob id mismatch"):
        fetch(_remote("hf://datasets/owner/repo/notes.txt", "notes.txt"), tmp_path, **FAST)
    hub.publish("owner/repo", "notes.txt", b"hello\n", lfs=False)
    assert (
        fetch(_remote("hf://datasets/owner/repo/notes.txt", "notes.txt"), tmp_path, **FAST).read_bytes() == b"hello\n"
    )


def test_cut_hub_download_is_resumed(hub, tmp_path):
    data = os.urandom(400_000)
    hub.publish("owner/repo", "big.zip", data)
    hub.cuts = [150_000]
    path = fetch(_remote("hf://datasets/owner/repo/big.zip", "big.zip"), tmp_path, **FAST)
    assert path.read_bytes() == data
    ranges = [rng for method, _, _, rng in hub.seen if method == "GET"]
    assert ranges[0] is None and "bytes=150000-" in ranges[1:]


def test_failed_hub_download_resumes_on_the_next_run(hub, tmp_path):
    data = os.urandom(400_000)
    hub.publish("owner/repo", "big.zip", data)
    hub.cuts = [100_000] + [0] * 100  # then the link is dead: every retry of this run fails
    with pytest.raises(
        RuntimeError, match=r"^hf://datasets/owner/repo/big.zip: giving up .*100000 bytes kept .*rerun to resume"
    ):
        fetch(_remote("hf://datasets/owner/repo/big.zip", "big.zip"), tmp_path, **FAST)
    assert not (tmp_path / "big.zip").exists() and (tmp_path / "big.zip.partial").stat().st_size == 100_000
    hub.cuts = []
    hub.seen.clear()
    assert fetch(_remote("hf://datasets/owner/repo/big.zip", "big.zip"), tmp_path, **FAST).read_bytes() == data
    assert [rng for method, _, _, rng in hub.seen if method == "GET"] == ["bytes=100000-"]


def test_missing_hub_file_or_revision_is_one_line(hub, tmp_path):
    with pytest.raises(
        ValueError, match=r"^hf://datasets/owner/repo/nope.zip: no such file in the repository at this revision$"
    ):
        fetch(_remote("hf://datasets/owner/repo/nope.zip", "nope.zip"), tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"^hf://datasets/owner/repo@v9/x.zip: no such revision on the Hub$"):
        fetch(_remote("hf://datasets/owner/repo@v9/x.zip", "x.zip"), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_plain_http_endpoint_needs_the_opt_in(hub, tmp_path):
    with pytest.raises(ValueError, match="plain http refused"):
        fetch(RemoteFile("hf://datasets/owner/repo/a.zip", "a.zip"), tmp_path, **FAST)
    assert hub.seen == []


def test_https_hub_gets_the_login_token_and_its_storage_host_does_not(monkeypatch, tmp_path):
    """The way users hit it: an https HF_ENDPOINT, the token from huggingface_hub's own lookup
    (HF_TOKEN here), LFS bytes behind a redirect to another origin."""
    import ssl

    from huggingface_hub.utils._http import close_session

    cert, key = make_certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    (hub, hub_thread), (storage, storage_thread) = _start(tls), _start(tls)
    hub.cdn = storage
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    _hub_environment(monkeypatch, tmp_path, hub.url)
    close_session()  # the library's HTTP client reads SSL_CERT_FILE when it is created
    try:
        data = os.urandom(80_000)
        hub.publish("owner/repo", "M3D_Seg/0001.zip", data)
        path = fetch(RemoteFile("hf://datasets/owner/repo/M3D_Seg/0001.zip", "0001.zip"), tmp_path / "dl", **FAST)
        assert path.read_bytes() == data
    finally:
        close_session()
        _stop(hub, hub_thread)
        _stop(storage, storage_thread)
    assert hub.seen and all(auth == f"Bearer {TOKEN}" for _, _, auth, _ in hub.seen)
    assert [(method, auth) for method, _, auth, _ in storage.seen] == [("GET", None)]


def test_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _hub_environment(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(
        RuntimeError, match=r"^hf://datasets/owner/repo/a.zip: cannot reach the Hub \(.*\); rerun when it is reachable$"
    ) as error:
        fetch(_remote("hf://datasets/owner/repo/a.zip", "a.zip"), tmp_path / "dl", **FAST)
    assert "\n" not in str(error.value)


def test_cli_downloads_a_hub_dataset_verified_by_the_hub(hub, tmp_path, caplog):
    from tests.test_download import _cli, _entry, _msd_zip, _registry

    data = _msd_zip()
    hub.publish("owner/msd", "Task09_Spleen.zip", data)
    entry = _entry("hf://datasets/owner/msd/Task09_Spleen.zip")
    entry["source"]["kind"] = "hf"
    registry = _registry(tmp_path, {"Spleen": entry})
    out = tmp_path / "raw" / "Spleen"
    with caplog.at_level(logging.WARNING, logger="segvol"):
        assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 0
    document = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert [case["id"] for case in document["cases"]] == ["spleen_0", "spleen_1"]
    assert recorded_sha256(tmp_path / "dl" / "Spleen" / "Task09_Spleen.zip") == hashlib.sha256(data).hexdigest()
    assert f"url: hf://datasets/owner/msd@{COMMIT}/Task09_Spleen.zip" in caplog.text
