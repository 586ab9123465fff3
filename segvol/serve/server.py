"""The HTTP side of `segvol serve`: the page, its assets and a small JSON API over one `Workspace`.

Python's own `ThreadingHTTPServer` is enough for one person at one browser and adds no dependency;
the page's assets are files of this package (no CDN), so the app works offline.

API (JSON in and out; errors are `{"error": "<one line>"}` with a 4xx status, the server keeps running):
  GET  /api/state                              the open image, its views and objects
  GET  /api/files                              images under the served folder
  GET  /api/categories                         names `segvol categories` knows (text completion)
  POST /api/open      {"path"}                 open a file of the served folder
  POST /api/upload    body = file bytes, header X-Filename; size-limited, read like `segvol predict`
  POST /api/object    {"name"}                 a new object
  POST /api/point     {"object", "view", "index", "x", "y", "positive"}
  POST /api/box       {"object", "view", "index", "x0", "y0", "x1", "y1"}
  POST /api/text      {"object", "text"}
  POST /api/undo
  POST /api/export    {"name"}                 label map + JSON, as `segvol predict` writes them
  GET  /api/slice?view=&index=&window=&d=&h=&w=   PNG of one slice with masks and crosshair
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


class Handler(BaseHTTPRequestHandler):
    server: "SegVolServer"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": " ".join(str(message).split())}, status)

    def _body(self, limit: int) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            # Read and drop the body (in chunks, never stored) so the client sees the answer, not a reset.
            remaining = length if length <= 64 * limit else 0
            while remaining > 0:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)) or b"\0" * remaining)
            raise OverflowError(f"upload of {length} bytes is over the limit of {limit} bytes")
        return self.rfile.read(length)

    def _guard(self, action) -> None:
        try:
            action()
        except OverflowError as error:
            self.close_connection = True  # the rest of the body is never read
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error)
        except PermissionError as error:
            self._error(HTTPStatus.FORBIDDEN, error)
        except FileNotFoundError as error:
            self._error(HTTPStatus.NOT_FOUND, error)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            self._error(HTTPStatus.BAD_REQUEST, error)
        except Exception as error:  # never take the server down for one request
            log.exception("request failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(error).__name__}: {error}")

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            body = resources.files("segvol.serve").joinpath("static", name).read_bytes()
            self._send(HTTPStatus.OK, body, content_type)
            return
        workspace = self.server.workspace
        routes = {
            "/api/state": lambda: self._json(workspace.describe()),
            "/api/files": lambda: self._json({"files": workspace.files()}),
            "/api/categories": lambda: self._json({"categories": self.server.categories()}),
            "/api/slice": lambda: self._slice(parse_qs(url.query)),
        }
        if url.path not in routes:
            self._error(HTTPStatus.NOT_FOUND, f"{url.path}: not found")
            return
        self._guard(routes[url.path])

    def _slice(self, query) -> None:
        def one(key, default=None):
            values = query.get(key)
            return values[0] if values else default

        cross = None
        if all(one(k) is not None for k in ("d", "h", "w")):
            cross = (int(one("d")), int(one("h")), int(one("w")))
        png = self.server.workspace.render(one("view", "axial"), int(one("index", 0)), one("window", "abdomen"), cross)
        self._send(HTTPStatus.OK, png, "image/png")

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path == "/api/upload":
            self._guard(self._upload)
            return
        workspace = self.server.workspace

        def handle():
            payload = json.loads(self._body(1 << 20) or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            routes = {
                "/api/open": lambda: workspace.open(workspace.inside_root(payload["path"])),
                "/api/object": lambda: workspace.add_object(payload.get("name", "")),
                "/api/point": lambda: workspace.add_point(payload["object"], payload["view"], payload["index"],
                                                          float(payload["x"]), float(payload["y"]),
                                                          bool(payload.get("positive", True))),
                "/api/box": lambda: workspace.set_box_range(payload["object"], payload["view"], payload["index"],
                                                            (float(payload["x0"]), float(payload["y0"])),
                                                            (float(payload["x1"]), float(payload["y1"]))),
                "/api/text": lambda: workspace.set_text(payload["object"], payload.get("text", "")),
                "/api/undo": workspace.undo,
                "/api/export": lambda: workspace.export(payload.get("name", "")),
            }
            if url.path not in routes:
                raise FileNotFoundError(f"{url.path}: not found")
            self._json(routes[url.path]())

        self._guard(handle)

    def _upload(self) -> None:
        name = Path(self.headers.get("X-Filename") or "upload.nii.gz").name
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise ValueError(f"{name}: upload a NIfTI, NRRD or MHA file ({', '.join(UPLOAD_SUFFIXES)})")
        data = self._body(self.server.max_upload_bytes)
        folder = Path(tempfile.mkdtemp(prefix="segvol-upload-", dir=self.server.upload_dir))
        path = folder / name
        path.write_bytes(data)
        try:
            state = self.server.workspace.open(path)
        except Exception as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise ValueError(f"{name}: not a readable image ({' '.join(str(error).split())})") from None
        self._json(state)


class SegVolServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, workspace, max_upload_bytes: int, upload_dir: str | None = None) -> None:
        super().__init__(address, Handler)
        self.workspace = workspace
        self.max_upload_bytes = int(max_upload_bytes)
        self.upload_dir = upload_dir
        self._categories: list[str] | None = None

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

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
