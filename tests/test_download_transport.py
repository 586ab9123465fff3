"""Where the Hugging Face token goes, and which transports a download accepts.

Regression tests of an outside audit: the token was attached whenever the text "huggingface.co"
appeared anywhere in a URL (`?mirror=huggingface.co` on 127.0.0.1 received it over plain http),
urllib forwarded it through redirects to other hosts, and plain http / https->http redirects
were accepted silently. The servers here are loopback HTTPS servers with a throw-away
certificate trusted through SSL_CERT_FILE (exactly how a user trusts a corporate CA), so the
token rule is exercised as users hit it; a third server speaks plain http.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segvol.download.fetch import RemoteFile, fetch

FAST = {"retries": 0, "backoff_s": 0.0, "timeout_s": 5.0, "progress": False}
BODY = b"payload bytes " * 100
TOKEN = "hf_secret_token_for_tests"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        location = self.server.redirects.get(self.path.split("?")[0])
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


def _serve(context=None):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.seen, httpd.redirects = [], {}
    scheme = "https" if context is not None else "http"
    httpd.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, thread


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1 (skips the test without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a throw-away certificate")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def servers(certificate, monkeypatch):
    """Hub-like https server A (HF_ENDPOINT), another https origin B, a plain http server C."""
    import ssl

    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    running = [_serve(context), _serve(context), _serve()]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", running[0][0].url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield tuple(httpd for httpd, _ in running)
    finally:
        for httpd, thread in running:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


def test_token_reaches_the_hub_endpoint_but_not_the_host_it_redirects_to(servers, tmp_path):
    """A registry URL on the Hub (HF_ENDPOINT) origin, as a resolve URL would be."""
    hub, other, _ = servers
    hub.redirects["/datasets/owner/repo/resolve/main/data/a.zip"] = f"{other.url}/cdn/a.zip?signed=1"
    path = fetch(RemoteFile(f"{hub.url}/datasets/owner/repo/resolve/main/data/a.zip", "a.bin"), tmp_path, **FAST)
    assert path.read_bytes() == BODY
    assert hub.seen == [("/datasets/owner/repo/resolve/main/data/a.zip", f"Bearer {TOKEN}")]
    assert other.seen == [("/cdn/a.zip?signed=1", None)]


def test_token_kept_on_a_redirect_within_the_hub_origin(servers, tmp_path):
    hub, _, _ = servers
    hub.redirects["/datasets/owner/repo/resolve/v1/x.bin"] = "/datasets/owner/repo/resolve/abc123/x.bin"
    fetch(RemoteFile(f"{hub.url}/datasets/owner/repo/resolve/v1/x.bin", "x.bin"), tmp_path, **FAST)
    assert [auth for _, auth in hub.seen] == [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]


def test_hub_name_in_the_query_of_another_host_gets_no_token(servers, tmp_path):
    _, other, plain = servers
    fetch(RemoteFile(f"{other.url}/f.bin?mirror=huggingface.co", "f.bin"), tmp_path / "a", **FAST)
    fetch(RemoteFile(f"{plain.url}/f.bin?mirror=huggingface.co", "f.bin", allow_http=True), tmp_path / "b", **FAST)
    assert other.seen == [("/f.bin?mirror=huggingface.co", None)]
    assert plain.seen == [("/f.bin?mirror=huggingface.co", None)]


def test_token_never_sent_over_plain_http_even_to_the_endpoint(servers, tmp_path, monkeypatch):
    _, _, plain = servers
    monkeypatch.setenv("HF_ENDPOINT", plain.url)  # a plain-http mirror the user configured
    fetch(RemoteFile(f"{plain.url}/datasets/owner/repo/resolve/main/y.bin", "y.bin", allow_http=True), tmp_path, **FAST)
    assert plain.seen == [("/datasets/owner/repo/resolve/main/y.bin", None)]


def test_plain_http_needs_the_registry_opt_in(servers, tmp_path):
    _, _, plain = servers
    with pytest.raises(ValueError, match=r"/f.bin: plain http refused .* allow_http: true"):
        fetch(RemoteFile(f"{plain.url}/f.bin", "f.bin"), tmp_path, **FAST)
    assert plain.seen == [] and list(tmp_path.iterdir()) == []


def test_redirect_from_https_to_http_is_refused_even_with_the_opt_in(servers, tmp_path):
    hub, _, plain = servers
    hub.redirects["/down.bin"] = f"{plain.url}/down.bin"
    with pytest.raises(
        ValueError, match="redirected from https://.* to http://.*: a redirect from https to plain http is refused"
    ):
        fetch(RemoteFile(f"{hub.url}/down.bin", "down.bin", allow_http=True), tmp_path, **FAST)
    assert plain.seen == []
    assert not (tmp_path / "down.bin").exists()


def test_cli_refuses_plain_http_in_one_line(servers, tmp_path):
    import yaml

    _, _, plain = servers
    entry = {
        "role": "train",
        "modality": "CT",
        "license": {"name": "test", "acceptance_required": False},
        "source": {"kind": "url", "verified": False, "files": [{"url": f"{plain.url}/t.zip"}]},
        "layout": {"kind": "paired", "image": "{case}.nii.gz", "label": None},
        "labels": None,
    }
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {"Plain": entry}}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segvol.cli",
            "download",
            "--dataset",
            "Plain",
            "--registry",
            str(registry),
            "--out",
            str(tmp_path / "raw" / "Plain"),
            "--downloads",
            str(tmp_path / "dl"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("segvol download: error: http://127.0.0.1")
    assert "plain http refused" in errors[0]
    assert plain.seen == [] and not (tmp_path / "raw" / "Plain").exists()
