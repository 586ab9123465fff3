"""Model checkpoints: ours (safetensors + ModelConfig) and the released SegVol formats (docs/model.md#checkpoints).

Recognised sources (files are never unpickled beyond tensors: torch.load(weights_only=True)):

| source                          | container                    | key prefix         | loads into      |
|---------------------------------|------------------------------|--------------------|-----------------|
| ours (`save`)                   | safetensors, config metadata | none               | its own config  |
| GitHub `SegVol_v1.pth`          | dict with 'model'            | `module.`          | `base`          |
| HF `pytorch_model.bin`          | flat                         | `model.`           | `base`          |
| SimMIM `ViT_pretrain.ckpt`      | dict with 'state_dict'       | `model.encoder.`   | image encoder   |
| plain safetensors of the above  | flat                         | as above           | as above        |
| `hf://BAAI/SegVol[/file]`       | downloaded with huggingface_hub (default file pytorch_model.bin) |

Loading is strict apart from these documented differences: the CLIP `position_ids` buffer
(persistent only in old transformers), unused cross-attention parameters that recent MONAI
ViTs create, and a pretrained text backbone that is not CLIP (`minilm`, a local model folder):
ours are saved without it because it is rebuilt from its own files.

`load` memory-maps safetensors and torch zip files and hands their pages back to the kernel as
it copies them into the model, so loading peaks at the model plus ~64 MB, not model plus file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvol import provenance
from segvol.io.atomic import atomic_path
from segvol.model.build import build_model
from segvol.model.config import ModelConfig, model_config
from segvol.model.mask_prompt import PREFIX as MASK_PROMPT_PREFIX
from segvol.model.mask_prompt import MaskPromptEncoder3D, attach_mask_prompt, build_mask_prompt, mask_prompt_path

FORMAT = "segvol-workflow"
MASK_PROMPT_FORMAT = "segvol-mask-prompt"
FORMAT_VERSION = "1"
HF_PREFIX = "hf://"
HF_DEFAULT_FILE = "pytorch_model.bin"
ENCODER_ONLY = "encoder-only"

_OPTIONAL_KEYS = re.compile(
    r"^(text_encoder\.clip_text_model\.text_model\.embeddings\.position_ids"
    r"|image_encoder\.blocks\.\d+\.(norm_cross_attn|cross_attn)\..*)$"
)
_ENCODER_TOP_LEVEL = ("patch_embedding.", "blocks.", "norm.")


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed the module; pickles name either
    return core.multiarray.scalar


# Training checkpoints of other projects store their argparse options and numpy scalars beside
# the weights; these plain data types are safe to rebuild, nothing else is.
_HARMLESS_GLOBALS = [argparse.Namespace, np.dtype, _numpy_scalar()] + [
    type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")
]


# --------------------------------------------------------------------------------------- save


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """safetensors file whose bytes depend only on the tensors and the metadata (atomic).

    The safetensors writer keeps `__metadata__` in a hash map, so its key order (and the file's
    sha256) changes from process to process; the header is rewritten here with sorted keys
    (tensor offsets are relative to the data section, so they stay valid).
    """
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
        _sort_header(Path(temporary))
    return path


def _sort_header(path: Path) -> None:
    with open(path, "r+b") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(length))
        stable = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
        stable.update(sorted(header.items()))
        text = json.dumps(stable, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned
        if len(text) == length:  # the usual case: same compact JSON, other order
            handle.seek(8)
            handle.write(text)
            return
        data = handle.read()
        handle.seek(0)
        handle.write(struct.pack("<Q", len(text)) + text + data)
        handle.truncate()


def save(model: nn.Module, path: str | os.PathLike, vocabulary: list[str] | None = None) -> Path:
    """Write `model` as safetensors with its ModelConfig in the metadata (atomic, stable bytes).

    `vocabulary`: the category names the model was trained to segment (metadata `vocabulary`, a JSON
    list; `read_vocabulary` and `segvol categories --checkpoint` read it back).
    """
    config: ModelConfig = model.config
    skip = _external_backbone_prefix(model)
    tensors = {
        key: value.detach().to("cpu").contiguous()
        for key, value in model.state_dict().items()
        if not (skip and key.startswith(skip)) and not key.startswith(MASK_PROMPT_PREFIX)
    }
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_json(),
        "text_backbone_stored": "false" if skip else "true",
    }
    if vocabulary is not None:
        metadata["vocabulary"] = json.dumps(sorted(set(vocabulary)))
    path = write_safetensors(tensors, path, metadata)
    provenance.write_sidecar(path)
    save_mask_prompt(model, path)  # the optional mask-prompt branch: its own file beside this one
    return path


def save_image_encoder(target: nn.Module, path: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Write only the image encoder of `target` (a SegVol or an ImageEncoderViT3D), atomically.

    Keys are `image_encoder.*`; `load_image_encoder` reads it (e.g. pretrain -> finetune).
    """
    encoder = getattr(target, "image_encoder", target)
    config = config or getattr(target, "config", None)
    tensors = {"image_encoder." + k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "content": "image_encoder"}
    if config is not None:
        metadata["model_config"] = config.to_json()
    path = write_safetensors(tensors, path, metadata)
    provenance.write_sidecar(path)
    return path


# --------------------------------------------------------------------------------------- read


def resolve(source: str | os.PathLike) -> Path:
    """A local file for `source`; `hf://owner/repo[/file]` is downloaded with huggingface_hub."""
    text = str(source)
    if not text.startswith(HF_PREFIX):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    parts = text[len(HF_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{text}: expected hf://owner/repo or hf://owner/repo/path/to/file")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or HF_DEFAULT_FILE
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as error:  # offline mode, no network, missing repo/file, auth: all end here
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = "HF_HUB_OFFLINE is set" if offline else "no network access or no such file"
        raise FileNotFoundError(
            f"{text}: cannot download {filename} from the Hugging Face Hub ({hint}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); download it where you have internet "
            "and pass the local file path instead"
        ) from error


def _read_raw(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:  # checks the header
                metadata = handle.metadata() or {}
            return _mapped_safetensors(path) or load_file(str(path)), metadata
        except Exception as error:
            raise ValueError(f"{path}: unreadable safetensors file: {error}") from error
    if head[:2] == b"PK" or head[:1] == b"\x80":
        try:
            with torch.serialization.safe_globals(_HARMLESS_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=head[:2] == b"PK")
        except Exception as error:
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            reason = f"it refers to {unsafe.group(1)}" if unsafe else str(error).splitlines()[0]
            # torch's own advice (retry with weights_only=False) is exactly what must not happen here.
            reason = re.split(r"\s*(In PyTorch 2\.6|Re-running `torch\.load`)", reason)[0] or "not a tensor-only file"
            raise ValueError(
                f"{path}: cannot read it as a weights-only torch checkpoint (arbitrary objects are never "
                f"unpickled): {reason}"
            ) from error
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        return obj, {}
    raise ValueError(f"{path}: not a checkpoint (neither safetensors nor a torch.save file)")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _mapped_safetensors(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a safetensors file as views of one private memory map of it (as
    ``torch.load(mmap=True)`` gives for torch files), so that loading never holds a second full
    copy of the weights (see `_load_normalized`). None where it cannot map them."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    if any(entry["dtype"] not in _SAFETENSORS_DTYPES for entry in header.values()):
        return None
    try:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    except (OSError, RuntimeError):  # a file system without memory maps: read it whole instead
        return None
    data = torch.empty(0, dtype=torch.uint8).set_(storage)[8 + length :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype, raw = _SAFETENSORS_DTYPES[entry["dtype"]], data[begin:end]
        if (8 + length + begin) % dtype.itemsize:
            raw = raw.clone()  # misaligned for its dtype: this one is copied
        tensors[name] = raw.view(dtype).reshape(entry["shape"])
    return tensors


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (from /proc/self/maps; none elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    target = os.path.realpath(path)
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            low, high = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def _drop_resident_pages(ranges: list[tuple[int, int]]) -> None:
    """Hand the resident pages of read-only-used file mappings back to the kernel (madvise
    DONTNEED): a page touched again is re-read from the file, so nothing changes but memory."""
    import ctypes

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for low, high in ranges:
        madvise(low, high - low, 4)  # MADV_DONTNEED


def read_weights(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict of a safetensors or weights-only torch file, unwrapped from a
    'model' / 'state_dict' / 'model_state_dict' entry; key names as stored."""
    path = resolve(source)
    raw, _ = _read_raw(path)
    return _unwrap(raw, path)


def _unwrap(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for wrapper in ("model", "state_dict", "model_state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    raise ValueError(
        f"{path}: no state dict found (top-level keys: {_short(sorted(map(str, obj)), 8)}; "
        "expected tensors, or a 'model' / 'state_dict' entry of tensors)"
    )


def _normalize(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Keys in our naming; returns (state, kind) with kind in github|huggingface|simmim|plain|encoder-only."""
    keys = list(state)

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    if keys and all(k.startswith("module.") for k in keys):
        state, kind = strip("module."), "github"
    elif any(k.startswith("model.encoder.") for k in keys) and not any(
        k.startswith("model.image_encoder.") for k in keys
    ):
        encoder = strip("model.encoder.")
        return {"image_encoder." + k: v for k, v in encoder.items()}, "simmim"
    elif keys and all(k.startswith("model.") for k in keys):
        state, kind = strip("model."), "huggingface"
    else:
        kind = "plain"
    if state and all(k.startswith(_ENCODER_TOP_LEVEL) for k in state):
        return {"image_encoder." + k: v for k, v in state.items()}, ENCODER_ONLY
    if state and all(k.startswith("image_encoder.") for k in state):
        return state, ENCODER_ONLY
    return state, kind


def read_state_dict(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(state dict in our key names, metadata, kind) of any recognised checkpoint."""
    path = resolve(source)
    raw, metadata = _read_raw(path)
    state, kind = _normalize(_unwrap(raw, path))
    if metadata.get("format") == FORMAT and kind != ENCODER_ONLY:
        kind = FORMAT
    if not state:
        raise ValueError(f"{path}: the checkpoint holds no model weights")
    return state, metadata, kind


def read_vocabulary(source: str | os.PathLike) -> list[str]:
    """The category names a checkpoint of ours records (`save(..., vocabulary=...)`); [] for files
    without a record (the released ones, older ones of ours). Reads the safetensors header only."""
    path = resolve(source)
    with open(path, "rb") as handle:
        head = handle.read(9)
    if not (len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000):
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        names = json.loads(metadata.get("vocabulary") or "[]")
    except Exception as error:
        raise ValueError(f"{path}: unreadable vocabulary record: {error}") from error
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: the vocabulary record is not a list of names")
    return names


# --------------------------------------------------------------------------------------- load


def _config_from_metadata(metadata: dict[str, str], source, overrides: dict[str, Any]) -> ModelConfig:
    """The checkpoint's ModelConfig (ours) or `base` (official files); the metadata is untrusted: its
    values are checked against ModelConfig's limits (segvol/config.schema.yaml) before anything is built."""
    if metadata.get("format") == FORMAT:
        try:
            values = json.loads(metadata["model_config"])
        except (KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: broken model_config in the checkpoint metadata ({error})") from error
        if not isinstance(values, dict):
            raise ValueError(f"{source}: broken model_config in the checkpoint metadata (not a JSON object)")
        values.update(overrides)
        try:
            return ModelConfig.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: model_config in the checkpoint metadata: {error}") from None
    return model_config("base", **overrides)


_VISION_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def check_shapes_fit(config: ModelConfig, state: dict[str, torch.Tensor], source) -> None:
    """Refuse a checkpoint whose image encoder, prompt encoder or mask decoder tensors are not
    exactly those of a model of `config`, before `build_model` allocates it: the expected shapes
    come from the parts built on the `meta` device (no memory), the file's from its header (the
    tensors are memory-mapped, not read). The text encoder is checked after the build, as before
    (its size is fixed by its backbone, not by the config)."""
    from segvol.model.build import build_vision_parts

    with torch.device("meta"):
        parts = build_vision_parts(config)
    expected = {
        prefix + key: value for prefix, part in zip(_VISION_PREFIXES, parts) for key, value in part.state_dict().items()
    }
    vision = {key: value for key, value in state.items() if key.startswith(_VISION_PREFIXES)}
    problems = key_differences(expected, vision, lambda key: bool(_OPTIONAL_KEYS.match(key)))
    if problems:
        raise ValueError(f"{source}: checkpoint does not fit the model ({_describe(config)}): " + "; ".join(problems))


def load(source: str | os.PathLike, **overrides: Any):
    """A SegVol built from the checkpoint's config (ours) or `base` (official), weights loaded, eval mode.

    `overrides` replace ModelConfig fields (e.g. text_encoder="minilm" for a checkpoint saved
    with a CLIP path that is not wanted; shapes must still match).
    """
    path = resolve(source)
    state, metadata, kind = read_state_dict(path)
    if kind in ("simmim", ENCODER_ONLY):
        raise ValueError(
            f"{source}: holds only image-encoder weights ({kind}); build a model and call load_image_encoder"
        )
    config = _config_from_metadata(metadata, source, overrides)
    check_shapes_fit(config, state, source)
    model = build_model(config)
    _load_normalized(model, state, source, mapped=path)
    load_mask_prompt(model, path)  # attached only when its file lies beside the model file
    return model.eval()


def load_into(model: nn.Module, source: str | os.PathLike) -> nn.Module:
    """Load a full checkpoint into `model` strictly (known differences aside); returns `model`."""
    state, _, kind = read_state_dict(source)
    if kind in ("simmim", ENCODER_ONLY):
        raise ValueError(f"{source}: holds only image-encoder weights ({kind}); use load_image_encoder")
    _load_normalized(model, state, source)
    return model


def load_image_encoder(target: nn.Module, source: str | os.PathLike) -> nn.Module:
    """Load only the image encoder (SimMIM `ViT_pretrain.ckpt`, a full checkpoint, ours, ...).

    `target` is a SegVol or an ImageEncoderViT3D; returns the encoder.
    """
    encoder = getattr(target, "image_encoder", target)
    state, _, _ = read_state_dict(source)
    encoder_state = {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}
    if not encoder_state:
        raise ValueError(f"{source}: no image-encoder weights in the checkpoint")
    _load_normalized(encoder, encoder_state, source, optional_prefix="image_encoder.")
    return encoder


def _external_backbone_prefix(model: nn.Module) -> str | None:
    text_encoder = getattr(model, "text_encoder", None)
    if text_encoder is None or getattr(text_encoder, "kind", "clip") == "clip":
        return None
    return "text_encoder." + text_encoder.backbone_prefix


def load_state_dict(model: nn.Module, state: dict[str, Any], source: str = "<state dict>") -> nn.Module:
    """Load an in-memory state dict in any recognised layout (ours, `module.`, `model.`, wrapped)."""
    normalized, kind = _normalize(_unwrap(state, Path(source)))
    if not hasattr(model, "image_encoder"):  # a bare image encoder
        encoder_state = {k[len("image_encoder.") :]: v for k, v in normalized.items() if k.startswith("image_encoder.")}
        _load_normalized(model, encoder_state, source, optional_prefix="image_encoder.")
        return model
    if kind in ("simmim", ENCODER_ONLY):
        raise ValueError(f"{source}: holds only image-encoder weights ({kind}); use load_image_encoder")
    _load_normalized(model, normalized, source)
    return model


def _load_normalized(
    model: nn.Module, state: dict[str, torch.Tensor], source, optional_prefix: str = "", mapped: Path | None = None
) -> None:
    """Copy ``state`` into ``model`` strictly. ``mapped``: the file ``state`` was just read from
    by this module, memory-mapped (torch zip, safetensors) and seen by no one else: its pages are
    given back as the copy goes, so the peak is the model plus ~64 MB, not model plus file."""
    # The mask-prompt branch has its own file (segvol.model.mask_prompt), never the model file's keys.
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(MASK_PROMPT_PREFIX)}
    external = _external_backbone_prefix(model)

    def optional(key: str) -> bool:
        full = optional_prefix + key
        return bool(_OPTIONAL_KEYS.match(full)) or bool(external and full.startswith(external))

    parts = key_differences(expected, state, optional)
    if parts:
        config = getattr(model, "config", None)
        what = f"the model ({_describe(config)})" if config is not None else f"the {type(model).__name__}"
        raise ValueError(f"{source}: checkpoint does not fit {what}: " + "; ".join(parts))
    ranges = _file_mappings(mapped) if mapped is not None else []
    copied = 0
    with torch.no_grad():
        for key, target in expected.items():
            if key in state:
                target.copy_(state[key])
                copied += target.numel() * target.element_size()
                if ranges and copied > 64 << 20:
                    _drop_resident_pages(ranges)
                    copied = 0
    if ranges:
        _drop_resident_pages(ranges)
    # Cached text features depend on the weights just replaced.
    for module in model.modules():
        if hasattr(module, "clear_cache"):
            module.clear_cache()


def key_differences(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], optional=lambda key: False
) -> list[str]:
    """Why `state` does not fit a model whose state dict is `expected`: missing, unexpected and
    wrongly shaped keys, a readable part each (empty when it fits)."""
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected and not optional(k)]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_short(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_short(mismatched)}")
    return parts


def _describe(config: ModelConfig) -> str:
    return (
        f"spatial {list(config.spatial_size)}, patch {list(config.patch_size)}, hidden {config.hidden_size}, "
        f"{config.num_layers} layers, text {config.text_encoder}"
    )


def _short(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def model_from_settings(settings: dict[str, Any]):
    """The model of a workflow `model:` settings block, with `init_checkpoint` loaded if given.

    A full checkpoint is loaded strictly; an encoder-only one (SimMIM) into the image encoder.
    """
    from segvol.model.config import model_config_from_settings

    model = build_model(model_config_from_settings(settings))
    source = settings.get("init_checkpoint")
    if source:
        state, _, kind = read_state_dict(source)
        if kind in ("simmim", ENCODER_ONLY):
            load_image_encoder(model, source)
        else:
            _load_normalized(model, state, source)
            if not str(source).startswith(HF_PREFIX):
                load_mask_prompt(model, source)
    return model


# --------------------------------------------------------------------- the mask-prompt branch


def save_mask_prompt(model: nn.Module, model_path: str | os.PathLike) -> Path | None:
    """Write the model's mask-prompt branch (segvol.model.mask_prompt) beside ``model_path`` as
    ``<stem>.mask_prompt.safetensors`` (atomic, stable bytes, keys ``mask_prompt_encoder.*``); None when it has none."""
    branch = getattr(model, "mask_prompt_encoder", None)
    if branch is None:
        return None
    path = mask_prompt_path(model_path)
    tensors = {
        MASK_PROMPT_PREFIX + key: value.detach().to("cpu").contiguous() for key, value in branch.state_dict().items()
    }
    metadata = {
        "format": MASK_PROMPT_FORMAT,
        "embed_dim": str(model.config.hidden_size),
        "grid_size": ",".join(map(str, model.config.grid_size)),
        "mask_in_chans": str(model.config.mask_in_chans),
    }
    write_safetensors(tensors, path, metadata)
    provenance.write_sidecar(path)
    return path


def load_mask_prompt(model: nn.Module, model_path: str | os.PathLike) -> MaskPromptEncoder3D | None:
    """Attach and load the branch stored beside ``model_path``; None (model unchanged) when there is no such file.

    Raises ValueError naming the file when its tensors do not fit the model.
    """
    path = mask_prompt_path(model_path)
    if not path.is_file():
        return None
    state = read_weights(path)
    expected = {MASK_PROMPT_PREFIX + key: value for key, value in build_mask_prompt(model.config).state_dict().items()}
    problems = key_differences(expected, state)
    if problems:
        raise ValueError(f"{path}: mask-prompt branch does not fit the model: " + "; ".join(problems))
    branch = attach_mask_prompt(model)
    with torch.no_grad():
        for key, target in branch.state_dict().items():
            target.copy_(state[MASK_PROMPT_PREFIX + key])
    return branch
