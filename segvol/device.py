"""One device choice for every command that runs a model: `--device auto|cpu|cuda|cuda:N|mps`.

`auto` takes CUDA, then MPS, then the CPU. Asking for a device this machine does not have is a
user error (`ValueError`, one line, exit 2), never a traceback from deep inside torch.
"""

from __future__ import annotations

import re

DEVICE_HELP = "auto (CUDA, then MPS, then CPU; default), cpu, cuda, cuda:N, mps"
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def add_device_argument(parser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help=DEVICE_HELP)


def resolve_device(spec: str | None = "auto"):
    """The `torch.device` that `spec` names, checked against this machine (and noted for provenance).

    Raises ValueError with one line when `spec` is malformed or the device is missing.
    """
    device = _resolve(spec)
    from segvol import provenance

    provenance.set_device(device)
    return device


def _resolve(spec: str | None):
    import torch

    spec = (spec or "auto").strip().lower()
    if not _PATTERN.match(spec):
        raise ValueError(f"--device {spec!r}: expected one of {DEVICE_HELP}")
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not mps_available:
        raise ValueError(f"--device {spec}: MPS is not available on this machine (use --device cpu or auto)")
    return device
