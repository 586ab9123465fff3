"""Baselines of Table 2 behind the `Method` interface: SAM, MedSAM, SAM-Med2D, SAM-Med3D.

How the paper runs them (and how we do):
- SAM (ViT-B): slice-wise on every slice where the category is present; "point" = one positive
  click per slice followed by corrective clicks up to 5 (each at the centre of the largest error
  region, positive in a miss, negative in a false positive, previous low-res logits fed back);
  "box" = the slice's tight box.
- MedSAM (SAM ViT-B fine-tuned on medical images): slice-wise, box prompt.
- SAM-Med2D: slice-wise, point prompt with 5 clicks.  SAM-Med3D: volume-wise, point prompt with
  5 clicks.
Each loads its real public checkpoint from `evaluate.baseline_checkpoints[<method>]`; a method
without one produces no rows and the reason "not run: no checkpoint".

SAM and MedSAM use the SAM architecture of `transformers` (`SamModel`): the checkpoint may be a
Hugging Face model folder (e.g. facebook/sam-vit-base, a MedSAM conversion) or a safetensors
file with those keys; an original `sam_vit_b_01ec64.pth` / `medsam_vit_b.pth` is read with
`weights_only=True` and its keys renamed. SAM-Med2D (adapter layers, 256-px input) and
SAM-Med3D (3-D ViT) architectures are not implemented yet: with a checkpoint they are reported
"not run: architecture not implemented".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from segvol.evaluate.methods import Method
from segvol.evaluate.prompts import GroundTruthPrompt, tight_box

# (method, prompt kind) pairs, in column order; a method with several prompts gets one column each.
BASELINE_PROMPTS = {
    "SAM": ("point", "box"),
    "MedSAM": ("box",),
    "SAM-Med2D": ("point",),
    "SAM-Med3D": ("point",),
}
UNIMPLEMENTED = {"SAM-Med2D", "SAM-Med3D"}
CLICKS = 5


def column_name(method: str, prompt: str) -> str:
    """Table column of a method run: "SAM (point)" when the method has several prompts."""
    return f"{method} ({prompt})" if len(BASELINE_PROMPTS.get(method, ())) > 1 else method


# --------------------------------------------------------------------------------------------
# Corrective clicks, for any number of dimensions.

# predict(points (N, ndim) int, labels (N,) in {0, 1}, previous logits or None) -> logits (truth.shape)
ClickPredictor = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The corrective click: the voxel deepest inside the largest error region.

    Returns (coordinate, label): label 1 where the prediction missed the truth, 0 where it
    predicted background as foreground; None when the prediction is perfect.
    """
    missed = truth & ~prediction
    extra = prediction & ~truth
    best = None
    for error, label in ((missed, 1), (extra, 0)):
        regions, count = ndimage.label(error)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(error, regions, index=np.arange(1, count + 1))
        largest = regions == (int(np.argmax(sizes)) + 1)
        size = int(sizes.max())
        if best is None or size > best[0]:
            # Distance to the region's border, so that the click lies well inside the error.
            depth = ndimage.distance_transform_edt(np.pad(largest, 1))[tuple(slice(1, -1) for _ in largest.shape)]
            coordinate = np.array(np.unravel_index(int(np.argmax(depth)), largest.shape))
            best = (size, coordinate, label)
    return None if best is None else (best[1], best[2])


def click_correction(
    predict: ClickPredictor, truth: np.ndarray, first_click: np.ndarray, clicks: int = CLICKS
) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """Simulate `clicks` interactive clicks: one positive, then corrections. Returns (mask, clicks)."""
    truth = np.asarray(truth, dtype=bool)
    points = [np.asarray(first_click, dtype=np.int64)]
    labels = [1]
    logits = predict(np.stack(points), np.array(labels), None)
    while len(points) < clicks:
        click = next_click(logits > 0, truth)
        if click is None:
            break
        points.append(click[0])
        labels.append(click[1])
        logits = predict(np.stack(points), np.array(labels), logits)
    return logits > 0, list(zip(points, labels))


def central_point(mask: np.ndarray) -> np.ndarray:
    """The first click: the mask voxel farthest from its border (a user clicks the middle)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[tuple(slice(1, -1) for _ in mask.shape)]
    return np.array(np.unravel_index(int(np.argmax(depth)), mask.shape))


# --------------------------------------------------------------------------------------------
# 2-D promptable segmenters and the slice-wise method.


class SliceSegmenter:
    """A 2-D promptable model: `set_image(slice)` then `predict(points, labels, box, previous)`.

    slice: (H, W) float in [0, 1]; points (N, 2) as (h, w); box (h0, w0, h1, w1) inclusive;
    previous: the low-resolution logits it returned last time (or None).
    Returns (logits (H, W), low-resolution logits to feed back).
    """

    def set_image(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def predict(self, points, labels, box, previous):
        raise NotImplementedError


class SliceWiseMethod(Method):
    """A 2-D model applied on every slice where the category is present, prompted per slice."""

    def __init__(self, name: str, segmenter: SliceSegmenter, prompt: str, clicks: int = CLICKS):
        if prompt not in ("point", "box"):
            raise ValueError(f"{name}: a slice-wise baseline takes a 'point' or 'box' prompt, not {prompt!r}")
        self.name, self.segmenter, self.prompt, self.clicks = name, segmenter, prompt, clicks

    def predict(self, volume, spacing, prompt: GroundTruthPrompt):
        if prompt.truth is None:
            raise ValueError(f"{self.name}: slice-wise prompts need the ground truth (prompt.truth)")
        mask = np.zeros(volume.shape, dtype=bool)
        for index in np.flatnonzero(prompt.truth.any(axis=(1, 2))):
            truth = prompt.truth[index]
            self.segmenter.set_image(volume[index])
            if self.prompt == "box":
                _, h0, w0, _, h1, w1 = tight_box(truth[None])
                logits, _ = self.segmenter.predict(None, None, (h0, w0, h1, w1), None)
                mask[index] = logits > 0
            else:
                state = {"low": None}

                def predict(points, labels, previous):
                    logits, state["low"] = self.segmenter.predict(points, labels, None, state["low"])
                    return logits

                mask[index], _ = click_correction(predict, truth, central_point(truth), self.clicks)
        return mask


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
            self.embedding = self.model.get_image_embeddings(padded)
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
        with torch.inference_mode():
            output = self.model(image_embeddings=self.embedding, multimask_output=False, **kwargs)
        low = output.pred_masks[:, 0]  # (1, 1, h, w) low-resolution logits, fed back as input_masks
        upscaled = torch.nn.functional.interpolate(low, size=(self.size, self.size), mode="bilinear",
                                                   align_corners=False)
        upscaled = upscaled[..., : self.resized[0], : self.resized[1]]
        logits = torch.nn.functional.interpolate(upscaled, size=self.shape, mode="bilinear", align_corners=False)
        return logits[0, 0].numpy(), low


# --------------------------------------------------------------------------------------------
# Checkpoints.

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
        (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
         r"shared_image_embedding.positional_embedding"),
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
        (r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.0", r"mask_decoder.output_hypernetworks_mlps.\1.proj_in"),
        (r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.1", r"mask_decoder.output_hypernetworks_mlps.\1.layers.0"),
        (r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.2", r"mask_decoder.output_hypernetworks_mlps.\1.proj_out"),
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
    """A `transformers.SamModel` (ViT-B) from a HF folder, a safetensors file or an original .pth."""
    import torch
    from transformers import SamConfig, SamModel

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: baseline checkpoint not found")
    if path.is_dir():
        return SamModel.from_pretrained(str(path)).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a loadable weights-only checkpoint ({error})") from error
        state = state.get("model", state) if isinstance(state, dict) else state
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


def build_baselines(methods: Sequence[str], checkpoints: dict) -> tuple[list[Method], dict[str, str]]:
    """The runnable baseline runs of `methods` and, per table column, why it ran or did not."""
    runs: list[Method] = []
    reasons: dict[str, str] = {}
    for method in methods:
        if method == "SegVol":
            continue
        if method not in BASELINE_PROMPTS:
            raise ValueError(f"unknown method {method!r} in evaluate.methods; known: SegVol, {', '.join(BASELINE_PROMPTS)}")
        checkpoint = (checkpoints or {}).get(method)
        for prompt in BASELINE_PROMPTS[method]:
            column = column_name(method, prompt)
            if not checkpoint:
                reasons[column] = "not run: no checkpoint"
            elif method in UNIMPLEMENTED:
                reasons[column] = "not run: architecture not implemented"
            else:
                reasons[column] = f"ran: {checkpoint}"
        if checkpoint and method not in UNIMPLEMENTED:
            segmenter = TransformersSam(load_sam(checkpoint), style="medsam" if method == "MedSAM" else "sam")
            for prompt in BASELINE_PROMPTS[method]:
                runs.append(SliceWiseMethod(column_name(method, prompt), segmenter, prompt))
    return runs, reasons
