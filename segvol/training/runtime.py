"""Training runtime shared by `segvol pretrain` and `segvol finetune`.

Device choice, threads, DDP set-up (torchrun environment), the warmup + cosine schedule, exact
resume checkpoints and the metrics CSV.

Resume contract: every `checkpoint_every` optimizer steps the full training state (model,
optimizer, scheduler, RNG states, next step) is written atomically to `<out>.ckpt/state.pt`
together with a fingerprint of the settings and a content key of every input (`content_key`).
A later run with the same `--out`, the same settings and unchanged inputs continues from there;
one whose settings or input contents changed (same paths, e.g. a re-pretrained encoder) starts
afresh and logs which input changed. Per-sample randomness is derived from (seed, step, sample),
so the data stream after a resume is the same as in an uninterrupted run.

Determinism (`setup_runtime`): deterministic kernels, MKL's conditional numerical
reproducibility and an intra-op thread count taken from the settings (never from the cores
Snakemake grants), so the same settings and seed give the same bytes on the same machine and
software. The thread count matters: the same fine-tuning with 1 and 2 threads ended with 64 of
122 tensors different (up to 1e-5, largest in biases, whose gradients are sums over all tokens:
CPU reductions split their work, and so their rounding, by thread).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A precaution: MKL reads this once, at its first call; a CNR code path keeps GEMM results
# independent of the memory alignment of the operands, which can vary from run to run.
os.environ.setdefault("MKL_CBWR", "AUTO")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from segvol.device import resolve_device
from segvol.io.atomic import atomic_path
from segvol.provenance import sha256_file

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Devices, threads, distributed


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: device, rank and world size (world 1 without DDP)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(threads: int | None = None, device: str | None = None) -> Runtime:
    """Deterministic kernels, `threads` intra-op threads and, under torchrun (WORLD_SIZE > 1),
    the process group.

    NCCL is used on CUDA, gloo otherwise (CPU DDP is what the tests exercise).
    """
    if threads:
        torch.set_num_threads(int(threads))
    # cuBLAS needs a fixed workspace to be deterministic; it is read when CUDA initialises
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda" and world_size > 1:
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(device=chosen, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs; full precision elsewhere (CPU bf16 is slower than fp32 here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_sum(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum of `value` over ranks (identity without DDP)."""
    if runtime.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


# ----------------------------------------------------------------------------------------------
# Schedule


def warmup_cosine(total_steps: int, warmup_steps: int):
    """lr factor per optimizer step: linear warmup to 1, then cosine to 0 at `total_steps`.

    Step 0 already trains (factor 1/warmup) instead of the released epoch-0-at-lr-0 quirk.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ----------------------------------------------------------------------------------------------
# Exact resume


def fingerprint(*parts: Any) -> str:
    """Stable hash of settings, so a checkpoint of other settings is never resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ZARR_METADATA = {"zarr.json", ".zattrs", ".zarray", ".zgroup"}


def content_key(source: str | os.PathLike | None) -> str | None:
    """A key that changes when the content of a training input changes.

    - a file (encoder, init checkpoint): sha256 of its bytes;
    - a folder (Zarr store): sha256 over every metadata document (`zarr.json`: shapes, chunking,
      every root and per-case attr, including the per-case intensity statistics of `normalize`
      and the segment sizes of `pseudo`) and the relative path and size of every chunk file.
      Hashing every chunk would cost as much as reading the whole store (an epoch at paper
      scale); compressed chunk sizes and the statistics change with almost any content change,
      for the price of a directory listing.
    - anything else (`hf://` references, None): the reference itself.
    """
    if source is None:
        return None
    path = Path(source)
    if path.is_file():
        return "sha256:" + sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            for name in sorted(files):
                file = Path(folder) / name
                relative = file.relative_to(path).as_posix()
                if name in ZARR_METADATA:
                    digest.update(f"{relative}\0".encode() + file.read_bytes() + b"\0")
                else:
                    digest.update(f"{relative}\0{file.stat().st_size}\0".encode())
        return "store:" + digest.hexdigest()
    return str(source)


def input_keys(**inputs: str | os.PathLike | Sequence | None) -> dict[str, Any]:
    """`content_key` of every named input (a path, a list of paths or None)."""
    keys: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, (list, tuple)):
            keys[name] = {str(item): content_key(item) for item in value}
        else:
            keys[name] = content_key(value)
    return keys


def checkpoint_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(
    out: str | os.PathLike,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    tag: str,
    inputs: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the full training state after `step` optimizer steps (atomic, tensors only).

    `inputs`: the `input_keys` of the run, checked by `load_training_state`.
    """
    directory = checkpoint_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": int(step),
        "tag": tag,
        "inputs": json.dumps(inputs or {}, sort_keys=True),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_states(),
        "extra": extra or {},
    }
    path = directory / "state.pt"
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return path


def load_training_state(
    out: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    tag: str,
    inputs: dict | None = None,
    map_location: torch.device | str = "cpu",
) -> tuple[int, dict]:
    """Restore a state written by `save_training_state`; returns (next step, extra) or (0, {}).

    The file is read with `weights_only=True` (never unpickles arbitrary objects). A checkpoint
    written with other settings (different `tag`) or for inputs whose content has changed
    (different `inputs`) is ignored with a warning that says why: the run starts afresh.
    """
    path = checkpoint_dir(out) / "state.pt"
    if not path.is_file():
        return 0, {}
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated file must not block a fresh start
        log.warning("ignoring unreadable training checkpoint %s: %s", path, error)
        return 0, {}
    if state.get("tag") != tag:
        log.warning("ignoring training checkpoint %s: it was written with other settings; starting afresh", path)
        return 0, {}
    written = json.loads(state.get("inputs") or "{}")
    inputs = json.loads(json.dumps(inputs or {}, sort_keys=True))
    if written != inputs:
        changed = sorted(name for name in set(written) | set(inputs) if written.get(name) != inputs.get(name))
        log.warning(
            "ignoring training checkpoint %s: the content of its input(s) %s changed since it was "
            "written; starting afresh",
            path,
            ", ".join(changed),
        )
        return 0, {}
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    log.info("resuming from %s at step %d", path, state["step"])
    return int(state["step"]), dict(state.get("extra", {}))


def remove_training_state(out: str | os.PathLike) -> None:
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------
# Metrics


class MetricsLog:
    """Per-step metrics appended to `<out stem>.metrics.csv` (and TensorBoard when installed).

    On resume, rows after the resumed step are dropped so the file matches one clean run.
    """

    def __init__(self, out: str | os.PathLike, fields: list[str], start_step: int = 0, enabled: bool = True):
        out = Path(out)
        self.path = out.with_name(out.name.split(".")[0] + ".metrics.csv")
        self.fields = ["step", *fields]
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        kept: list[dict] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._handle, fieldnames=self.fields, extrasaction="ignore")
        self._csv.writeheader()
        self._csv.writerows(kept)
        self._handle.flush()
        try:  # optional dependency
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path.with_suffix("")) + ".tensorboard")
        except Exception:
            self._writer = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._csv.writerow({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        self._handle.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._handle.close()
        if self._writer is not None:
            self._writer.close()


@contextlib.contextmanager
def progress(total: int, initial: int, enabled: bool, description: str) -> Iterator[Any]:
    """Training progress on the main rank (`segvol.progress`: a bar on a terminal, lines in a log)."""
    from segvol.progress import progress_bar

    bar = progress_bar(total=total, initial=initial, desc=description, unit="step", disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()
