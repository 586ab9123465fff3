"""Interactive segmentation in your browser: open a CT/MR, click, drag a box, type an organ.

The page shows axial, coronal and sagittal views (scroll to move through slices, click to move the
crosshair) with window presets (abdomen, lung, bone, brain). Each object has a name and a colour; its
prompts are positive/negative points (click in point mode; shift-click for negative), a 3D box (drag a
rectangle on two views) and a text (with completion from `segvol categories`). Every change segments
the object again and overlays the mask in all views (a click costs no encoder pass once the object is
segmented; a newer click supersedes one still running, whose result is dropped). Export writes the label
map and its JSON into the served folder exactly as `segvol predict` writes them for the same prompts.

An existing mask as a start: load a label map (a file of the folder or an upload, on the open image's
grid), pick one of its labels (names come from a <stem>.json or labels.txt next to it) and import it as an
object; clicks then edit it, and its export equals `segvol predict --init-mask LABELS:ID` with the same
prompts. Details: docs/interactive.md.

Security (docs/security.md): the server listens on 127.0.0.1 unless --host says otherwise (which needs
--allow-remote). It prints an address with a token made for this launch, as Jupyter does: the first page
load with it sets a cookie, and every API call without the token is refused, as is any request that names
another host or comes from another web page. Only files inside --root can be opened; uploads are
size-limited, read like `segvol predict` inputs and removed when replaced or when the server stops.
From another machine, prefer an SSH tunnel (ssh -L 8765:127.0.0.1:8765 HOST) to --allow-remote.

example:
  segvol serve --checkpoint models/finetune/segvol/model.safetensors --root ~/scans
  (then open the printed http://127.0.0.1:8765/?token=... in a browser)
"""

from __future__ import annotations

import argparse
import logging

from segvol.device import add_device_argument, resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", help="model weights: our .safetensors, an official file or hf://BAAI/SegVol")
    parser.add_argument(
        "--root", default=".", help="folder whose images can be opened and where exports go (default: .)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback (anyone with the printed token and a route to the "
        "port can read --root's images; the traffic is not encrypted)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest accepted upload (default 1024 MB)")
    parser.add_argument("--mode", choices=("zoom", "resize", "window"), default="zoom", help="inference mode")
    add_device_argument(parser)
    parser.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    import signal
    import threading
    from pathlib import Path

    from segvol.serve.server import SegVolServer
    from segvol.serve.workspace import Workspace

    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ValueError(f"--host {args.host}: not a loopback address; add --allow-remote to serve others")
        log.warning(
            "serving on %s: anyone with the token who can reach this port can open the images under %s "
            "(unencrypted; an SSH tunnel to 127.0.0.1 is safer)",
            args.host,
            Path(args.root).resolve(),
        )
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: --root must be an existing folder")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: not a port (0..65535)")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    try:  # the port first: a port in use is reported before the model loads
        server = SegVolServer((args.host, args.port), None, max_upload_bytes=int(args.max_upload_mb * 2**20))
    except OSError as error:
        raise RuntimeError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror or error}; "
            "choose another --port (0 picks a free one)"
        ) from None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        device = resolve_device(args.device)
        model = load_model(args.checkpoint, args.random_weights, args.preset, device)
        server.workspace = Workspace(model, root, mode=args.mode)
        server.workspace.weights = args.checkpoint or f"random weights ({args.preset})"
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # a stop by `kill` cleans up like Ctrl-C
        # The token appears only here (never in the log): whoever has it can use the server.
        print(f"segvol serve: open {server.url_with_token} (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        server.server_close()  # also removes this launch's uploads
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def load_model(checkpoint, random_weights: bool, preset: str, device):
    import torch

    if checkpoint and random_weights:
        raise ValueError("give either --checkpoint or --random-weights, not both")
    if checkpoint:
        from segvol.model.checkpoint import load

        model = load(checkpoint)
    elif random_weights:
        from segvol.model import build_model, model_config

        torch.manual_seed(0)
        model = build_model(model_config(preset))
        log.warning("using RANDOM weights (--random-weights): the segmentation is meaningless")
    else:
        raise ValueError("no weights: give --checkpoint PATH|hf://BAAI/SegVol")
    return model.to(device).eval()
