"""Cost of the equivariant patch embedding + adapter next to the image encoder it feeds.

Random weights (only cost is measured), one input of the preset's size. Prints the parameters the
adapter adds, the MACs of one image-encoder forward with and without it (torch's FlopCounterMode,
MACs = FLOPs / 2; e3nn's kernel construction is counted too), the median seconds of
`encode_image` with and without it over --repeats runs, and the ratios.

    .venv/bin/python benchmarks/bench_equivariant.py --preset tiny
    .venv/bin/python benchmarks/bench_equivariant.py --preset base --repeats 3   # ~minutes on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segvol.model.config import build_model, model_config
from segvol.model.embedding_adapter import attach


def measure(model, image, repeats: int) -> tuple[float, float]:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.encode_image(image)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            model.encode_image(image)
        seconds.append(time.perf_counter() - start)
    return counter.get_total_flops() / 2e9, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = model_config(args.preset, text_encoder="minilm")
    model = build_model(config).eval()
    image = torch.rand(1, 1, *config.spatial_size)
    base_parameters = sum(p.numel() for p in model.parameters())
    base_gmacs, base_seconds = measure(model, image, args.repeats)
    adapter = attach(model, {})
    added = sum(p.numel() for p in adapter.parameters())
    gmacs, seconds = measure(model, image, args.repeats)
    print(f"preset {args.preset}, input {tuple(config.spatial_size)}, {args.threads} threads, median of {args.repeats}")
    print(f"parameters: SegVol {base_parameters / 1e6:.2f} M, adapter adds {added} ({added / base_parameters:.4%})")
    print(f"image encoder GMACs: {base_gmacs:.3f} -> {gmacs:.3f} (x{gmacs / base_gmacs:.3f})")
    print(f"encode_image seconds: {base_seconds:.3f} -> {seconds:.3f} (x{seconds / base_seconds:.3f})")


if __name__ == "__main__":
    main()
