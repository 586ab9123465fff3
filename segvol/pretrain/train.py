"""SimMIM pretraining loop: random views of every given store -> masked reconstruction.

Sample `i` of the run (counted over all ranks, `i = step * global_batch + slot`) draws its case,
view and flips from a generator seeded by (seed, i), so the data stream is independent of the
number of DataLoader workers and of interruptions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segvol.pretrain.simmim import SimMIM
from segvol.training import runtime as rt
from segvol.training.loop import Optimisation, StepResult, train
from segvol.training.volumes import StoreReader, View, check_finite, crop_start, read_image

log = logging.getLogger(__name__)


class PretrainViews(Dataset):
    """Map-style dataset indexed by the global sample number; returns (1, *spatial_size) images."""

    def __init__(
        self,
        reader: StoreReader,
        spatial_size: Sequence[int],
        seed: int,
        resize_probability: float = 0.5,
        flip_probability: float = 0.2,
    ):
        if len(reader) == 0:
            raise ValueError(f"no training cases in {', '.join(map(str, reader.paths))}")
        self.reader = reader
        self.spatial_size = tuple(spatial_size)
        self.seed = int(seed)
        self.resize_probability = resize_probability
        self.flip_probability = flip_probability

    def __len__(self) -> int:  # virtual: indices are sample numbers, not cases
        return 2**62

    def __getitem__(self, sample: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, 1, int(sample)])
        ref = self.reader.cases[int(rng.integers(len(self.reader)))]
        if rng.random() < self.resize_probability:
            view = View("resize")
        else:
            centre = [int(rng.integers(s)) for s in ref.shape]
            view = View("crop", crop_start(ref.shape, self.spatial_size, centre))
        image = read_image(self.reader, ref, view, self.spatial_size)
        check_finite(image, self.reader, ref)
        flips = [axis + 1 for axis in range(3) if rng.random() < self.flip_probability]
        if flips:
            image = image.flip(flips)
        return image.contiguous()


class RankBatches(torch.utils.data.Sampler):
    """Batches of global sample numbers for this rank, from `start_step` to `steps`."""

    def __init__(self, start_step: int, steps: int, batch_size: int, rank: int, world_size: int):
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps):
            first = step * global_batch + self.rank * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)


def build_encoder(model_settings: dict):
    """(image encoder, model config) for the `model:` settings; the text encoder is not built."""
    from segvol.model import build_image_encoder, model_config_from_settings

    cfg = model_config_from_settings(model_settings)
    return build_image_encoder(cfg), cfg


def config_dict(cfg) -> dict:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if hasattr(cfg, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(cfg)
    return dict(vars(cfg))


def save_encoder(simmim: SimMIM, cfg, path: str | Path) -> None:
    """safetensors with `image_encoder.*` keys and the model config in the metadata (atomic, stable bytes)."""
    from segvol.model.checkpoint import write_safetensors

    tensors = {k: v.detach().cpu().contiguous() for k, v in simmim.encoder_state_dict().items()}
    metadata = {"format": "segvol-image-encoder", "config": json.dumps(config_dict(cfg), default=list, sort_keys=True)}
    write_safetensors(tensors, path, metadata)
    from segvol.provenance import write_sidecar

    write_sidecar(path)


def pretrain(
    stores: Sequence[str],
    out: str,
    settings: dict,
    model_settings: dict,
    seed: int = 2023,
    threads: int | None = None,
    device: str | None = None,
    workers: int = 0,
    stop_after: int | None = None,
) -> Path:
    """Run SimMIM pretraining and write the encoder to `out`; returns `out`.

    `threads` overrides `settings["threads"]` (the result depends on it bit for bit).
    `stop_after` ends the process after that many steps of this call without writing the output
    (a simulated kill for resume tests; the periodic checkpoint is still written).
    """
    runtime = rt.setup_runtime(threads or settings.get("threads"), device)
    torch.manual_seed(seed)
    encoder, cfg = build_encoder(model_settings)
    spatial_size = tuple(cfg.spatial_size)
    simmim = SimMIM(
        encoder,
        embed_dim=cfg.hidden_size,
        spatial_size=spatial_size,
        patch_size=cfg.patch_size,
        mask_patch_size=settings["mask_patch_size"],
        mask_ratio=settings["mask_ratio"],
    ).to(runtime.device)
    trained = simmim
    if runtime.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            simmim, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    steps = int(settings["steps"])
    optimisation = Optimisation(
        simmim.parameters(),
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        steps=steps,
        warmup_steps=max(steps // 20, 1),
    )
    tag = rt.fingerprint("pretrain", settings, model_settings, seed, runtime.world_size, torch.get_num_threads())
    inputs = rt.input_keys(zarr=list(stores), init_checkpoint=model_settings.get("init_checkpoint"))

    def batches(start: int) -> DataLoader:
        dataset = PretrainViews(StoreReader(stores, split="train"), spatial_size, seed)
        return DataLoader(
            dataset,
            batch_sampler=RankBatches(start, steps, settings["batch_size"], runtime.rank, runtime.world_size),
            num_workers=workers,
            multiprocessing_context="spawn" if workers > 0 else None,
            persistent_workers=False,
        )

    mask_generator = torch.Generator()

    def step(index: int, stream, optimizer) -> StepResult:
        images = next(stream)
        # the mask depends on the step and rank only, so it survives a resume unchanged
        mask_generator.manual_seed((seed * 1_000_003 + index) * 1009 + runtime.rank)
        mask = simmim.random_mask(images.shape[0], mask_generator)
        images = images.to(runtime.device, non_blocking=True)
        with rt.autocast(runtime.device):
            loss, _ = trained(images, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return StepResult(
            {"loss": loss.item()}, images.shape[0] * runtime.world_size, postfix={"loss": f"{loss.item():.4f}"}
        )

    return train(
        "pretrain",
        out,
        runtime,
        state=simmim,
        optimisation=optimisation,
        batches=batches,
        step=step,
        save_output=lambda: save_encoder(simmim, cfg, out),
        metrics=["loss"],
        tag=tag,
        inputs=inputs,
        checkpoint_every=int(settings["checkpoint_every"]),
        stop_after=stop_after,
    )
