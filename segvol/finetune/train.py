"""Prompt fine-tuning: the step function of `segvol.training.loop` (AdamW + warmup/cosine, exact resume),
DDP and gradient accumulation.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples per rank (shared
embedding schedule) or, in the released per-category schedule, one micro-batch with one
optimizer step per present category. See `segvol.finetune.objective` for the two schedules.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segvol.finetune.corrective import click_rounds
from segvol.finetune.data import DatasetBatches, FinetuneSamples
from segvol.finetune.objective import PROMPT_COMBINATIONS, FinetuneObjective
from segvol.training import runtime as rt
from segvol.training.loop import Optimisation, StepResult, train

log = logging.getLogger(__name__)


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Copy the image-encoder tensors of `path` (ours, SimMIM `ViT_pretrain.ckpt`, a whole
    checkpoint) into `model`, strictly; returns how many tensors the encoder has."""
    from segvol.model import checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder checkpoint not found")
    return len(checkpoint.load_image_encoder(model, path).state_dict())


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def build_finetune_model(model_settings: dict, encoder: str | None):
    from segvol.model import build_model, model_config_from_settings

    cfg = model_config_from_settings(model_settings)
    model = build_model(cfg)
    if model_settings.get("init_checkpoint"):
        from segvol.model import checkpoint

        checkpoint.load_into(model, model_settings["init_checkpoint"])
    if encoder:
        load_encoder_weights(model, encoder)
    return model, cfg


def save_model(model: torch.nn.Module, out: str | Path) -> None:
    from segvol.model import checkpoint

    checkpoint.save(model, out)  # atomic, with its provenance sidecar


@dataclass
class FinetuneHooks:
    """What a caller of `finetune` may change; the defaults are the `finetune` stage itself.

    param_groups(model): AdamW's parameter groups (dicts with their own `lr`), e.g. a lower rate for the
        image encoder; default: every parameter that requires a gradient, at `settings["lr"]`.
    after_step(step, model): called after every optimizer step (a validation every K steps).
    save_output(model, out): writes the result (e.g. the best validated weights); default `save_model`.
    tag: more settings the resume fingerprint must include (a checkpoint of other ones is not resumed).
    """

    param_groups: Callable[[torch.nn.Module], list] | None = None
    after_step: Callable[[int, torch.nn.Module], None] | None = None
    save_output: Callable[[torch.nn.Module, Path], None] | None = None
    tag: tuple[Any, ...] = ()


def prompt_combinations(seed: int, step: int, count: int) -> tuple[int, ...]:
    """Indices of the prompt combinations trained at `step`: all six (the paper), or `count` of
    them drawn from (seed, step) alone, so a resumed run and every DDP rank draw the same ones."""
    total = len(PROMPT_COMBINATIONS)
    if count >= total:
        return tuple(range(total))
    chosen = np.random.default_rng([seed, step]).choice(total, size=count, replace=False)
    return tuple(sorted(int(i) for i in chosen))


def finetune(
    stores: Sequence[str],
    pseudo_stores: Sequence[str],
    out: str,
    settings: dict,
    model_settings: dict,
    encoder: str | None = None,
    seed: int = 2023,
    threads: int | None = None,
    device: str | None = None,
    stop_after: int | None = None,
    model: torch.nn.Module | None = None,
    hooks: FinetuneHooks | None = None,
) -> Path:
    """Fine-tune and write the model to `out` (safetensors via segvol.model.checkpoint).

    `threads` overrides `settings["threads"]` (the result depends on it bit for bit).
    `stop_after` simulates a kill after that many optimizer steps of this call (the training
    state is checkpointed, no output is written). `model` replaces the one built from
    `model_settings` (tests). A checkpoint of other settings or of inputs whose content
    changed is not resumed (`segvol.training.runtime.load_training_state`). `hooks` change the
    parameter groups, add work after each step or replace the output (`FinetuneHooks`).
    """
    hooks = hooks or FinetuneHooks()
    runtime = rt.setup_runtime(threads or settings.get("threads"), device)
    torch.manual_seed(seed)
    if model is None:
        model, cfg = build_finetune_model(model_settings, encoder)
        spatial_size = cfg.spatial_size
    else:
        spatial_size = model.config.spatial_size
    corrective = int(settings.get("corrective_clicks", 0))
    mask_prompt = bool(settings.get("mask_prompt", False))
    if mask_prompt:
        from segvol.model.mask_prompt import attach_mask_prompt

        attach_mask_prompt(model)
    model = model.to(runtime.device)
    objective = FinetuneObjective(model, settings["pseudo_weight"], mask_prompt=mask_prompt)
    trained: torch.nn.Module = objective
    if runtime.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True,  # some prompt paths are unused in some passes
        )
    steps = int(settings["steps"])
    groups = hooks.param_groups(model) if hooks.param_groups else [p for p in model.parameters() if p.requires_grad]
    optimisation = Optimisation(
        groups,
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        steps=steps,
        warmup_steps=int(round(settings["warmup_fraction"] * steps)),
    )
    tag = rt.fingerprint(
        "finetune", settings, model_settings, seed, runtime.world_size, torch.get_num_threads(), *hooks.tag
    )
    inputs = rt.input_keys(
        zarr=list(stores),
        pseudo=list(pseudo_stores),
        encoder=encoder,
        init_checkpoint=model_settings.get("init_checkpoint"),
    )

    shared = bool(settings["shared_embedding"])
    accum = int(settings["grad_accum"]) if shared else 1
    dataset = FinetuneSamples(stores, pseudo_stores, spatial_size=spatial_size, seed=seed, settings=settings)

    def batches(start: int) -> DataLoader:
        sampler = DatasetBatches(
            dataset,
            batch_size=settings["batch_size"],
            rank=runtime.rank,
            world_size=runtime.world_size,
            start=start * accum,
            stop=steps * accum,
            seed=seed,
        )
        workers = int(settings["workers"])
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            multiprocessing_context="spawn" if workers > 0 else None,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            pin_memory=runtime.device.type == "cuda",
        )
        model.train()
        return loader

    def step(index: int, stream, optimizer) -> StepResult:
        combinations = prompt_combinations(seed, index, int(settings["prompt_combinations"]))
        clicks = click_rounds(seed, index, corrective)
        totals = {"loss": 0.0, "supervised": 0.0, "pseudo": 0.0}
        samples = 0
        if shared:
            optimizer.zero_grad(set_to_none=True)
            for micro in range(accum):
                batch = move_batch(next(stream), runtime.device)
                categories = dataset.categories[int(batch["store"][0])]
                pairs = rt.all_reduce_sum(batch["present"].sum().float(), runtime)
                count = float(batch["image"].shape[0] * runtime.world_size)
                sync = micro == accum - 1 or not runtime.distributed
                context = trained.no_sync() if not sync else contextlib.nullcontext()
                with context, rt.autocast(runtime.device):
                    loss, parts = trained(
                        batch,
                        categories,
                        float(pairs),
                        count,
                        runtime.world_size,
                        combinations=combinations,
                        clicks=clicks,
                    )
                (loss / accum).backward()
                _accumulate(totals, loss, parts, 1.0 / accum)
                samples += batch["image"].shape[0] * runtime.world_size
            optimizer.step()
        else:
            batch = move_batch(next(stream), runtime.device)
            categories = dataset.categories[int(batch["store"][0])]
            per_category = rt.all_reduce_sum(batch["present"].sum(0).float(), runtime)
            count = float(batch["image"].shape[0] * runtime.world_size)
            present = [k for k in range(len(categories)) if per_category[k] > 0]
            for k in present:
                optimizer.zero_grad(set_to_none=True)
                with rt.autocast(runtime.device):
                    loss, parts = trained(
                        batch,
                        categories,
                        float(per_category[k]),
                        count,
                        runtime.world_size,
                        category=k,
                        combinations=combinations,
                        clicks=clicks,
                    )
                loss.backward()
                optimizer.step()
                _accumulate(totals, loss, parts, 1.0 / max(len(present), 1))
            samples += batch["image"].shape[0] * runtime.world_size
        return StepResult(totals, samples, postfix={"loss": f"{totals['loss']:.3f}"})

    save_output = hooks.save_output or save_model
    after_step = (lambda done: hooks.after_step(done, model)) if hooks.after_step else None
    return train(
        "finetune",
        out,
        runtime,
        state=model,
        optimisation=optimisation,
        batches=batches,
        step=step,
        save_output=lambda: save_output(model, Path(out)),
        metrics=["loss", "supervised", "pseudo"],
        tag=tag,
        inputs=inputs,
        checkpoint_every=int(settings["checkpoint_every"]),
        stop_after=stop_after,
        after_step=after_step,
    )


def _accumulate(totals: dict, loss: torch.Tensor, parts: dict, weight: float) -> None:
    totals["loss"] += float(loss.detach()) * weight
    totals["supervised"] += parts["supervised"] * weight
    totals["pseudo"] += parts["pseudo"] * weight
