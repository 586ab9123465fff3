"""`segvol serve` refuses what a web page, a stranger or a careless client could send (docs/security.md).

Loopback servers only (127.0.0.1); raw sockets for the requests a browser would not send.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from segvol.serve.server import SegVolServer
from segvol.serve.workspace import Workspace
from tests import test_serve
from tests.test_serve import request, synthetic_ct

REPO = Path(__file__).resolve().parents[1]
served = test_serve.served  # the fixture: a server on 127.0.0.1 over a folder with one CT


def port_of(server) -> int:
    return server.server_address[1]


def token_of(server) -> str:
    return getattr(server, "token", "no-token")  # a server without a launch token ignores it


def cookie_of(server) -> str:
    return getattr(server, "cookie_name", "segvol-token")


@pytest.fixture
def small(tmp_path):
    """A server with small limits: 1 MB uploads, 4 connections, 1 s idle timeout."""
    from tests.stand_in_models import BoxModel

    root = tmp_path / "scans"
    root.mkdir()
    synthetic_ct(root / "ct.nii.gz")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    server = SegVolServer(
        ("127.0.0.1", 0),
        Workspace(BoxModel(spatial_size=(8, 32, 32)), root),
        max_upload_bytes=1_000_000,
        upload_dir=str(uploads),
        max_connections=4,
        idle_timeout=1.0,
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def raw(server, head: str, body: bytes = b"", timeout: float = 3.0, end_body: bool = False):
    """Send `head` (CRLF added) and `body` on a fresh socket; (status or None when closed silently, text)."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        if end_body:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        for _ in range(256):  # bounded: answers here are small
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            data += piece
    if not data:
        return None, ""
    text = data.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def api_head(server, method, path, host=None, token=True, extra=""):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port_of(server)}'}"]
    if token:
        lines.append(f"X-SegVol-Token: {token_of(server)}")
    return "\n".join(lines + [line for line in extra.split("\n") if line])


def state_of(server):
    """What an attacker would want to change: objects (with masks) and the files under the root."""
    objects = server.workspace.describe().get("objects", [])
    return json.dumps(objects, sort_keys=True), sorted(p.name for p in server.workspace.root.rglob("*"))


# -- finding 2: Host, Origin, content types, token -------------------------------------------


def test_a_foreign_host_gets_nothing(served):
    server, _ = served
    for host in (
        "evil.example.com",
        f"evil.example.com:{port_of(server)}",
        f"127.0.0.1:{port_of(server) + 1}",
        f"127.0.0.1.evil.example:{port_of(server)}",
        f"localhost:{port_of(server)}@evil",
    ):
        for path in ("/api/files", "/api/state", "/"):
            status, text = raw(server, api_head(server, "GET", path + "?token=" + token_of(server), host=host))
            assert status == 403 and "ct.nii.gz" not in text and "Host" in text, (host, path, text[:300])
    for host in (
        f"127.0.0.1:{port_of(server)}",
        f"localhost:{port_of(server)}",
        f"[::1]:{port_of(server)}",
        f"LOCALHOST:{port_of(server)}",
    ):
        status, text = raw(server, api_head(server, "GET", "/api/files", host=host))
        assert status == 200 and "ct.nii.gz" in text, host


def test_every_api_call_needs_the_launch_token(served):
    server, root = served
    assert len(token_of(server)) >= 32
    request(server, "/api/open", {"path": "ct.nii.gz"})
    for method, path in (
        ("GET", "/api/files"),
        ("GET", "/api/state"),
        ("GET", "/api/categories"),
        ("GET", "/api/slice?view=axial&index=3"),
        ("POST", "/api/object"),
        ("POST", "/api/undo"),
    ):
        for offered in (
            "",
            f"\nX-SegVol-Token: {token_of(server)[:-1]}x",
            f"\nCookie: {cookie_of(server)}=wrong",
            f"\nCookie: segvol-token-{port_of(server) + 1}={token_of(server)}",
        ):
            body = b'{"name": "intruder"}' if method == "POST" else b""
            extra = f"Content-Type: application/json\nContent-Length: {len(body)}{offered}"
            status, text = raw(server, api_head(server, method, path, token=False, extra=extra), body)
            assert status == 403 and "token" in text, (path, offered, text[:300])
    assert [o["name"] for o in server.workspace.describe()["objects"]] == []
    # the page: refused without the token, and its first load with it sets the cookie
    status, text = raw(server, api_head(server, "GET", "/", token=False))
    assert status == 403 and "token" in text and "<script" not in text
    assert raw(server, api_head(server, "GET", "/?token=nope", token=False))[0] == 403
    status, text = raw(server, api_head(server, "GET", "/?token=" + token_of(server), token=False))
    cookie = re.search(r"Set-Cookie: ([^\r\n]+)", text)[1]
    assert status == 200 and "<script" in text
    assert cookie.startswith(f"{cookie_of(server)}={token_of(server)};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    for offered in (f"Cookie: other=1; {value}", f"X-SegVol-Token: {token_of(server)}"):
        assert raw(server, api_head(server, "GET", "/api/files", token=False, extra=offered))[0] == 200, offered
    assert raw(server, api_head(server, "GET", "/api/files?token=" + token_of(server), token=False))[0] == 200


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
def test_json_calls_take_only_json(served, content_type):
    server, root = served
    request(server, "/api/open", {"path": "ct.nii.gz"})
    before = state_of(server)
    for path, body in (
        ("/api/object", b'{"name": "pwned"}'),
        ("/api/export", b'{"name": "pwned"}'),
        ("/api/undo", b"{}"),
    ):
        extra = f"Content-Length: {len(body)}" + (f"\nContent-Type: {content_type}" if content_type else "")
        status, text = raw(server, api_head(server, "POST", path, extra=extra), body)
        assert status == 415 and "application/json" in text, (path, text[:300])
    # the upload takes only its own type (a form's types or text/plain never open a file)
    data = (root / "ct.nii.gz").read_bytes()
    extra = f"Content-Length: {len(data)}\nX-Filename: up.nii.gz" + (
        f"\nContent-Type: {content_type}" if content_type else ""
    )
    status, text = raw(server, api_head(server, "POST", "/api/upload", extra=extra), data)
    assert status == 415 and "application/octet-stream" in text
    assert state_of(server) == before and server.workspace.source.name == "ct.nii.gz"


def test_cross_origin_requests_are_refused(served, caplog):
    server, _ = served
    request(server, "/api/open", {"path": "ct.nii.gz"})
    before = state_of(server)
    body = b'{"name": "pwned"}'
    json_head = f"Content-Type: application/json\nContent-Length: {len(body)}"
    for foreign in (
        f"Origin: http://127.0.0.1:{port_of(server) + 1}",
        "Origin: http://evil.example",
        "Origin: null",
        f"Origin: https://127.0.0.1:{port_of(server)}",
        "Sec-Fetch-Site: same-site",
        "Sec-Fetch-Site: cross-site",
    ):
        status, text = raw(server, api_head(server, "POST", "/api/object", extra=f"{json_head}\n{foreign}"), body)
        assert status == 403, (foreign, text[:300])
        status, text = raw(server, api_head(server, "GET", "/api/slice?view=axial&index=3", extra=foreign))
        assert status == 403 and "PNG" not in text, foreign
    assert state_of(server) == before
    assert sum("refused" in r.message for r in caplog.records) >= 12
    same = f"Origin: http://127.0.0.1:{port_of(server)}\nSec-Fetch-Site: same-origin"
    assert raw(server, api_head(server, "POST", "/api/object", extra=f"{json_head}\n{same}"), body)[0] == 200


def test_the_token_is_not_logged(served, caplog):
    server, _ = served
    caplog.set_level("DEBUG")
    raw(server, api_head(server, "GET", "/?token=" + token_of(server), token=False))
    raw(server, api_head(server, "GET", "/api/files?token=" + token_of(server), token=False))
    raw(server, api_head(server, "GET", "/api/files?token=" + token_of(server), host="evil.example", token=False))
    assert "/api/files" in caplog.text and token_of(server) not in caplog.text


def test_the_command_prints_a_token_address_and_cleans_up_when_stopped(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    synthetic_ct(root / "ct.nii.gz")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temporary / "segvol-serve-stale"  # left by a launch that was killed
    stale.mkdir()
    (stale / "owner").write_text(ended.stdout.strip())
    (stale / "upload-x").mkdir()
    (stale / "upload-x" / "patient.nii.gz").write_bytes(b"scan")
    env = {**os.environ, "TMPDIR": str(temporary), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "segvol", "-v", "serve", "--random-weights", "--port", "0", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log_lines = []  # read all along: a full pipe would stall the server
    reader = threading.Thread(target=lambda: log_lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        line = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=([\w-]+)", line)
        assert url, line
        base, token = url[1], url[2]
        assert not stale.exists()
        (folder,) = temporary.glob("segvol-serve-*")
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/files", timeout=30)
        assert refused.value.code == 403
        with urllib.request.urlopen(base + "?token=" + token, timeout=30) as page:
            cookie = page.headers["Set-Cookie"].split(";")[0]
        data = (root / "ct.nii.gz").read_bytes()
        upload = urllib.request.Request(
            base + "api/upload",
            data=data,
            method="POST",
            headers={
                "Cookie": cookie,
                "Content-Type": "application/octet-stream",
                "X-Filename": "patient%20%C3%A9.nii.gz",
            },
        )
        with urllib.request.urlopen(upload, timeout=60) as answer:
            assert json.loads(answer.read())["name"] == "patient é.nii.gz"
        assert [p.name for p in folder.glob("upload-*/*")] == ["patient é.nii.gz"]
        process.terminate()  # SIGTERM, as a service manager stops it
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=30)
    log = "".join(log_lines)
    assert "GET /api/files" in log and token not in log  # requests are logged (-v), the token never
    # the patient's upload is gone with the server (torch may leave its own caches there)
    assert list(temporary.glob("segvol-serve-*")) == [] and list(temporary.rglob("*.nii.gz")) == []


# -- finding 3: what the page may run --------------------------------------------------------


def test_responses_forbid_inline_code_framing_and_sniffing(served):
    from html.parser import HTMLParser

    server, _ = served
    for path in ("/?token=" + token_of(server), "/app.js", "/api/state", "/api/nothing", "/"):
        status, text = raw(server, api_head(server, "GET", path))
        headers = {k.lower(): v for k, v in re.findall(r"\r\n([\w-]+): ([^\r\n]*)", text.split("\r\n\r\n")[0])}
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, path
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY", path

    class Inline(HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            names = {name for name, _ in attrs}
            if (
                tag == "style"
                or "style" in names
                or any(n.startswith("on") for n in names)
                or (tag == "script" and "src" not in names)
            ):
                self.found.append((tag, attrs))

    static = REPO / "segvol" / "serve" / "static"
    parser = Inline()
    parser.feed((static / "index.html").read_text())
    assert parser.found == []  # the CSP would block them
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


# -- finding 4: bodies, connections, history, temporary files ----------------------------------


def test_a_body_needs_one_valid_content_length(small):
    small.workspace.open(small.workspace.root / "ct.nii.gz")
    cases = {
        "Content-Length: -1": 400,
        "Content-Length: abc": 400,
        "Content-Length: 1_0": 400,
        "Content-Length: +10": 400,
        "Content-Length: 10\nContent-Length: 12": 400,
        "Transfer-Encoding: chunked": 411,
        "": 411,
    }
    for header, expected in cases.items():
        started = time.monotonic()
        # the socket stays open: a server that reads to the end of the stream would wait here
        status, text = raw(
            small,
            api_head(small, "POST", "/api/object", extra=f"Content-Type: application/json\n{header}"),
            b'{"name": "x"}',
        )
        assert status == expected, (header, text[:300])
        assert time.monotonic() - started < 2.0
    assert small.workspace.describe()["objects"] == []


def test_an_over_limit_body_is_refused_without_being_allocated(small):
    head = api_head(
        small,
        "POST",
        "/api/upload",
        extra="Content-Type: application/octet-stream\nX-Filename: big.nii.gz\nContent-Length: 60000000",
    )  # 60x the 1 MB limit
    tracemalloc.start()
    try:
        status, text = raw(small, head, b"\0" * 1000, end_body=True)  # claims 60 MB, sends 1 kB, hangs up
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 413 and "over the limit" in text
    assert peak < 10_000_000, f"refusing the upload allocated {peak / 1e6:.0f} MB"
    head = api_head(small, "POST", "/api/object", extra="Content-Type: application/json\nContent-Length: 2000000")
    status, text = raw(small, head, b"{" + b" " * 1000, end_body=True)
    assert status == 413
    assert list(Path(small.upload_root).glob("upload-*")) == []


def test_idle_and_half_sent_connections_are_closed_and_capped(small):
    threads_before = threading.active_count()
    body_head = api_head(small, "POST", "/api/object", extra="Content-Type: application/json\nContent-Length: 100")
    sockets = []
    for k in range(12):
        sock = socket.create_connection(("127.0.0.1", port_of(small)), timeout=3.0)
        if k % 3 == 0:  # half-sent: headers and part of the body, then silence
            sock.sendall(body_head.replace("\n", "\r\n").encode() + b'\r\n\r\n{"na')
        elif k % 3 == 1:
            sock.sendall(b"GET /api/files HTTP/1.1\r\nHost: 127.0.0.1")  # half a request line
        sockets.append(sock)
    time.sleep(0.2)
    assert threading.active_count() <= threads_before + 4
    answers = []
    started = time.monotonic()
    for sock in sockets:
        data = b""
        try:
            for _ in range(64):
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError("a connection was kept open: the server never timed it out") from None
        finally:
            sock.close()
        answers.append(data.split(b" ", 2)[1] if data else b"closed")
    assert answers.count(b"503") >= 8, answers  # beyond 4 connections: busy, at once
    assert time.monotonic() - started < 5.0
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before
    assert request(small, "/api/files")[0] == 200  # and the server still serves
    assert small.workspace.describe() == {"open": False}


def test_undo_history_keeps_packed_masks_and_restores_them_exactly(served):
    server, _ = served
    workspace = server.workspace
    workspace.open(workspace.root / "ct.nii.gz")
    for name in ("liver", "spleen", "kidney"):
        workspace.add_object(name)
    rng = np.random.default_rng(0)
    steps = []

    def now():
        return [
            (json.loads(json.dumps(o.record())), None if o.mask is None else o.mask.copy()) for o in workspace.objects
        ]

    workspace.add_point("liver", "axial", 20, 12, 26, positive=True)  # the first edit imports what it needs
    workspace.undo()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for edit in range(40):
            steps.append(now())
            name = ("liver", "spleen", "kidney")[edit % 3]
            # clicks inside the synthetic CT's foreground (its bright block)
            workspace.add_point(
                name,
                "axial",
                int(rng.integers(10, 26)),
                float(rng.uniform(8, 17)),
                float(rng.uniform(20, 33)),
                positive=bool(edit % 4),
            )
        steps.append(now())
        held = (
            tracemalloc.get_traced_memory()[0]
            - baseline
            - sum(m.nbytes for step in steps for _, m in step if m is not None)
        )
    finally:
        tracemalloc.stop()
    mask_bytes = workspace.objects[0].mask.nbytes
    # a deep copy of every mask per step would hold 40 x 3 masks; packed and shared, a fraction of one each
    assert held < 10 * mask_bytes, f"40 edits kept {held / mask_bytes:.1f} masks' worth of memory"
    assert workspace.history.nbytes < 5 * mask_bytes
    for expected in reversed(steps[:-1]):
        workspace.undo()
        for (record, mask), item in zip(expected, workspace.objects, strict=True):
            assert item.record() == record
            assert (mask is None and item.mask is None) or np.array_equal(item.mask, mask)
    assert len(workspace.history) == 3  # back to the three objects without prompts


def test_the_history_is_bounded_in_bytes():
    from segvol.serve.workspace import History, ObjectState, PackedMask

    history = History(steps=50, max_bytes=20_000)
    rng = np.random.default_rng(1)
    for _ in range(30):
        noisy = PackedMask.pack(rng.random((16, 32, 32)) > 0.5)  # ~2 kB packed: noise does not compress
        history.push((ObjectState("a", "#fff", None, None, (-1,) * 6, (), (), noisy),))
    assert history.nbytes <= 20_000 and 5 <= len(history) < 30


def test_uploads_are_removed_when_replaced_and_on_close(tmp_path):
    from tests.stand_in_models import BoxModel

    root = tmp_path / "scans"
    root.mkdir()
    synthetic_ct(root / "ct.nii.gz")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    alive = uploads / "segvol-serve-running"
    alive.mkdir()
    (alive / "owner").write_text(str(os.getpid()))  # another server of this user, still running
    server = SegVolServer(
        ("127.0.0.1", 0),
        Workspace(BoxModel(spatial_size=(8, 32, 32)), root),
        max_upload_bytes=2_000_000,
        upload_dir=str(uploads),
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        data = (root / "ct.nii.gz").read_bytes()
        for name in ("first.nii.gz", "second.nii.gz"):
            assert request(server, "/api/upload", data=data, headers={"X-Filename": name})[0] == 200
            assert [p.name for p in uploads.rglob("*.nii.gz")] == [name]
        assert request(server, "/api/upload", data=b"broken", headers={"X-Filename": "third.nii.gz"})[0] == 400
        assert [p.name for p in uploads.rglob("*.nii.gz")] == ["second.nii.gz"]  # still the open image
        assert request(server, "/api/open", {"path": "ct.nii.gz"})[0] == 200
        assert list(uploads.rglob("*.nii.gz")) == []
        assert request(server, "/api/upload", data=data, headers={"X-Filename": "fourth.nii.gz"})[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in uploads.iterdir()] == [alive.name]


# -- finding 5: fields, rollback, names, paths, the file list, the port --------------------------

BAD_CALLS = [
    ("/api/point", {"index": -1}),
    ("/api/point", {"index": 44}),
    ("/api/point", {"index": 10**6}),
    ("/api/point", {"index": "3"}),
    ("/api/point", {"index": 3.5}),
    ("/api/point", {"index": True}),
    ("/api/point", {"x": "1"}),
    ("/api/point", {"x": -5}),
    ("/api/point", {"y": 1e9}),
    ("/api/point", {"x": None}),
    ("/api/point", {"positive": "false"}),
    ("/api/point", {"positive": 0}),
    ("/api/point", {"view": "top"}),
    ("/api/point", {"view": 1}),
    ("/api/point", {"object": 5}),
    ("/api/point", {"object": ["liver"]}),
    ("/api/point", {"evil": 1}),
    ("/api/box", {"x1": 41}),
    ("/api/box", {"index": -3}),
    ("/api/box", {"y0": "0"}),
    ("/api/object", {"name": 5}),
    ("/api/object", {"name": "a" * 300}),
    ("/api/object", {"name": "a\nb"}),
    ("/api/object", {"name": "a\u202eb"}),
    ("/api/object", {"name": {"x": 1}}),
    ("/api/object", {"name": "liver"}),
    ("/api/text", {"text": 5}),
    ("/api/text", {"text": ["liver"]}),
    ("/api/text", {"text": "x" * 500}),
    ("/api/text", {"text": "liver\r"}),
    ("/api/text", {"object": None}),
    ("/api/export", {"name": "C:evil"}),
    ("/api/export", {"name": "../evil"}),
    ("/api/export", {"name": "a/b"}),
    ("/api/export", {"name": "a\\b"}),
    ("/api/export", {"name": "e" * 300}),
    ("/api/export", {"name": "a\nb"}),
    ("/api/export", {"name": ".hidden"}),
    ("/api/export", {"name": "CON"}),
    ("/api/export", {"name": 5}),
    ("/api/export", {"name": "ct"}),
    ("/api/open", {"path": 5}),
    ("/api/open", {}),
    ("/api/undo", {"x": 1}),
]
DEFAULTS = {
    "/api/point": {"object": "liver", "view": "axial", "index": 20, "x": 12, "y": 26, "positive": True},
    "/api/box": {"object": "liver", "view": "axial", "index": 20, "x0": 10, "y0": 18, "x1": 25, "y1": 33},
    "/api/text": {"object": "liver", "text": "liver"},
}


def test_every_field_of_every_call_is_checked(served, tmp_path):
    server, root = served
    request(server, "/api/open", {"path": "ct.nii.gz"})
    request(server, "/api/object", {"name": "liver"})
    request(server, "/api/point", DEFAULTS["/api/point"])
    before = state_of(server), len(server.workspace.history)
    for path, fields in BAD_CALLS:
        status, payload = request(server, path, {**DEFAULTS.get(path, {}), **fields})
        assert status == 400, (path, fields, payload)
        assert "\n" not in payload["error"] and str(tmp_path) not in payload["error"], payload
        assert (state_of(server), len(server.workspace.history)) == before, (path, fields)
    assert not list(tmp_path.rglob("*evil*"))
    status, payload = request(server, "/api/point", {**DEFAULTS["/api/point"], "positive": False})
    assert status == 200 and payload["objects"][0]["point_labels"] == [1, 0]
    raw_nan = b'{"object": "liver", "view": "axial", "index": 20, "x": NaN, "y": 1}'
    assert request(server, "/api/point", data=raw_nan, headers={"Content-Type": "application/json"})[0] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    assert request(server, "/api/point", data=deep, headers={"Content-Type": "application/json"})[0] == 400


def test_a_failed_edit_leaves_the_state_as_it_was(served, monkeypatch):
    server, _ = served
    request(server, "/api/open", {"path": "ct.nii.gz"})
    request(server, "/api/object", {"name": "liver"})
    status, state = request(server, "/api/point", DEFAULTS["/api/point"])
    before = state_of(server), len(server.workspace.history)
    session = server.workspace.session
    real = session.region_logits

    def failing(name):
        monkeypatch.setattr(session, "region_logits", real)  # fails once
        raise RuntimeError("the model ran out of memory")

    monkeypatch.setattr(session, "region_logits", failing)
    status, payload = request(server, "/api/point", {**DEFAULTS["/api/point"], "x": 14})
    assert status == 400 and "out of memory" in payload["error"]
    assert (state_of(server), len(server.workspace.history)) == before
    status, state = request(server, "/api/point", {**DEFAULTS["/api/point"], "x": 14})
    assert status == 200 and len(state["objects"][0]["points"]) == 2
    status, state = request(server, "/api/undo", {})
    assert status == 200 and json.dumps(state["objects"], sort_keys=True) == before[0][0]
    # a first click the segmentation refuses (in the background) is not kept: later clicks still work
    request(server, "/api/object", {"name": "spleen"})
    before = state_of(server), len(server.workspace.history)
    status, payload = request(server, "/api/point", {**DEFAULTS["/api/point"], "object": "spleen", "x": 1, "y": 1})
    assert status == 400 and "background" in payload["error"]
    assert (state_of(server), len(server.workspace.history)) == before
    status, state = request(server, "/api/point", {**DEFAULTS["/api/point"], "object": "spleen"})
    assert status == 200 and state["objects"][1]["points"] == state["objects"][0]["points"][:1]


def test_error_bodies_name_files_relative_to_the_root(served, tmp_path):
    import tempfile

    server, root = served
    (root / "sub").mkdir()
    (root / "sub" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    status, payload = request(server, "/api/open", {"path": "sub/broken.nii.gz"})
    assert status == 400 and "sub/broken.nii.gz" in payload["error"]
    status, uploaded = request(server, "/api/upload", data=b"\x1f\x8b nor this", headers={"X-Filename": "mine.nii.gz"})
    assert status == 400 and "mine.nii.gz" in uploaded["error"]
    status, missing = request(server, "/api/open", {"path": "sub/none.nii.gz"})
    assert status == 404
    for message in (payload["error"], uploaded["error"], missing["error"]):
        assert str(tmp_path) not in message and tempfile.gettempdir() + "/" not in message, message


def test_the_file_list_skips_loops_and_unreadable_folders(served):
    server, root = served
    (root / "loop").symlink_to(root / "loop")
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    (root / "self.nii.gz").symlink_to(root / "self.nii.gz")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "two.nii.gz").write_bytes((root / "ct.nii.gz").read_bytes())
    (root / "deep" / "alias.nii.gz").symlink_to(root / "ct.nii.gz")  # inside the root: offered
    (root / "locked").mkdir()
    (root / "locked" / "hidden.nii.gz").write_bytes(b"x")
    (root / "locked").chmod(0)
    try:
        status, payload = request(server, "/api/files")
        readable = os.access(root / "locked", os.R_OK)  # root reads it anyway
    finally:
        (root / "locked").chmod(0o755)
    assert status == 200
    assert payload["files"] == [
        "ct.nii.gz",
        "deep/alias.nii.gz",
        "deep/er/two.nii.gz",
        *(["locked/hidden.nii.gz"] if readable else []),
    ]
    status, payload = request(server, "/api/open", {"path": "loop"})
    assert status == 400 and "loop" in payload["error"] and str(root) not in payload["error"]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path, capsys):
    from segvol.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--random-weights", "--port", str(port), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "--port" in err
