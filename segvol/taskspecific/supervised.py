"""One small supervised loop for SwinUNETR (MONAI) and 3D UX-Net, and their sliding-window segmenter.

Training: random patches of `patch_size` (half of them centred on a foreground voxel, like nnU-Net's
oversampling; volumes smaller than a patch are zero-padded), Dice + cross-entropy on the label map
of `segvol.taskspecific.labels` (MONAI `DiceCELoss`, softmax over background + categories), AdamW.
Inference: MONAI `sliding_window_inference` with a Gaussian blend, argmax, categories back from the
label map. Weights are saved as safetensors (never unpickled).

Shapes: volume (D, H, W) in [0, 1]; network input (B, 1, *patch_size); logits (B, C + 1, *patch_size).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from segvol.taskspecific.labels import LabelMap

log = logging.getLogger(__name__)

ARCHITECTURES = ("swinunetr", "uxnet")


def build_network(architecture: str, out_channels: int, settings: dict) -> torch.nn.Module:
    """SwinUNETR (`feature_size`) or 3D UX-Net (`widths`, `depths`, `hidden_size`), one input channel."""
    if architecture == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(
            in_channels=1, out_channels=out_channels, feature_size=int(settings["feature_size"]), spatial_dims=3
        )
    if architecture == "uxnet":
        from segvol.taskspecific.uxnet import UXNet

        return UXNet(
            1,
            out_channels,
            depths=settings["depths"],
            widths=settings["widths"],
            hidden_size=int(settings["hidden_size"]),
        )
    raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")


def patch_size(architecture: str, settings: dict) -> list[int]:
    """The architecture's own `patch_size` if set, else `supervised.patch_size`; ValueError if SwinUNETR
    cannot take it (MONAI halves it five times and instance-normalises the last level, which needs > 1
    voxel)."""
    size = [
        int(s) for s in (settings.get(architecture) or {}).get("patch_size") or settings["supervised"]["patch_size"]
    ]
    if architecture == "swinunetr" and any(s < 64 or s % 32 for s in size):
        raise ValueError(
            f"taskspecific: SwinUNETR needs a patch_size of multiples of 32, at least 64 per side "
            f"(got {size}); set taskspecific.swinunetr.patch_size"
        )
    return size


def random_patch(
    image: np.ndarray,
    label_map: np.ndarray,
    size: Sequence[int],
    rng: np.random.Generator,
    foreground_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A (size) crop of image and label map, zero-padded where the volume is smaller."""
    pad = [(0, max(0, s - n)) for s, n in zip(size, image.shape)]
    image, label_map = np.pad(image, pad), np.pad(label_map, pad)
    foreground = np.argwhere(label_map > 0) if rng.random() < foreground_probability else np.empty((0, 3))
    if len(foreground):
        centre = foreground[rng.integers(len(foreground))]
        start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, image.shape)]
    else:
        start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, image.shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, size))
    return image[window], label_map[window]


def train_supervised(
    network: torch.nn.Module,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: dict,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train `network` in place on (image (D, H, W), label map (D, H, W)) pairs; returns the loss per step.

    settings: steps, batch_size, lr, weight_decay, patch_size.
    """
    from monai.losses import DiceCELoss

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    network.to(device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"])
    )
    size = [int(s) for s in settings["patch_size"]]
    losses = []
    for step in range(int(settings["steps"])):
        batch = [
            random_patch(*samples[rng.integers(len(samples))], size, rng) for _ in range(int(settings["batch_size"]))
        ]
        images = torch.from_numpy(np.stack([b[0] for b in batch])[:, None].astype(np.float32)).to(device)
        targets = torch.from_numpy(np.stack([b[1] for b in batch])[:, None].astype(np.int64)).to(device)
        loss = loss_fn(network(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            log.info("step %d: loss %.4f", step, losses[-1])
    return losses


class SlidingWindowSegmenter:
    """A trained SwinUNETR / UX-Net with MONAI's sliding window: volume -> category masks."""

    def __init__(
        self,
        network: torch.nn.Module,
        label_map: LabelMap,
        patch_size: Sequence[int],
        overlap: float = 0.5,
        device: str | torch.device = "cpu",
    ):
        self.network = network.to(device).eval()
        self.label_map = label_map
        self.patch_size = [int(s) for s in patch_size]
        self.overlap = overlap
        self.device = device

    def segment(self, volume: np.ndarray, spacing=None) -> dict[str, np.ndarray]:
        """volume (D, H, W) in [0, 1] -> category -> (D, H, W) bool (spacing unused: trained on the store's grid)."""
        from monai.inferers import sliding_window_inference

        shape = volume.shape
        pad = [(0, max(0, s - n)) for s, n in zip(self.patch_size, shape)]
        image = torch.from_numpy(np.pad(np.asarray(volume, np.float32), pad))[None, None].to(self.device)
        with torch.inference_mode():
            logits = sliding_window_inference(
                image, self.patch_size, 1, self.network, overlap=self.overlap, mode="gaussian"
            )
        label_map = logits.argmax(1)[0].cpu().numpy()[tuple(slice(0, n) for n in shape)]
        return self.label_map.masks(label_map)
