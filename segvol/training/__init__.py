"""Shared training library of the `pretrain` and `finetune` stages.

- `loop`: the one training loop (optimizer and schedule, resume, progress, checkpoints, output); a stage
  gives it a step function.
- `runtime`: device, threads, DDP, the warmup + cosine schedule, exact resume, metrics, progress.
- `volumes`: reading training views out of the normalized Zarr stores.

Both training stages import from here; neither imports from the other.
"""
