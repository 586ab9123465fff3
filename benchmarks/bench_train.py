"""Training throughput: shared image embedding per batch vs the released per-category loop.

Both schedules train the same model on the same batch (K categories, six prompt combinations,
pseudo passes); the script prints samples/s (median over timed steps), the ratio (goal >= 3x)
and the peak memory of each (CUDA peak allocation on GPU, peak RSS of a fresh process on CPU).

  .venv/bin/python benchmarks/bench_train.py                 # tiny on CPU, base when CUDA exists
  .venv/bin/python benchmarks/bench_train.py --preset tiny --batch 2 --categories 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def make_batch(spatial_size, batch: int, categories: int, pseudo_passes: int, seed: int = 0):
    import numpy as np
    import torch

    from segvol.finetune.prompts import POINTS_PER_PROMPT, sample_points, tight_box

    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) for s in spatial_size], indexing="ij")

    def blob():
        centre = [rng.uniform(0.3, 0.7) * s for s in spatial_size]
        radii = [rng.uniform(0.1, 0.25) * s for s in spatial_size]
        return torch.from_numpy(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0)

    image = torch.rand(batch, 1, *spatial_size) * 0.1
    labels = torch.zeros(batch, categories, *spatial_size)
    for b in range(batch):
        for k in range(categories):
            mask = blob()
            labels[b, k] = mask.float()
            image[b, 0][mask] = 0.3 + 0.1 * k
    points = torch.zeros(batch, categories, POINTS_PER_PROMPT, 3)
    point_labels = torch.zeros(batch, categories, POINTS_PER_PROMPT, dtype=torch.long)
    boxes = torch.zeros(batch, categories, 6)
    for b in range(batch):
        for k in range(categories):
            points[b, k], point_labels[b, k] = sample_points(labels[b, k], rng, 5, 5)
            boxes[b, k] = tight_box(labels[b, k])
    pseudo_targets = torch.stack([torch.stack([blob() for _ in range(pseudo_passes)]) for _ in range(batch)])
    pseudo_points = torch.zeros(batch, pseudo_passes, POINTS_PER_PROMPT, 3)
    pseudo_point_labels = torch.zeros(batch, pseudo_passes, POINTS_PER_PROMPT, dtype=torch.long)
    pseudo_boxes = torch.zeros(batch, pseudo_passes, 6)
    for b in range(batch):
        for p in range(pseudo_passes):
            pseudo_points[b, p], pseudo_point_labels[b, p] = sample_points(pseudo_targets[b, p].float(), rng, 6, 5)
            pseudo_boxes[b, p] = tight_box(pseudo_targets[b, p].float())
    return {
        "image": image,
        "labels": labels.half(),
        "present": torch.ones(batch, categories, dtype=torch.bool),
        "points": points,
        "point_labels": point_labels,
        "boxes": boxes,
        "pseudo_targets": pseudo_targets.to(torch.uint8),
        "pseudo_valid": torch.ones(batch, pseudo_passes, dtype=torch.bool),
        "pseudo_points": pseudo_points,
        "pseudo_point_labels": pseudo_point_labels,
        "pseudo_boxes": pseudo_boxes,
    }


def setup(args):
    """(device, objective, optimizer, batch, categories) for the benchmark's model and batch."""
    import torch

    from segvol.device import resolve_device
    from segvol.finetune.objective import FinetuneObjective
    from segvol.model import build_model, model_config

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(model_config(args.preset, text_encoder=args.text_encoder)).to(device)
    objective = FinetuneObjective(model, pseudo_weight=0.1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    names = ["liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta", "stomach", "gallbladder"]
    categories = names[: args.categories]
    batch = make_batch(model.config.spatial_size, args.batch, args.categories, args.pseudo_passes)
    batch = {k: v.to(device) for k, v in batch.items()}
    return device, objective, optimizer, batch, categories


def steps_for(args, device, objective, optimizer, batch, categories):
    """The two schedules as callables training one batch each."""
    from segvol.training.runtime import autocast

    pairs = float(batch["present"].sum())

    def shared():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss, _ = objective(batch, categories, pairs, float(args.batch))
        loss.backward()
        optimizer.step()

    def per_category():
        for k in range(len(categories)):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss, _ = objective(
                    batch, categories, float(batch["present"][:, k].sum()), float(args.batch), category=k
                )
            loss.backward()
            optimizer.step()

    return {"shared": shared, "per-category": per_category}


def timed(step, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_speed(args) -> dict:
    """Both schedules in one process, steps interleaved so machine load hits both alike."""
    device, *rest = setup(args)
    steps = steps_for(args, device, *rest)
    for step in steps.values():
        step()  # warm-up (allocator, text cache)
    rates = {mode: [] for mode in steps}
    for _ in range(args.steps):
        for mode, step in steps.items():
            rates[mode].append(args.batch / timed(step, device))
    return {"device": str(device), "rates": rates}


def measure_memory(args) -> float:
    """Peak memory (MB) of one schedule: CUDA peak allocation, else this process's peak RSS."""
    import torch

    device, *rest = setup(args)
    step = steps_for(args, device, *rest)[args.mode]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="model preset (default: base on CUDA, tiny otherwise)")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--categories", type=int, default=4)
    parser.add_argument("--pseudo-passes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per schedule (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--mode", choices=["shared", "per-category"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preset is None:
        import torch

        args.preset = "base" if torch.cuda.is_available() else "tiny"
    if args.mode:
        print(json.dumps({"peak_mb": measure_memory(args)}))
        return 0
    speed = measure_speed(args)
    peaks = {}
    for mode in ("shared", "per-category"):  # a fresh process each: clean peak memory
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--preset",
            args.preset,
            "--text-encoder",
            args.text_encoder,
            "--batch",
            str(args.batch),
            "--categories",
            str(args.categories),
            "--pseudo-passes",
            str(args.pseudo_passes),
            "--threads",
            str(args.threads),
        ]
        if args.device:
            command += ["--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[mode] = json.loads(output.strip().splitlines()[-1])["peak_mb"]
    medians = {mode: statistics.median(r) for mode, r in speed["rates"].items()}
    for mode, rates in speed["rates"].items():
        print(
            f"{mode:>13}: {medians[mode]:.3f} samples/s (median of {len(rates)}: "
            f"{', '.join(f'{x:.3f}' for x in rates)}), peak {peaks[mode]:.0f} MB, {args.preset} on {speed['device']}"
        )
    ratio = medians["shared"] / medians["per-category"]
    print(
        f"speed-up shared / per-category: {ratio:.2f}x (goal >= 3x) at batch {args.batch}, "
        f"{args.categories} categories, {args.pseudo_passes} pseudo passes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
