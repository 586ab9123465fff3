"""Adapter that adds the equivariant patch embedding's tokens to the frozen ViT's patch tokens.

    tokens = PatchEmbedding(x) + proj(LayerNorm(EquivariantPatchEmbedding(x)))     (B, n_tokens, hidden)

`proj` starts at zero (weight and bias), so an untrained adapter leaves the model exactly as it
was; training moves only the adapter (the steerable convolution, the norm and `proj`). The adapter
hangs on `model.image_encoder.extra_embedding`, so the released parameter names are untouched; its
weights live in their own safetensors file (`adapter.*` keys, settings in the metadata).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from segvol.model.equivariant_embedding import EquivariantPatchEmbedding

FORMAT = "segvol-equivariant-adapter/1"
ARCHITECTURE_KEYS = ("irreps", "kernel_size", "radial_basis")


class EquivariantAdapter(nn.Module):
    """(B, 1, D, H, W) -> (B, n_tokens, hidden) additive token correction, zero when untrained."""

    def __init__(
        self,
        patch_size,
        hidden_size: int,
        irreps: str = "8x0e + 4x1o + 2x2e",
        kernel_size: int = 5,
        radial_basis: int = 3,
    ) -> None:
        super().__init__()
        self.settings = {"irreps": str(irreps), "kernel_size": int(kernel_size), "radial_basis": int(radial_basis)}
        self.embedding = EquivariantPatchEmbedding(patch_size, irreps, kernel_size, radial_basis)
        self.norm = nn.LayerNorm(self.embedding.n_invariants)
        self.proj = nn.Linear(self.embedding.n_invariants, hidden_size)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, d*h*w, hidden)."""
        return self.proj(self.norm(self.embedding(image)))


def attach(model: nn.Module, settings: dict) -> EquivariantAdapter:
    """Add a fresh adapter (architecture keys of `settings`) to a SegVol model and freeze the rest."""
    config = model.config
    adapter = EquivariantAdapter(
        config.patch_size, config.hidden_size, **{key: settings[key] for key in ARCHITECTURE_KEYS if key in settings}
    )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.image_encoder.extra_embedding = adapter.to(model.device)
    return adapter


def save_adapter(adapter: EquivariantAdapter, path: str | os.PathLike) -> Path:
    """Write the adapter's tensors (`adapter.*`) and settings to a safetensors file (atomically)."""
    from safetensors.torch import save_file

    from segvol.io.atomic import atomic_path

    state = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    metadata = {"format": FORMAT, "settings": json.dumps(adapter.settings)}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return Path(path)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> EquivariantAdapter:
    """Attach the adapter stored at `path` to `model` in eval mode: the original parameters frozen, the
    adapter's trainable as during its training (so Table 6 counts them as the trainable ones)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: equivariant adapter not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an equivariant adapter (format {metadata.get('format')!r}, expected {FORMAT!r})")
    adapter = attach(model, json.loads(metadata["settings"]))
    prefix = "adapter."
    weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    expected = set(adapter.state_dict())
    if set(weights) != expected or len(weights) != len(state):
        raise ValueError(
            f"{path}: adapter keys do not match (missing {sorted(expected - set(weights))[:5]}, "
            f"unexpected {sorted(set(state) - {prefix + k for k in expected})[:5]})"
        )
    try:
        adapter.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"{path}: adapter does not fit this model ({str(error).splitlines()[-1].strip()})") from None
    return adapter.eval()
