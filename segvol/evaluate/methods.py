"""The one interface every evaluated method implements, and SegVol behind it.

A method is a class with `name` (its column in the tables), `prompt` (the prompt kind it is
given) and `predict(volume, spacing, prompt) -> mask`:
- volume: (D, H, W) float32 in [0, 1], canonical orientation (the dataset store's `image`);
- spacing: (3,) mm in (D, H, W) order;
- prompt: a `GroundTruthPrompt` in the volume's voxel indices; its `truth` field carries the
  category's ground truth for methods that simulate corrective clicks or per-slice prompts;
- mask: (D, H, W) bool.
`predict_many` segments several categories of one volume; SegVol overrides it so that the
image embedding is shared between prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segvol.evaluate.prompts import GroundTruthPrompt


class Method:
    name: str = "method"
    prompt: str = "box+text"

    def predict(self, volume: np.ndarray, spacing: Sequence[float], prompt: GroundTruthPrompt) -> np.ndarray:
        raise NotImplementedError

    def predict_many(
        self, volume: np.ndarray, spacing: Sequence[float], prompts: Sequence[GroundTruthPrompt]
    ) -> list[np.ndarray]:
        return [self.predict(volume, spacing, prompt) for prompt in prompts]


class SegVolMethod(Method):
    """SegVol through `segvol.infer.segment` (mode "zoom" = zoom-out-zoom-in, "resize", "window")."""

    def __init__(self, model, prompt: str = "box+text", mode: str = "zoom", name: str = "SegVol", overlap: float = 0.5):
        self.model = model
        self.prompt = prompt
        self.mode = mode
        self.name = name
        self.overlap = overlap

    def predict(self, volume, spacing, prompt):
        return self.predict_many(volume, spacing, [prompt])[0]

    def predict_many(self, volume, spacing, prompts):
        import torch

        from segvol.infer import Prompt, segment

        requests = [
            Prompt(
                text=p.text,
                box=None if p.box is None else list(p.box),
                points=None if p.points is None else np.asarray(p.points).tolist(),
                point_labels=None if p.point_labels is None else np.asarray(p.point_labels).tolist(),
            )
            for p in prompts
        ]
        with torch.inference_mode():
            logits = segment(self.model, volume, requests, mode=self.mode, overlap=self.overlap)
        logits = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
        if logits.shape != (len(prompts), *volume.shape):
            raise ValueError(
                f"segment returned logits of shape {logits.shape}, expected {(len(prompts), *volume.shape)}"
            )
        return [channel > 0 for channel in logits]


def load_segvol(checkpoint: str, model_settings: dict | None = None, device=None):
    """A SegVol model from our safetensors checkpoint (or an official one), in eval mode, on `device`
    (a `torch.device` or name; None: where the checkpoint loader puts it, the CPU)."""
    from pathlib import Path

    from segvol.model import checkpoint as checkpoints

    if "://" not in str(checkpoint) and not Path(checkpoint).exists():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    model = checkpoints.load(checkpoint)
    if device is not None:
        model = model.to(device)
    return model.eval()


EQUIVARIANT = "SegVol + equivariant embedding"  # the column of SegVol with the adapter of `segvol finetune-equivariant`


def load_segvol_with_adapter(checkpoint: str, adapter: str, device=None):
    """A second copy of the evaluated SegVol (`load_segvol`) with the equivariant-embedding adapter attached."""
    from segvol.model.embedding_adapter import load_adapter

    model = load_segvol(checkpoint, device=device)
    device = next(model.parameters()).device
    load_adapter(model, adapter)
    return model.to(device).eval()  # the adapter's new parameters follow the model
