"""The HTTP side of `segvol serve`: the page, its assets and a small JSON API over one `Workspace`.

Python's own `ThreadingHTTPServer` is enough for one person at one browser and adds no dependency;
the page's assets are files of this package (no CDN), so the app works offline.

API (JSON in and out; errors are `{"error": "<one line>"}` with a 4xx status, the server keeps running;
a prompt change that a newer one for the same object overtook is answered 409 `{"superseded": true}`, its
result dropped: the latest request for an object wins):
  GET  /api/state                              the open image, its views and objects; the upload limit
  GET  /api/files                              images under the served folder
  GET  /api/categories                         names `segvol categories` knows (text completion)
  POST /api/open      {"path"}                 open a file of the served folder
  POST /api/upload    body = file bytes (Content-Type: application/octet-stream), header X-Filename
                      (URI-encoded); size-limited, read like `segvol predict`
  POST /api/object    {"name"}                 a new object
  POST /api/point     {"object", "view", "index", "x", "y", "positive"}
  POST /api/box       {"object", "view", "index", "x0", "y0", "x1", "y1"}
  POST /api/text      {"object", "text"}
  POST /api/labels    {"path"}                 load a label map of the served folder (on the open image's grid):
                      its label values, voxel counts and names (from a sidecar <stem>.json or labels.txt)
  POST /api/upload-labels  body = file bytes, header X-Filename: the same for an uploaded label map
  POST /api/import    {"label", "name"}        a new object started from one label of the loaded map
  POST /api/undo
  POST /api/export    {"name"}                 label map + JSON, as `segvol predict` writes them
  GET  /api/slice?view=&index=&window=&d=&h=&w=   PNG of one slice with masks and crosshair

Who may ask (docs/security.md), checked before anything is read or parsed:
- the `Host` header must name this server: 127.0.0.1, localhost or [::1] (or the --host it listens
  on) with its port; a DNS-rebinding page gets 403;
- an `Origin` header, when sent, must be this server's own origin, and the browser's
  `Sec-Fetch-Site` (when sent) must say same-origin for `/api/*`;
- every `/api/*` call needs the per-launch token: the `segvol-token-<port>` cookie (HttpOnly,
  SameSite=Strict) that the page sets when it is opened as `/?token=...`, an `X-SegVol-Token`
  header, or `?token=`; compared in constant time;
- JSON calls need `Content-Type: application/json`, the upload `application/octet-stream` (what
  an HTML form or a "simple" cross-origin request cannot send); a body needs a valid
  `Content-Length` within the limit (1 MiB for JSON), never read beyond it;
- at most `max_connections` connections are served at once (more get 503 at once), and a connection
  idle for `idle_timeout` seconds is closed.
Every response carries a Content-Security-Policy (`default-src 'self'`, no framing), nosniff,
no-referrer and same-origin resource policy headers. Error bodies name files relative to the root.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

from segvol.serve.workspace import Superseded, plain_text

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_HEADER = "X-SegVol-Token"
JSON_LIMIT = 1 << 20  # bytes of a JSON request body
DRAIN_LIMIT = 16 << 20  # a refused body up to this size is read and dropped, so the client sees the answer
CHUNK = 1 << 16
UPLOAD_PREFIX = "segvol-serve-"  # the per-launch folder of uploads in the temporary folder
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NO_TOKEN_PAGE = (
    b"segvol serve: this page needs the token of this launch. Open the address that `segvol serve` "
    b"printed in its terminal (http://.../?token=...).\n"
)


class ClientError(Exception):
    """A request refused with `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)


class Fields:
    """A request's JSON object, read field by field with the JSON type each route expects (400 otherwise)."""

    def __init__(self, payload: dict, allowed: tuple[str, ...]) -> None:
        unknown = [key for key in payload if key not in allowed]
        if unknown:
            shown = ", ".join(repr(key[:40]) for key in unknown[:3])
            raise ClientError(
                HTTPStatus.BAD_REQUEST, f"unknown field {shown}; this call takes {', '.join(allowed) or 'no fields'}"
            )
        self.payload = payload

    def _get(self, key, default):
        if key in self.payload:
            return self.payload[key]
        if default is _REQUIRED:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"missing field {key!r}")
        return default

    def string(self, key: str, default=None, max_length: int = 4096) -> str:
        value = self._get(key, default)
        try:
            return plain_text(value, key, max_length)
        except ValueError as error:
            raise ClientError(HTTPStatus.BAD_REQUEST, str(error)) from None

    def integer(self, key: str) -> int:
        value = self._get(key, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClientError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ClientError(HTTPStatus.BAD_REQUEST, f"{key} must be a finite number")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ClientError(HTTPStatus.BAD_REQUEST, f"{key} must be true or false (a JSON boolean)")
        return value


_REQUIRED = object()

# POST routes: (fields the body may have, what they do with the workspace)
ROUTES = {
    "/api/open": (("path",), lambda w, f: w.open(w.inside_root(f.string("path", _REQUIRED)))),
    "/api/object": (("name",), lambda w, f: w.add_object(f.string("name", ""))),
    "/api/point": (
        ("object", "view", "index", "x", "y", "positive"),
        lambda w, f: w.add_point(
            f.string("object", _REQUIRED),
            f.string("view", _REQUIRED),
            f.integer("index"),
            f.number("x"),
            f.number("y"),
            f.boolean("positive", True),
        ),
    ),
    "/api/box": (
        ("object", "view", "index", "x0", "y0", "x1", "y1"),
        lambda w, f: w.set_box_range(
            f.string("object", _REQUIRED),
            f.string("view", _REQUIRED),
            f.integer("index"),
            (f.number("x0"), f.number("y0")),
            (f.number("x1"), f.number("y1")),
        ),
    ),
    "/api/text": (("object", "text"), lambda w, f: w.set_text(f.string("object", _REQUIRED), f.string("text", ""))),
    "/api/labels": (("path",), lambda w, f: w.load_labels(w.inside_root(f.string("path", _REQUIRED)))),
    "/api/import": (("label", "name"), lambda w, f: w.import_label(f.integer("label"), f.string("name", ""))),
    "/api/undo": ((), lambda w, f: w.undo()),
    "/api/export": (("name",), lambda w, f: w.export(f.string("name", _REQUIRED))),
}
INTEGER = re.compile(r"-?[0-9]{1,9}")


def redact(text: str) -> str:
    """`text` without the value of any token=... (request lines in logs)."""
    return re.sub(r"(token=)[^&\s\"']*", r"\1[hidden]", text)


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


class Handler(BaseHTTPRequestHandler):
    server: SegVolServer
    server_version = "segvol-serve"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # socket timeout: idle and half-sent requests end
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), redact(format % args))

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message) -> None:
        text = " ".join(self.server.scrub(str(message)).split())
        self._json({"error": text[:500]}, status)

    def _guard(self, action) -> None:
        try:
            action()
            return
        except ClientError as error:
            status, message = error.status, str(error)
        except Superseded as error:  # not a failure: the page drops the answer
            self._json({"error": str(error), "superseded": True}, HTTPStatus.CONFLICT)
            return
        except TimeoutError:
            status, message = HTTPStatus.REQUEST_TIMEOUT, "the request was not sent in time"
            self._body_done = True  # a stalled client: close, do not wait for it again
        except PermissionError as error:
            status, message = HTTPStatus.FORBIDDEN, error
        except FileNotFoundError as error:
            status, message = HTTPStatus.NOT_FOUND, error
        except (ValueError, KeyError, TypeError, RuntimeError, RecursionError) as error:
            status, message = HTTPStatus.BAD_REQUEST, error
        except Exception as error:  # never take the server down for one request
            log.exception("request failed")
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(error).__name__}: {error}"
        try:
            self._error(status, message)
            if self.command == "POST" and not self._body_done:
                self._drop_body()
        except OSError:  # the client went away
            self.close_connection = True

    def _refuse(self, status: int, why: str) -> None:
        """Refuse a request of someone this server does not serve; the refusal is logged (no token)."""
        log.warning(
            "refused %s %s from %s: %s",
            self.command,
            redact(urlparse(self.path).path)[:200],
            self.client_address[0],
            why,
        )
        raise ClientError(status, why)

    # -- who may ask -------------------------------------------------------------------------

    def _admit(self, api: bool) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not self.server.allowed_host(hosts[0]):
            self._refuse(
                HTTPStatus.FORBIDDEN,
                "the Host header does not name this server (open the address that segvol serve printed)",
            )
        origin = self.headers.get_all("Origin") or []
        if origin and (len(origin) > 1 or origin[0].strip().lower() != "http://" + hosts[0].strip().lower()):
            self._refuse(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        site = self.headers.get("Sec-Fetch-Site")
        if api and site is not None and site not in ("same-origin", "none"):
            self._refuse(HTTPStatus.FORBIDDEN, f"a {site} request refused")
        if api and not self._has_token():
            self._refuse(
                HTTPStatus.FORBIDDEN,
                "missing or wrong token: open the address with ?token=... that segvol serve printed",
            )

    def _tokens(self) -> list[str]:
        """The tokens this request offers: header, query, cookie."""
        offered = list(self.headers.get_all(TOKEN_HEADER) or [])
        offered += parse_qs(urlparse(self.path).query).get("token", [])
        for header in self.headers.get_all("Cookie") or []:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.server.cookie_name:
                    offered.append(value)
        return offered

    def _has_token(self) -> bool:
        expected = self.server.token.encode()
        # compare_digest on bytes: constant time whatever the offered value
        return any(hmac.compare_digest(value.encode("utf-8", "replace"), expected) for value in self._tokens())

    # -- bodies ------------------------------------------------------------------------------

    def _content_length(self, limit: int) -> int:
        """The body's length from its one valid Content-Length, refused (never read) when over `limit`."""
        if self.headers.get("Transfer-Encoding"):
            raise ClientError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise ClientError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        if len(values) > 1 or not re.fullmatch(r"[0-9]{1,18}", values[0].strip()):
            raise ClientError(HTTPStatus.BAD_REQUEST, "Content-Length must be one non-negative integer")
        length = int(values[0])
        if length > limit:
            raise ClientError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of {length} bytes is over the limit of {limit} bytes"
            )
        return length

    def _chunks(self, length: int):
        """The body in pieces of at most 64 KiB; 400 when the connection ends before `length` bytes."""
        remaining = length - self._body_read
        while remaining > 0:
            piece = self.rfile.read(min(remaining, CHUNK))
            if not piece:
                self._body_done = True
                raise ClientError(
                    HTTPStatus.BAD_REQUEST, f"the body ended after {length - remaining} of {length} bytes"
                )
            remaining -= len(piece)
            self._body_read += len(piece)
            yield piece
        self._body_done = True

    def _drop_body(self) -> None:
        """After refusing a POST: read and drop the rest of its body when it is small (in pieces, never
        kept), so that the client reads the answer rather than a reset; then close the connection."""
        self.close_connection = True
        values = self.headers.get_all("Content-Length") or []
        if (
            len(values) == 1
            and re.fullmatch(r"[0-9]{1,18}", values[0].strip())
            and int(values[0]) - self._body_read <= DRAIN_LIMIT
        ):
            try:
                for _ in self._chunks(int(values[0])):
                    pass
            except (ClientError, OSError):
                pass
        else:
            _discard_waiting(self.connection)

    def _json_body(self) -> dict:
        if media_type(self.headers.get("Content-Type")) != "application/json":
            raise ClientError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON with Content-Type: application/json")
        data = b"".join(self._chunks(self._content_length(JSON_LIMIT)))
        if not data.strip():
            return {}
        try:
            payload = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as error:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({error})") from None
        if not isinstance(payload, dict):
            raise ClientError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return payload

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        self._body_read, self._body_done = 0, True
        self._guard(lambda: self._get(url))

    def _get(self, url) -> None:
        self._admit(api=url.path.startswith("/api/"))
        if url.path == "/":
            self._page(url)
            return
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            self._send(
                HTTPStatus.OK, resources.files("segvol.serve").joinpath("static", name).read_bytes(), content_type
            )
            return
        workspace = self.server.workspace
        routes = {
            "/api/state": lambda: self._json(
                {**workspace.describe(), "max_upload_bytes": self.server.max_upload_bytes}
            ),
            "/api/files": lambda: self._json({"files": workspace.files()}),
            "/api/categories": lambda: self._json({"categories": self.server.categories()}),
            "/api/slice": lambda: self._slice(parse_qs(url.query)),
        }
        if url.path not in routes:
            raise ClientError(HTTPStatus.NOT_FOUND, "no such page")
        routes[url.path]()

    def _page(self, url) -> None:
        """The app's page, for a request with the token; its first load (`/?token=`) sets the cookie."""
        if not self._has_token():
            if "token" in parse_qs(url.query):
                self._refuse(HTTPStatus.FORBIDDEN, "wrong token")
            self._send(HTTPStatus.FORBIDDEN, NO_TOKEN_PAGE, "text/plain; charset=utf-8")
            return
        cookie = f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
        body = resources.files("segvol.serve").joinpath("static", "index.html").read_bytes()
        self._send(HTTPStatus.OK, body, STATIC["/"][1], {"Set-Cookie": cookie})

    def _slice(self, query) -> None:
        def one(key, default=None):
            values = query.get(key)
            if not values:
                return default
            return values[0]

        def integer(key, default=None):
            value = one(key, default)
            if value is None or isinstance(value, int):
                return value
            if not INTEGER.fullmatch(value):
                raise ClientError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer")
            return int(value)

        cross = None
        if all(one(k) is not None for k in ("d", "h", "w")):
            cross = (integer("d"), integer("h"), integer("w"))
        png = self.server.workspace.render(one("view", "axial"), integer("index", 0), one("window", "abdomen"), cross)
        self._send(HTTPStatus.OK, png, "image/png")

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        self._body_read, self._body_done = 0, False
        self._guard(lambda: self._post(url))

    def _post(self, url) -> None:
        self._admit(api=True)
        if url.path in ("/api/upload", "/api/upload-labels"):
            self._upload(labels=url.path == "/api/upload-labels")
            return
        if url.path not in ROUTES:
            raise ClientError(HTTPStatus.NOT_FOUND, "no such API call")
        allowed, action = ROUTES[url.path]
        fields = Fields(self._json_body(), allowed)
        result = action(self.server.workspace, fields)
        if url.path == "/api/open":
            self.server.opened_upload(None)
        self._json(result)

    def _upload(self, labels: bool = False) -> None:
        """An uploaded image (opened) or label map (`labels`: read into memory, the file removed at once)."""
        if media_type(self.headers.get("Content-Type")) != "application/octet-stream":
            raise ClientError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the file's bytes with Content-Type: application/octet-stream"
            )
        name = upload_name(self.headers.get("X-Filename"))
        length = self._content_length(self.server.max_upload_bytes)
        folder = self.server.new_upload_folder()
        try:
            with open(folder / name, "xb") as out:  # streamed: memory holds one piece, not the file
                for piece in self._chunks(length):
                    out.write(piece)
            if labels:
                try:
                    state = self.server.workspace.load_labels(folder / name, source=name)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                self._json(state)
                return
            try:
                state = self.server.workspace.open(folder / name)
            except Exception as error:
                raise ClientError(HTTPStatus.BAD_REQUEST, f"{name}: not a readable image ({error})") from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.server.opened_upload(folder)
        self._json(state)


def _discard_waiting(connection) -> None:
    """Drop what a client has already sent (without waiting for more), so that closing does not reset
    the connection before the client has read the answer."""
    try:
        connection.setblocking(False)
        for _ in range(16):
            if not connection.recv(CHUNK):
                break
    except OSError:
        pass
    finally:
        try:
            connection.settimeout(1.0)
        except OSError:
            pass


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def upload_name(header: str | None) -> str:
    """The file name an upload's X-Filename (URI-encoded by the page) gives, checked."""
    try:
        name = plain_text(unquote(header or "upload.nii.gz", errors="strict"), "X-Filename", 255)
    except (UnicodeDecodeError, ValueError) as error:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"upload file name: {error}") from None
    name = PurePosixPath(name.replace("\\", "/")).name
    if not name.lower().endswith(UPLOAD_SUFFIXES) or name.startswith("."):
        raise ClientError(
            HTTPStatus.BAD_REQUEST, f"{name[:60]}: upload a NIfTI, NRRD or MHA file ({', '.join(UPLOAD_SUFFIXES)})"
        )
    return name


class SegVolServer(ThreadingHTTPServer):
    """The server of one `segvol serve` launch: its token, its Host names, its upload folder.

    `workspace` may be set after construction (the CLI binds the port before loading the model).
    `upload_dir`: where the launch's folder of uploads is made (default: the temporary folder);
    folders there left by launches that have ended are removed at start.
    """

    daemon_threads = True
    request_queue_size = 64  # connections beyond the cap are answered 503, not left waiting in the backlog

    def __init__(
        self,
        address,
        workspace,
        max_upload_bytes: int,
        upload_dir: str | None = None,
        *,
        token: str | None = None,
        max_connections: int = 32,
        idle_timeout: float = 30.0,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.workspace = workspace
        self.max_upload_bytes = int(max_upload_bytes)
        self.idle_timeout = float(idle_timeout)
        self.token = token or secrets.token_urlsafe(32)
        self.cookie_name = f"segvol-token-{self.port}"
        self.host_names = self._host_names(address[0])
        self._slots = threading.BoundedSemaphore(max_connections)
        self._categories: list[str] | None = None
        parent = Path(upload_dir or tempfile.gettempdir())
        remove_stale_upload_folders(parent)
        self.upload_root = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=parent))
        (self.upload_root / "owner").write_text(str(os.getpid()))
        self._uploads_lock = threading.Lock()
        self._opened_uploads: list[Path] = []

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _host_names(self, host: str) -> set[str]:
        names = {*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host.lower()}
        if host in ("", "0.0.0.0", "::"):  # every interface: the machine's own names reach it
            try:
                hostname = socket.gethostname()
                names |= {hostname.lower(), socket.getfqdn().lower(), *socket.gethostbyname_ex(hostname)[2]}
            except OSError:
                pass
        return names

    def allowed_host(self, value: str) -> bool:
        match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?", value.strip().lower())
        if match is None:
            return False
        return match[1] in self.host_names and int(match[2] or 80) == self.port

    @property
    def url(self) -> str:
        """The address without the token (what the page is at)."""
        host = self.server_address[0]
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def url_with_token(self) -> str:
        return f"{self.url}?token={self.token}"

    # -- connections ---------------------------------------------------------------------------

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            _answer_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    # -- uploads -------------------------------------------------------------------------------

    def new_upload_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.upload_root))

    def opened_upload(self, folder: Path | None) -> None:
        """An image was opened (the upload in `folder`, or a file of the root when None): remove the
        folders of earlier uploads, except the one that holds the image open now (races included)."""
        with self._uploads_lock:
            if folder is not None:
                self._opened_uploads.append(folder)
            source = getattr(self.workspace, "source", None)
            for kept in list(self._opened_uploads):
                if source is None or kept not in source.parents:
                    shutil.rmtree(kept, ignore_errors=True)
                    self._opened_uploads.remove(kept)

    def server_close(self) -> None:
        super().server_close()
        if hasattr(self, "upload_root"):  # not when binding failed
            shutil.rmtree(self.upload_root, ignore_errors=True)

    # -- messages ------------------------------------------------------------------------------

    def scrub(self, message: str) -> str:
        """`message` with the served folder's and the uploads' absolute paths made relative."""
        uploads = re.escape(str(self.upload_root)) + r"[/\\][^/\\\s'\"]+[/\\]?"
        message = re.sub(uploads, "", message)
        root = getattr(self.workspace, "root", None)
        if root is not None:
            message = re.sub(re.escape(str(root)) + r"[/\\]", "", message)
            message = re.sub(re.escape(str(root)) + r"(?![^\s'\":,)])", ".", message)
        message = message.replace(str(self.upload_root), "")
        # any other absolute path (a library's file, the home folder): its last part only
        message = re.sub(r"(?<![\w.~-])(?:/[^\s/'\"]+){2,}", lambda m: "…/" + m[0].rsplit("/", 1)[1], message)
        return re.sub(r"\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)+", "…\\\\", message)

    def categories(self) -> list[str]:
        if self._categories is None:
            try:
                from segvol.vocabulary import known_categories

                weights = str(getattr(self.workspace, "weights", "") or "")
                # a model fine-tuned on your own data records its categories: offer them too
                local = [weights] if "://" not in weights and Path(weights).is_file() else []
                self._categories = sorted(known_categories(checkpoints=local))
            except Exception as error:  # completion is a help, not a requirement
                log.warning("no category list for completion: %s", error)
                self._categories = []
        return self._categories


def _answer_busy(request) -> None:
    """503 straight from the accepting thread: no thread, no waiting for a slow client."""
    body = b'{"error": "the server is busy: too many connections"}'
    head = (
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Retry-After: 1\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    _discard_waiting(request)
    try:
        request.sendall(head + body)
    except OSError:
        pass


def remove_stale_upload_folders(parent: Path) -> None:
    """Remove the upload folders that earlier launches (of this user, now ended) left in `parent`."""
    if os.name != "posix":
        return  # no safe way to ask whether a process lives
    try:
        candidates = list(parent.glob(UPLOAD_PREFIX + "*"))
    except OSError:
        return
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # that launch still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        log.info("removing the uploads an ended segvol serve left: %s", folder.name)
        shutil.rmtree(folder, ignore_errors=True)
