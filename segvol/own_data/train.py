"""Fine-tune released (or our) SegVol weights on the train split of your store; keep the best validated weights.

The step is the finetune stage's (`segvol.finetune.train.finetune`, the one training loop): text, box and
point prompts of every category (new names get their text embedding from the text encoder, whose trained
projection learns them), optional FH pseudo-label passes. What small data and small machines need comes
through `FinetuneHooks`:

- the image encoder frozen (`freeze_encoder`; `auto` = frozen on a CPU: a step costs about a third, and a
  few cases cannot retrain a ViT), or trained at `lr * encoder_lr_scale`;
- a validation every `validate_every` steps (mean Dice of the first prompt kind on the validation split;
  the starting weights are scored too) and the best weights kept: the output is the best, not the last
  (written to `<out>.validation.csv` as it goes; with no validation case, the last weights);
- a resumed run keeps its best: the best weights and scores so far live in `<out>.ckpt/` with the
  training state.

The output records its vocabulary (`segvol categories --checkpoint`): the categories of the starting
checkpoint (when it records them) plus yours.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch

from segvol.finetune.train import FinetuneHooks, finetune
from segvol.own_data.scoring import mean_dice, score_split
from segvol.settings import stage_settings
from segvol.training import runtime as rt

log = logging.getLogger(__name__)

# Keys of the `own_data:` block that are the finetune stage's own settings (same meaning).
FINETUNE_KEYS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "prompt_combinations",
    "pseudo_weight",
    "pseudo_passes",
    "resize_probability",
    "checkpoint_every",
    "workers",
    "threads",
)
RELEASE_HINT = (
    "a released-layout file is read with the `model:` block; SegVol_v1.pth and pytorch_model.bin "
    "need model: {preset: base, text_encoder: clip}"
)


def starting_model(weights: str, model_settings: dict):
    """The model to start from and its recorded vocabulary: ours (its own config), or a released-layout
    file (SegVol_v1.pth, pytorch_model.bin, hf://BAAI/SegVol) loaded strictly into the `model:` block's network."""
    from segvol.model import build_model, checkpoint, model_config_from_settings

    path = checkpoint.resolve(weights)
    state, _, kind = checkpoint.read_state_dict(path)
    if kind == checkpoint.FORMAT:
        return checkpoint.load(path), checkpoint.read_vocabulary(path)
    if kind in ("simmim", checkpoint.ENCODER_ONLY):
        raise ValueError(
            f"{weights}: holds only image-encoder weights; own-data fine-tuning starts from a whole "
            "SegVol (SegVol_v1.pth, hf://BAAI/SegVol or a model of ours)"
        )
    model = build_model(model_config_from_settings(model_settings))
    try:
        checkpoint.load_state_dict(model, state, str(weights))
    except ValueError as error:
        raise ValueError(f"{error} ({RELEASE_HINT})") from None
    return model.eval(), []


def encoder_frozen(setting, device: torch.device) -> bool:
    """`freeze_encoder`: true, false, or "auto" = frozen when training on a CPU."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


def parameter_groups(model: torch.nn.Module, lr: float, encoder_lr_scale: float, frozen: bool) -> list[dict]:
    """AdamW groups: the image encoder at `lr * encoder_lr_scale` (none when frozen), the rest at `lr`."""
    encoder = [p for p in model.image_encoder.parameters() if p.requires_grad] if not frozen else []
    encoder_ids = {id(p) for p in model.image_encoder.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": lr}]
    if encoder:
        groups.append({"params": encoder, "lr": lr * encoder_lr_scale})
    return groups


class KeepBest:
    """Validation every K steps and the best weights so far (in memory, and in `<out>.ckpt/` for a resume)."""

    def __init__(self, out: Path, store: str, settings: dict, seed: int, tag: str, steps: int):
        self.out, self.store, self.seed, self.tag, self.steps = out, store, seed, tag, steps
        self.every = int(settings["validate_every"])
        self.kind = settings["prompts"][0]
        self.history: list[dict] = []
        self.best_step, self.best_score, self.best_state = None, float("-inf"), None
        self.directory = rt.checkpoint_dir(out)
        self.log = out.with_name(out.name.split(".")[0] + ".validation.csv")

    @property
    def enabled(self) -> bool:
        from segvol.io.store import open_store

        return bool((open_store(self.store).split or {}).get("validation"))

    def score(self, model) -> float:
        was_training = model.training
        value = mean_dice(score_split(model, self.store, "validation", [self.kind], self.seed, nsd_tolerance_mm=None))
        model.train(was_training)
        return value

    def restore(self) -> bool:
        """The best of an interrupted run of the same tag, if its record is there."""
        record = self.directory / "best.json"
        if not record.is_file():
            return False
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("tag") != self.tag or not (self.directory / "best.pt").is_file():
            return False
        self.history = saved["history"]
        self.best_step, self.best_score = saved["best_step"], saved["best_score"]
        self.best_state = torch.load(self.directory / "best.pt", map_location="cpu", weights_only=True)
        return True

    def __call__(self, step: int, model) -> None:
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the main process validates and keeps
            return
        if step % self.every and step != self.steps:
            return
        if any(entry["step"] == step for entry in self.history):  # replayed after a resume
            return
        value = self.score(model)
        self.history.append({"step": step, "validation_dice": value})
        from segvol.io.atomic import atomic_path

        self.directory.mkdir(parents=True, exist_ok=True)
        if value > self.best_score:
            self.best_step, self.best_score = step, value
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in rt.unwrap(model).state_dict().items()}
            with atomic_path(self.directory / "best.pt") as temporary:
                torch.save(self.best_state, temporary)
        with atomic_path(self.directory / "best.json") as temporary:
            temporary.write_text(
                json.dumps(
                    {
                        "tag": self.tag,
                        "history": self.history,
                        "best_step": self.best_step,
                        "best_score": self.best_score,
                    }
                ),
                encoding="utf-8",
            )
        log.info(
            "validation at step %d: mean Dice %.4f (best %.4f at step %d)", step, value, self.best_score, self.best_step
        )
        self.write_log()

    def write_log(self) -> None:
        from segvol.io.atomic import atomic_path

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.log) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "validation_dice", "best"])
            for entry in self.history:
                best = int(entry["step"] == self.best_step)
                writer.writerow([entry["step"], f"{entry['validation_dice']:.6g}", best])


def finetune_own(
    store: str,
    pseudo: str | None,
    out: str | Path,
    settings: dict,
    model_settings: dict,
    weights: str,
    seed: int = 2023,
    threads: int | None = None,
    device: str | None = None,
    stop_after: int | None = None,
) -> Path:
    """Fine-tune `weights` on the train split of `store` (module docstring); the best validated weights go to `out`."""
    from segvol.device import resolve_device
    from segvol.io.store import open_store
    from segvol.model import checkpoint

    out = Path(out)
    categories = list(open_store(store).categories)
    model, vocabulary = starting_model(weights, model_settings)
    chosen = resolve_device(device)
    frozen = encoder_frozen(settings["freeze_encoder"], chosen)
    for parameter in model.image_encoder.parameters():
        parameter.requires_grad_(not frozen)
    log.info(
        "own-data fine-tuning from %s: categories %s, image encoder %s",
        weights,
        categories,
        "frozen" if frozen else f"trained at lr x {settings['encoder_lr_scale']}",
    )
    finetune_settings = stage_settings("finetune", {key: settings[key] for key in FINETUNE_KEYS})
    own = {
        key: settings[key]
        for key in (
            "freeze_encoder",
            "encoder_lr_scale",
            "validate_every",
            "prompts",
            "validation_fraction",
            "test_fraction",
        )
    }
    tag = rt.fingerprint("own_data", own, frozen)
    inputs = rt.input_keys(zarr=store, pseudo=pseudo, weights=weights)
    run = rt.fingerprint(
        "finetune", finetune_settings, model_settings, seed, tag, threads or finetune_settings["threads"], inputs
    )
    keep = KeepBest(out, store, settings, seed, run, int(finetune_settings["steps"]))
    validating = keep.enabled
    if validating and not keep.restore():
        keep(0, model.to(chosen))
    if not validating:
        log.warning("%s: no validation case; the last weights are kept", store)

    def save_best(trained, path: Path) -> None:
        if validating and keep.best_state is not None:
            trained.load_state_dict(keep.best_state)
            log.info("keeping the weights of step %d (validation Dice %.4f)", keep.best_step, keep.best_score)
        checkpoint.save(trained, path, vocabulary=[*vocabulary, *categories])

    hooks = FinetuneHooks(
        param_groups=lambda m: parameter_groups(m, settings["lr"], settings["encoder_lr_scale"], frozen),
        after_step=keep if validating else None,
        save_output=save_best,
        tag=(tag,),
    )
    return finetune(
        [store],
        [pseudo] if pseudo else [],
        str(out),
        finetune_settings,
        {**model_settings, "init_checkpoint": str(weights)},
        seed=seed,
        threads=threads,
        device=device,
        stop_after=stop_after,
        model=model,
        hooks=hooks,
    )
