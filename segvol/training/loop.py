"""The one training loop of `pretrain`, `finetune` and `finetune-equivariant`.

A stage builds its model and describes one optimizer step as a *step function*; `train` does the
rest, the same way for every stage: AdamW and the warmup + cosine schedule, exact resume from
`<out>.ckpt/`, the data stream from the resumed step, progress, the metrics CSV, periodic
checkpoints, the simulated kill of the resume tests, the output and the teardown.

    result = step(step_index, batches, optimizer)

does the forward and backward passes and the optimizer update(s) of step `step_index` (it draws
as many batches from `batches` as it needs; one step may hold several updates, like the released
per-category schedule) and returns a `StepResult`. The loop then steps the schedule, counts the
step and writes its metrics. A new kind of training (another objective, corrective clicks) is a
new step function; per-group learning rates are `param_groups` as `torch.optim.AdamW` takes them
(the schedule scales every group's rate); `after_step` is called after every optimizer step, for
work such as a validation every K steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segvol.training import runtime as rt


@dataclass
class StepResult:
    """What one step reports: metrics for the CSV (the loop adds `lr` and `samples_per_s`), the samples
    it trained on over all ranks (for `samples_per_s`) and the progress bar's postfix."""

    metrics: dict[str, float]
    samples: int
    postfix: dict[str, str] = field(default_factory=dict)


StepFunction = Callable[[int, Iterator, torch.optim.Optimizer], StepResult]


@dataclass
class Optimisation:
    """AdamW over `param_groups` (parameters, or dicts with their own `lr`/`weight_decay`) with a linear
    warmup over `warmup_steps` then a cosine decay to 0 at `steps` (`runtime.warmup_cosine`)."""

    param_groups: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]
    lr: float
    weight_decay: float
    steps: int
    warmup_steps: int

    def build(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = torch.optim.AdamW(self.param_groups, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rt.warmup_cosine(self.steps, self.warmup_steps))
        return optimizer, scheduler


def train(
    name: str,
    out: str | Path,
    runtime: rt.Runtime,
    *,
    state: torch.nn.Module,
    optimisation: Optimisation,
    batches: Callable[[int], Iterable],
    step: StepFunction,
    save_output: Callable[[], None],
    metrics: Sequence[str],
    tag: str,
    inputs: dict | None = None,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
    after_step: Callable[[int], None] | None = None,
) -> Path:
    """Train `steps` optimizer steps (resuming where a checkpoint of the same `tag` and `inputs` ended),
    then call `save_output()` on the main rank and remove the training state; returns `out`.

    `state`: the module whose weights the resume checkpoint holds (the model, or only its trained part).
    `batches(start)`: the data stream from step `start` (a DataLoader over a sampler that starts there).
    `stop_after` ends after that many steps of this call with the training state checkpointed and no
    output written (a simulated kill for the resume tests). The runtime is torn down at the end, also
    on an error.
    """
    steps = int(optimisation.steps)
    try:
        optimizer, scheduler = optimisation.build()
        start, _ = rt.load_training_state(
            out,
            model=state,
            optimizer=optimizer,
            scheduler=scheduler,
            tag=tag,
            inputs=inputs,
            map_location=runtime.device,
        )
        stream = iter(batches(start))
        log = rt.MetricsLog(out, [*metrics, "lr", "samples_per_s"], start, enabled=runtime.is_main)
        try:
            with rt.progress(steps, start, runtime.is_main, name) as bar:
                tick = time.perf_counter()
                for index in range(start, steps):
                    result = step(index, stream, optimizer)
                    scheduler.step()
                    done = index + 1
                    now = time.perf_counter()
                    rate = result.samples / max(now - tick, 1e-9)
                    tick = now
                    log.write(done, {**result.metrics, "lr": scheduler.get_last_lr()[0], "samples_per_s": rate})
                    bar.set_postfix(**result.postfix, samples_s=f"{rate:.2f}")
                    bar.update(1)
                    if after_step is not None:
                        after_step(done)
                    stopping = stop_after is not None and done - start >= stop_after
                    periodic = checkpoint_every > 0 and done % checkpoint_every == 0
                    if runtime.is_main and done < steps and (stopping or periodic):
                        rt.save_training_state(
                            out,
                            step=done,
                            model=state,
                            optimizer=optimizer,
                            scheduler=scheduler,
                            tag=tag,
                            inputs=inputs,
                        )
                    if stopping:
                        return Path(out)
            if runtime.is_main:
                save_output()
                rt.remove_training_state(out)
        finally:
            log.close()
            del stream  # ends the DataLoader's workers
    finally:
        rt.teardown_runtime(runtime)
    return Path(out)
