"""SAM-Med3D on a volume, prepared as its released inference does.

- Axes: our (D, H, W) volumes are RAS voxel order reversed; SAM-Med3D reads NIfTI files with
  torchio in (x, y, z) voxel order, so the volume is transposed back to (x, y, z) first.
- Resampled to 1.5 mm isotropic (trilinear; the ground truth with nearest neighbours).
- A 128^3 crop centred on the ground truth's bounding box, zero-padded where it leaves the volume
  (torchio `CropOrPad(mask_name=...)`), then z-normalised with the mean and std of its voxels > 0.
  Our stores hold normalised intensities in [0, 1], not HU, so "> 0" keeps almost every voxel.
- Clicks are in crop voxel indices (x, y, z), the order SAM-Med3D samples them in; the first
  prediction gets an all-zero mask prompt and each later one the previous 32^3 logits
  (its validation loop). One mask per prediction (no multimask output).
- The crop's prediction is pasted back into the resampled volume and resized (nearest) to the
  original grid. Like the original (no sliding window), an object larger than the 192 mm cube
  is segmented only inside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segvol.evaluate.baselines.clicks import CLICKS, central_point, click_correction
from segvol.evaluate.baselines.sam import PromptableSam, load
from segvol.evaluate.methods import Method
from segvol.evaluate.prompts import GroundTruthPrompt

TARGET_SPACING_MM = 1.5


def load_sam_med3d(source: str | os.PathLike) -> PromptableSam:
    """SAM-Med3D ViT-B with its released weights (`sam_med3d_turbo.pth` or a safetensors copy)."""
    return load("sam-med3d", source)


@dataclass(frozen=True)
class Crop:
    """Where the model's cube came from: the (x, y, z) shapes before and after resampling and the
    cube's first voxel in the resampled volume (negative where it was padded)."""

    original_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    start: tuple[int, ...]
    size: int

    def overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices in the resampled volume, slices in the cube) of the voxels they share."""
        volume, cube = [], []
        for start, extent in zip(self.start, self.resampled_shape):
            lo, hi = max(start, 0), min(start + self.size, extent)
            volume.append(slice(lo, hi))
            cube.append(slice(lo - start, hi - start))
        return tuple(volume), tuple(cube)


def _resize(array: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(tensor, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def prepare(volume: np.ndarray, spacing: Sequence[float], truth: np.ndarray, size: int = 128):
    """(D, H, W) volume, spacing (mm) and ground truth -> (cube (size^3) float32, cube truth bool, Crop)."""
    image = np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)
    truth = np.asarray(truth, dtype=bool).transpose(2, 1, 0)
    spacing_xyz = np.asarray(spacing, dtype=float)[::-1]
    resampled_shape = tuple(max(1, int(round(n * s / TARGET_SPACING_MM))) for n, s in zip(image.shape, spacing_xyz))
    image = _resize(image, resampled_shape, "trilinear")
    soft_truth = _resize(truth, resampled_shape, "trilinear")
    resampled_truth = soft_truth >= 0.5
    if not resampled_truth.any():  # an object thinner than 1.5 mm keeps its touched voxels
        resampled_truth = soft_truth > 0
    found = np.argwhere(resampled_truth)
    centre = (found.min(axis=0) + found.max(axis=0) + 1) // 2
    crop = Crop(tuple(truth.shape), resampled_shape, tuple(int(c) - size // 2 for c in centre), size)
    inside, cube_part = crop.overlap()
    cube = np.zeros((size,) * 3, dtype=np.float32)
    cube[cube_part] = image[inside]
    cube_truth = np.zeros((size,) * 3, dtype=bool)
    cube_truth[cube_part] = resampled_truth[inside]
    foreground = cube > 0
    if foreground.any():
        values = cube[foreground]
        cube = (cube - values.mean()) / max(float(values.std()), 1e-8)
    return cube, cube_truth, crop


def paste(cube_mask: np.ndarray, crop: Crop) -> np.ndarray:
    """The cube's (x, y, z) mask -> a (D, H, W) mask on the original grid."""
    resampled = np.zeros(crop.resampled_shape, dtype=bool)
    inside, cube_part = crop.overlap()
    resampled[inside] = cube_mask[cube_part]
    original = _resize(resampled, crop.original_shape, "nearest") > 0.5
    return original.transpose(2, 1, 0)


class SamMed3DMethod(Method):
    name = "SAM-Med3D"
    prompt = "point"

    def __init__(self, model: PromptableSam, clicks: int = CLICKS) -> None:
        self.model = model.eval()
        self.clicks = clicks

    def predict(self, volume: np.ndarray, spacing: Sequence[float], prompt: GroundTruthPrompt) -> np.ndarray:
        if prompt.truth is None:
            raise ValueError(f"{self.name}: simulated clicks need the ground truth (prompt.truth)")
        size = self.model.img_size
        cube, cube_truth, crop = prepare(volume, spacing, prompt.truth, size)
        device = next(self.model.parameters()).device  # inputs go where the model is; masks come back to the CPU
        with torch.inference_mode():
            embedding = self.model.encode(torch.from_numpy(cube)[None, None].to(device))
        state = {"low": torch.zeros(1, 1, *(size // 4,) * 3, device=device)}

        def predict(points, labels, previous):
            with torch.inference_mode():
                low, _ = self.model.decode(
                    embedding,
                    points=torch.as_tensor(points, dtype=torch.float32, device=device)[None],
                    labels=torch.as_tensor(labels, dtype=torch.long, device=device)[None],
                    mask=state["low"],
                )
                state["low"] = low
                logits = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)
            return logits[0, 0].cpu().numpy()

        cube_mask, _ = click_correction(predict, cube_truth, central_point(cube_truth), self.clicks)
        return paste(cube_mask, crop)

    def step_predictor(self, volume: np.ndarray, spacing: Sequence[float], truth: np.ndarray):
        """This model under the interactive protocol (`segvol.evaluate.interactive`): clicks given in
        the volume's (D, H, W) voxels are mapped into the cube; it takes no box, and its own
        previous low-resolution logits are its mask prompt, as in its validation loop."""
        size = self.model.img_size
        cube, _, crop = prepare(volume, spacing, truth, size)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            embedding = self.model.encode(torch.from_numpy(cube)[None, None].to(device))
        state = {"low": torch.zeros(1, 1, *(size // 4,) * 3, device=device)}
        scale = np.asarray(crop.resampled_shape, dtype=float) / np.asarray(crop.original_shape, dtype=float)

        def predict(box, points, labels, previous):
            xyz = np.asarray(points, dtype=float).reshape(-1, 3)[:, ::-1]
            in_cube = (xyz + 0.5) * scale - 0.5 - np.asarray(crop.start, dtype=float)
            with torch.inference_mode():
                low, _ = self.model.decode(
                    embedding,
                    points=torch.as_tensor(np.round(in_cube), dtype=torch.float32, device=device)[None],
                    labels=torch.as_tensor(labels, dtype=torch.long, device=device)[None],
                    mask=state["low"],
                )
                state["low"] = low
                logits = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)
            return paste(logits[0, 0].cpu().numpy() > 0, crop)

        predict.takes_box = False
        return predict
