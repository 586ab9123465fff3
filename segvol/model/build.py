"""Builders: a ModelConfig in, freshly initialised network parts out.

They live apart from `config.py` so that the configuration stays a leaf module (no torch) and the
components never import the code that assembles them.
"""

from __future__ import annotations

from segvol.model.config import ModelConfig
from segvol.model.image_encoder import ImageEncoderViT3D
from segvol.model.image_skip import ImageSkip
from segvol.model.mask_decoder import MaskDecoder3D
from segvol.model.prompt_encoder import PromptEncoder3D
from segvol.model.segvol import SegVol
from segvol.model.text_encoder import build_text_encoder
from segvol.model.transformer import TwoWayTransformer


def build_model(config: ModelConfig) -> SegVol:
    """A freshly initialised SegVol for `config` (text backbone weights: see text_encoder.py)."""
    image_encoder, prompt_encoder, mask_decoder = build_vision_parts(config)
    text_encoder = build_text_encoder(config.text_encoder, out_dim=config.hidden_size, template=config.text_template)
    image_skip = None
    if config.image_skip_channels:
        image_skip = ImageSkip(config.image_skip_channels, config.spatial_size, config.patch_size, config.in_channels)
    return SegVol(config, image_encoder, prompt_encoder, mask_decoder, text_encoder, image_skip=image_skip)


def build_image_encoder(config: ModelConfig) -> ImageEncoderViT3D:
    """The 3D ViT image encoder of `config` alone (what SimMIM pretraining trains)."""
    return ImageEncoderViT3D(
        spatial_size=config.spatial_size,
        patch_size=config.patch_size,
        in_channels=config.in_channels,
        hidden_size=config.hidden_size,
        mlp_dim=config.mlp_dim,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
    )


def build_vision_parts(config: ModelConfig) -> tuple[ImageEncoderViT3D, PromptEncoder3D, MaskDecoder3D]:
    """(image_encoder, prompt_encoder, mask_decoder) for `config`, without the text encoder."""
    image_encoder = build_image_encoder(config)
    prompt_encoder = PromptEncoder3D(
        embed_dim=config.hidden_size,
        image_embedding_size=config.grid_size,
        input_image_size=config.spatial_size,
        mask_in_chans=config.mask_in_chans,
        coordinate_convention=config.coordinate_convention,
        patch_size=config.patch_size if config.dense_box_prompt else None,
    )
    mask_decoder = MaskDecoder3D(
        transformer_dim=config.hidden_size,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.hidden_size,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
            attention_downsample_rate=config.attention_downsample_rate,
        ),
        image_embedding_size=config.grid_size,
        num_mask_tokens=config.num_mask_tokens,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
        skip_channels=config.image_skip_channels,
    )
    return image_encoder, prompt_encoder, mask_decoder
