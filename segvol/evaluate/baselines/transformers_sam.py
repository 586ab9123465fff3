"""SAM and MedSAM on one slice through `transformers.SamModel`.

The checkpoint may be a Hugging Face model folder (e.g. facebook/sam-vit-base, a MedSAM
conversion) or a safetensors file with those keys; an original `sam_vit_b_01ec64.pth` /
`medsam_vit_b.pth` is read without unpickling code and its keys renamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segvol.evaluate.baselines.slicewise import SliceSegmenter


class TransformersSam(SliceSegmenter):
    """SAM / MedSAM on one slice with `transformers.SamModel`.

    style "sam": longest side resized to the model's input size, ImageNet mean/std, zero padding
    (segment-anything's preprocessing); style "medsam": stretched to a square, [0, 1] intensities
    (MedSAM's inference script).
    """

    MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

    def __init__(self, model, style: str = "sam"):
        import torch

        self.model = model.eval()
        self.device = next(model.parameters()).device  # inputs go where the model is; results come back to the CPU
        self.style = style
        self.size = int(model.config.vision_config.image_size)
        self.torch = torch
        self.embedding = None

    def _scale(self, shape):
        height, width = shape
        if self.style == "medsam":
            return self.size / height, self.size / width, (self.size, self.size)
        factor = self.size / max(height, width)
        return factor, factor, (round(height * factor), round(width * factor))

    def set_image(self, image):
        torch = self.torch
        self.shape = image.shape
        scale_h, scale_w, resized = self._scale(image.shape)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        tensor = torch.nn.functional.interpolate(tensor, size=resized, mode="bilinear", align_corners=False)
        tensor = tensor.expand(1, 3, *resized)
        if self.style == "sam":
            mean = torch.from_numpy(self.MEAN)[:, None, None]
            std = torch.from_numpy(self.STD)[:, None, None]
            tensor = (tensor * 255.0 - mean) / std
        padded = torch.zeros(1, 3, self.size, self.size)
        padded[:, :, : resized[0], : resized[1]] = tensor
        with torch.inference_mode():
            self.embedding = self.model.get_image_embeddings(padded.to(self.device))
        self.resized = resized

    def predict(self, points, labels, box, previous):
        torch = self.torch
        scale_h, scale_w, _ = self._scale(self.shape)
        kwargs = {}
        if points is not None:
            # SAM takes (x, y) = (w, h) pixel centres in the resized frame.
            xy = np.stack([(points[:, 1] + 0.5) * scale_w, (points[:, 0] + 0.5) * scale_h], axis=-1)
            kwargs["input_points"] = torch.tensor(xy, dtype=torch.float32)[None, None]
            kwargs["input_labels"] = torch.tensor(labels, dtype=torch.long)[None, None]
        if box is not None:
            h0, w0, h1, w1 = box
            corners = [w0 * scale_w, h0 * scale_h, (w1 + 1) * scale_w, (h1 + 1) * scale_h]
            kwargs["input_boxes"] = torch.tensor(corners, dtype=torch.float32)[None, None]
        if previous is not None:
            kwargs["input_masks"] = previous
        kwargs = {name: value.to(self.device) for name, value in kwargs.items()}
        with torch.inference_mode():
            output = self.model(image_embeddings=self.embedding, multimask_output=False, **kwargs)
        low = output.pred_masks[:, 0]  # (1, 1, h, w) low-resolution logits, fed back as input_masks
        upscaled = torch.nn.functional.interpolate(
            low, size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        upscaled = upscaled[..., : self.resized[0], : self.resized[1]]
        logits = torch.nn.functional.interpolate(upscaled, size=self.shape, mode="bilinear", align_corners=False)
        return logits[0, 0].cpu().numpy(), low


def _rename_original_sam(state: dict) -> dict:
    """segment-anything's state_dict keys -> `transformers.SamModel` keys (first matching rule wins)."""
    import re

    renamed = {}
    rules = [
        (r"^image_encoder\.blocks\.(\d+)\.norm1", r"vision_encoder.layers.\1.layer_norm1"),
        (r"^image_encoder\.blocks\.(\d+)\.norm2", r"vision_encoder.layers.\1.layer_norm2"),
        (r"^image_encoder\.blocks\.(\d+)\.mlp\.lin1", r"vision_encoder.layers.\1.mlp.lin1"),
        (r"^image_encoder\.blocks\.(\d+)\.mlp\.lin2", r"vision_encoder.layers.\1.mlp.lin2"),
        (r"^image_encoder\.blocks\.(\d+)\.attn", r"vision_encoder.layers.\1.attn"),
        (r"^image_encoder\.patch_embed\.proj", r"vision_encoder.patch_embed.projection"),
        (r"^image_encoder\.pos_embed", r"vision_encoder.pos_embed"),
        (r"^image_encoder\.neck\.0", r"vision_encoder.neck.conv1"),
        (r"^image_encoder\.neck\.1", r"vision_encoder.neck.layer_norm1"),
        (r"^image_encoder\.neck\.2", r"vision_encoder.neck.conv2"),
        (r"^image_encoder\.neck\.3", r"vision_encoder.neck.layer_norm2"),
        (
            r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
            r"shared_image_embedding.positional_embedding",
        ),
        (r"^prompt_encoder\.point_embeddings\.(\d+)", r"prompt_encoder.point_embed.\1"),
        (r"^prompt_encoder\.mask_downscaling\.0", r"prompt_encoder.mask_embed.conv1"),
        (r"^prompt_encoder\.mask_downscaling\.1", r"prompt_encoder.mask_embed.layer_norm1"),
        (r"^prompt_encoder\.mask_downscaling\.3", r"prompt_encoder.mask_embed.conv2"),
        (r"^prompt_encoder\.mask_downscaling\.4", r"prompt_encoder.mask_embed.layer_norm2"),
        (r"^prompt_encoder\.mask_downscaling\.6", r"prompt_encoder.mask_embed.conv3"),
        (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)", r"mask_decoder.transformer.layers.\1.layer_norm\2"),
        (r"^mask_decoder\.transformer\.norm_final_attn", r"mask_decoder.transformer.layer_norm_final_attn"),
        (r"^mask_decoder\.output_upscaling\.0", r"mask_decoder.upscale_conv1"),
        (r"^mask_decoder\.output_upscaling\.1", r"mask_decoder.upscale_layer_norm"),
        (r"^mask_decoder\.output_upscaling\.3", r"mask_decoder.upscale_conv2"),
        (
            r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.0",
            r"mask_decoder.output_hypernetworks_mlps.\1.proj_in",
        ),
        (
            r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.1",
            r"mask_decoder.output_hypernetworks_mlps.\1.layers.0",
        ),
        (
            r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.2",
            r"mask_decoder.output_hypernetworks_mlps.\1.proj_out",
        ),
        (r"^mask_decoder\.iou_prediction_head\.layers\.0", r"mask_decoder.iou_prediction_head.proj_in"),
        (r"^mask_decoder\.iou_prediction_head\.layers\.1", r"mask_decoder.iou_prediction_head.layers.0"),
        (r"^mask_decoder\.iou_prediction_head\.layers\.2", r"mask_decoder.iou_prediction_head.proj_out"),
        (r"^prompt_encoder\.", r"prompt_encoder."),
        (r"^mask_decoder\.", r"mask_decoder."),
    ]
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        new = key
        for pattern, replacement in rules:
            new, hits = re.subn(pattern, replacement, new)
            if hits:
                break
        renamed[new] = value
        if new == "shared_image_embedding.positional_embedding":
            # transformers keeps the prompt encoder's copy of the random Fourier matrix as its own key
            renamed["prompt_encoder.shared_embedding.positional_embedding"] = value
    return renamed


def load_sam(checkpoint: str | Path):
    """A `transformers.SamModel` (ViT-B) from a HF model folder, a safetensors file, an original .pth
    or an hf://owner/repo/file reference."""
    from transformers import SamConfig, SamModel

    from segvol.model.checkpoint import read_weights

    path = Path(checkpoint)
    if path.is_dir():
        return SamModel.from_pretrained(str(path)).eval()
    state = read_weights(checkpoint)  # a file, or an hf://owner/repo/file reference
    if any(key.startswith("image_encoder.") for key in state):
        state = _rename_original_sam(state)
    model = SamModel(SamConfig())  # ViT-B defaults
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a SAM ViT-B checkpoint ({len(missing)} missing keys, e.g. {missing[:3]};"
            f" {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    return model.eval()
