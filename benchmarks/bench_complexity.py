"""Parameters, MACs per forward and CPU seconds of the SegVol presets, measured in one run.

    .venv/bin/python benchmarks/bench_complexity.py                 # tiny and base
    .venv/bin/python benchmarks/bench_complexity.py --presets tiny --threads 2

Prints one block per preset and the base/tiny ratios. Times are medians over --repeats runs
(base: fewer, it is heavy on CPU), as wall time and as process CPU time: on a machine shared
with other jobs wall time with several threads is dominated by waiting, CPU time is steadier
(compare with --threads 1). The tiny goal: a training step (batch 2, one encoding,
6 decoder passes, forward + backward) well under 0.2 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from segvol.model import build_model, model_config
from segvol.model.complexity import (
    count_parameters,
    macs_per_forward,
    parameter_table,
    seconds_per_case,
    training_step_seconds,
)


def measure(preset: str, repeats: int, train_step: bool) -> dict:
    config = model_config(preset)
    torch.manual_seed(0)
    model = build_model(config)
    result = {
        "parameters": count_parameters(model),
        "trainable": count_parameters(model, trainable_only=True),
        "by_part": parameter_table(model),
        "macs": macs_per_forward(config),
        "seconds": seconds_per_case(model, repeats=repeats),
        "cpu_seconds": seconds_per_case(model, repeats=repeats, clock=time.process_time),
    }
    if train_step:
        result["train_step_s"] = training_step_seconds(model, repeats=max(repeats, 3))
        result["train_step_cpu_s"] = training_step_seconds(model, repeats=max(repeats, 3), clock=time.process_time)
    del model
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs for tiny (base uses 1 + 1 warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    for preset in args.presets:
        heavy = preset == "base"
        results[preset] = measure(preset, repeats=1 if heavy else args.repeats, train_step=not heavy)
        r = results[preset]
        print(f"[{preset}] parameters {r['parameters']:,} (trainable {r['trainable']:,})")
        for part, counts in r["by_part"].items():
            print(f"    {part:15s} {counts['total']:>13,}  trainable {counts['trainable']:>13,}")
        m = r["macs"]
        print(
            f"    MACs/forward   {m['forward'] / 1e9:9.3f} G  (image encoder {m['image_encoder'] / 1e9:.3f} G, "
            f"decoder {m['decoder'] / 1e9:.3f} G per prompt set)"
        )
        for label, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
            s = r[key]
            print(
                f"    s/case ({label:4s}) {s['case']:9.4f}    "
                f"(encode {s['encode_image']:.4f}, decode {s['decode']:.4f}; "
                f"{args.threads} threads, median)"
            )
        if "train_step_s" in r:
            print(
                f"    train step     {r['train_step_s']:9.4f} s wall, {r['train_step_cpu_s']:.4f} s cpu "
                "(batch 2, 6 decoder passes, fwd+bwd, median)"
            )
    if "tiny" in results and "base" in results:
        tiny, base = results["tiny"], results["base"]
        print(
            f"[base/tiny] parameters x{base['parameters'] / tiny['parameters']:.1f}, "
            f"MACs x{base['macs']['forward'] / tiny['macs']['forward']:.1f}, "
            f"seconds/case x{base['seconds']['case'] / tiny['seconds']['case']:.1f}"
        )


if __name__ == "__main__":
    main()
