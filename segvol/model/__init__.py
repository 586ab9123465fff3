"""segvol.model: the SegVol network (3D ViT, prompt encoder, mask decoder, text encoder).

    from segvol.model import build_model, model_config
    model = build_model(model_config("tiny"))          # or "base" (the paper, 181M parameters)
    logits = model(image, text=["liver"], boxes=boxes)  # (B, 1, D, H, W)

Checkpoints: `segvol.model.checkpoint` (ours and the official formats).
"""

from segvol.model.build import build_image_encoder, build_model
from segvol.model.config import PRESETS, ModelConfig, model_config, model_config_from_settings
from segvol.model.segvol import SegVol

__all__ = [
    "PRESETS",
    "ModelConfig",
    "SegVol",
    "build_image_encoder",
    "build_model",
    "model_config",
    "model_config_from_settings",
]
