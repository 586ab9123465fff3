"""Train only the equivariant patch embedding + adapter on top of a frozen fine-tuned SegVol.

Starts from the fine-tuned model (`--checkpoint`), attaches `segvol.model.embedding_adapter`
(zero-initialised: step 0 is the original model exactly), freezes every original parameter and
trains the adapter with the fine-tuning objective (`segvol.finetune.objective`, shared-embedding
schedule: six or `prompt_combinations` prompt combinations + pseudo passes). Only the adapter is
written, as its own safetensors file; evaluation loads the original model and attaches it.

Rotation augmentation (`rotation_probability` > 0): a sample is rotated, with that probability, by
angles drawn uniformly in +-`rotation_max_degrees` about z (the H-W plane), x (D-H) and y (D-W),
in voxel index space like the rotation evaluation; image linear, labels and pseudo targets nearest
(labels linear then re-thresholded by the prompt code), prompts re-drawn from the rotated masks.
A pseudo box pass then targets the rotated covered segments (not re-derived from the rotated box).

Single process (no DDP): the adapter is small; resumes from `<out>.ckpt/` like the other stages.

example:
  segvol finetune-equivariant --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/abdomen_a.zarr --pseudo data/pseudo/abdomen_a.zarr \\
      --out models/finetune/equivariant/adapter.safetensors --threads 2 \\
      --params '{"steps": 60, "rotation_probability": 0.5}'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

# keys of the `finetune_equivariant:` block that the sample pipeline reads like `finetune:` does
SAMPLE_KEYS = ("pseudo_weight", "pseudo_passes", "resize_probability")


def add_arguments(parser) -> None:
    from segvol.cli_options import add_common_arguments

    parser.add_argument(
        "--checkpoint", required=True, metavar="MODEL", help="fine-tuned SegVol (.safetensors) to start from"
    )
    parser.add_argument("--zarr", nargs="+", required=True, metavar="STORE", help="labelled Zarr stores")
    parser.add_argument("--pseudo", nargs="*", default=[], metavar="STORE", help="pseudo-label stores, matched by name")
    parser.add_argument("--out", required=True, metavar="ADAPTER", help="output adapter .safetensors")
    add_common_arguments(
        parser,
        params="finetune_equivariant",
        device=True,
        threads=True,
        seed="seed of batches, views, rotations and prompts",
        quiet=True,
    )


def run(args) -> int:
    from segvol.settings import stage_settings

    settings = stage_settings("finetune_equivariant", args.params)
    train_adapter(
        args.checkpoint,
        args.zarr,
        args.pseudo,
        args.out,
        settings,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    return 0


def rotate_sample(sample: dict, degrees: Sequence[float], rng: np.random.Generator, box_jitter: int = 0) -> dict:
    """A `FinetuneSamples` item rotated by (z, x, y) degrees, prompts re-drawn from the rotated masks."""
    from scipy import ndimage

    from segvol.finetune.prompts import sample_points, tight_box

    def turn(array: np.ndarray, order: int) -> np.ndarray:  # (N, D, H, W)
        for angle, axes in zip(degrees, ((2, 3), (1, 2), (1, 3))):
            if angle:
                array = ndimage.rotate(array, angle, axes=axes, reshape=False, order=order, mode="constant", cval=0)
        return array

    out = dict(sample)
    out["image"] = torch.from_numpy(np.clip(turn(sample["image"].numpy(), 1), 0, 1).astype(np.float32))
    labels = torch.from_numpy(turn(sample["labels"].float().numpy(), 1))
    out["labels"] = labels.to(torch.float16)
    for c in range(labels.shape[0]):
        present = bool(sample["present"][c]) and bool((labels[c] > 0.5).any())
        out["present"][c] = present
        out["points"][c], out["point_labels"][c] = (
            sample_points(labels[c], rng, int(rng.integers(0, 11)), int(rng.integers(0, 11)))
            if present
            else (torch.full_like(sample["points"][c], -1.0), torch.full_like(sample["point_labels"][c], -1))
        )
        out["boxes"][c] = tight_box(labels[c], jitter=box_jitter, rng=rng) if present else -1.0
    if "pseudo_targets" in sample and sample["pseudo_targets"].shape[0]:
        targets = torch.from_numpy(turn(sample["pseudo_targets"].numpy(), 0))
        out["pseudo_targets"] = targets
        for p in range(targets.shape[0]):
            valid = bool(sample["pseudo_valid"][p]) and bool(targets[p].any())
            out["pseudo_valid"][p] = valid
            if not valid:
                continue
            if p % 2 == 0:
                out["pseudo_points"][p], out["pseudo_point_labels"][p] = sample_points(
                    targets[p].float(), rng, int(rng.integers(4, 11)), int(rng.integers(0, 11))
                )
            else:
                out["pseudo_boxes"][p] = tight_box(targets[p].float())
    return out


class RotatedSamples(Dataset):
    """`FinetuneSamples` with rotation augmentation; the draw depends on (seed, micro-batch, slot) only."""

    def __init__(self, samples, probability: float, max_degrees: dict, seed: int) -> None:
        self.samples = samples
        self.probability = float(probability)
        self.max_degrees = [float(max_degrees[axis]) for axis in ("z", "x", "y")]
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        sample = self.samples[key]
        rng = np.random.default_rng([self.seed, 7, key.micro_batch, key.slot])
        if rng.random() >= self.probability:
            return sample
        degrees = [float(rng.uniform(-m, m)) for m in self.max_degrees]
        return rotate_sample(sample, degrees, rng, self.samples.box_jitter)


def train_adapter(
    checkpoint: str,
    stores: Sequence[str],
    pseudo_stores: Sequence[str],
    out: str,
    settings: dict,
    seed: int = 2023,
    threads: int | None = None,
    device: str | None = None,
    stop_after: int | None = None,
    model: torch.nn.Module | None = None,
) -> Path:
    """Train the adapter of `checkpoint` (or of `model`, tests) and write it to `out`."""
    from segvol.finetune.data import DatasetBatches, FinetuneSamples
    from segvol.finetune.objective import FinetuneObjective
    from segvol.finetune.train import move_batch, prompt_combinations
    from segvol.model import checkpoint as checkpoints
    from segvol.model.embedding_adapter import attach, save_adapter
    from segvol.settings import stage_settings
    from segvol.training import runtime as rt
    from segvol.training.loop import Optimisation, StepResult, train

    runtime = rt.setup_runtime(threads, device)
    if runtime.distributed:
        raise RuntimeError("finetune-equivariant runs in one process; start it without torchrun")
    if model is None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: fine-tuned model not found")
        model = checkpoints.load(checkpoint)
    torch.manual_seed(seed)
    model = model.to(runtime.device)
    adapter = attach(model, settings)
    objective = FinetuneObjective(model, settings["pseudo_weight"])
    steps = int(settings["steps"])
    optimisation = Optimisation(
        adapter.parameters(),
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        steps=steps,
        warmup_steps=int(round(settings["warmup_fraction"] * steps)),
    )
    tag = rt.fingerprint(
        "finetune_equivariant", settings, seed, str(checkpoint), list(map(str, stores)), list(map(str, pseudo_stores))
    )
    sample_settings = stage_settings("finetune", {key: settings[key] for key in SAMPLE_KEYS})
    samples = FinetuneSamples(
        stores, pseudo_stores, spatial_size=model.config.spatial_size, seed=seed, settings=sample_settings
    )
    dataset = RotatedSamples(samples, settings["rotation_probability"], settings["rotation_max_degrees"], seed)

    def batches(start: int) -> DataLoader:
        sampler = DatasetBatches(
            samples, batch_size=settings["batch_size"], rank=0, world_size=1, start=start, stop=steps, seed=seed
        )
        model.train()
        return DataLoader(dataset, batch_sampler=sampler, num_workers=0)

    def step(index: int, stream, optimizer) -> StepResult:
        combinations = prompt_combinations(seed, index, int(settings["prompt_combinations"]))
        batch = move_batch(next(stream), runtime.device)
        categories = samples.categories[int(batch["store"][0])]
        optimizer.zero_grad(set_to_none=True)
        with rt.autocast(runtime.device):
            loss, parts = objective(
                batch,
                categories,
                float(batch["present"].sum()),
                float(batch["image"].shape[0]),
                combinations=combinations,
            )
        loss.backward()
        optimizer.step()
        return StepResult(
            {"loss": float(loss.detach()), **parts},
            batch["image"].shape[0],
            postfix={"loss": f"{float(loss.detach()):.3f}"},
        )

    return train(
        "finetune-equivariant",
        out,
        runtime,
        state=adapter,
        optimisation=optimisation,
        batches=batches,
        step=step,
        save_output=lambda: save_adapter(adapter, out),
        metrics=["loss", "supervised", "pseudo"],
        tag=tag,
        checkpoint_every=int(settings["checkpoint_every"]),
        stop_after=stop_after,
    )
