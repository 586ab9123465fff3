"""Cost of the equivariant patch embedding + adapter next to the image encoder it feeds.

Random weights (only cost is measured), one input of the preset's size. Prints the parameters the
adapter adds, then for three encoders, measured in the same run and interleaved (one call of each
per round, so load from other processes spreads evenly): the original SegVol, SegVol + adapter
rebuilding the steerable kernel on every call (as training does), and SegVol + adapter reusing
its kernel (inference): the MACs of one
`encode_image` (torch's FlopCounterMode, MACs = FLOPs / 2, counted after a warm-up call, so the
rebuild's e3nn kernel construction is included and the reused kernel's is not), the median wall
seconds over --repeats rounds, the median CPU seconds of this process (all threads; steadier than
wall time on a machine shared with other jobs) and the ratios to the original.

It also prints how far from equivariant the embedding is at 45 deg about z (not a lattice symmetry):
the relative error |f(rot x) - rot f(x)| / |f(x)| of the per-voxel invariants (scalars and irrep
norms) in the volume's interior, on smooth random volumes, next to the same for an ordinary
convolution with as many channels (random weights), whose output is not designed to be invariant.

    .venv/bin/python benchmarks/bench_equivariant.py --preset tiny
    .venv/bin/python benchmarks/bench_equivariant.py --preset base --repeats 3   # ~minutes on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segvol.model import build_model, model_config
from segvol.model.embedding_adapter import attach


def measure(model, variants: dict, image, repeats: int) -> dict:
    """{name: (GMACs, median wall seconds, median CPU seconds)} of `encode_image` for each variant, a function
    that configures the model before a call; the variants are interleaved round by round."""
    gmacs, seconds, cpu_seconds = {}, {name: [] for name in variants}, {name: [] for name in variants}
    with torch.inference_mode():
        for name, configure in variants.items():
            configure()
            model.encode_image(image)  # warm-up: allocator, oneDNN primitives, the reused kernel
            with FlopCounterMode(display=False) as counter:
                model.encode_image(image)
            gmacs[name] = counter.get_total_flops() / 2e9
        for _ in range(repeats):
            for name, configure in variants.items():
                configure()
                start, cpu_start = time.perf_counter(), time.process_time()
                model.encode_image(image)
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu_start)
    return {
        name: (gmacs[name], statistics.median(seconds[name]), statistics.median(cpu_seconds[name])) for name in variants
    }


def rotation_error(module_field, image: torch.Tensor, degrees: float) -> float:
    """Relative interior error of a per-voxel field under rotation about z (H-W plane)."""
    from scipy import ndimage

    def turn(array):
        return torch.from_numpy(ndimage.rotate(array.numpy(), degrees, axes=(-2, -1), reshape=False, order=1))

    with torch.inference_mode():
        first = turn(module_field(image))
        second = module_field(turn(image).float())
    *_, height, width = image.shape
    radius = min(height, width) // 2 - 6
    h, w = torch.meshgrid(torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2, indexing="ij")
    inside = (h**2 + w**2 <= radius**2)[None, None, None].expand_as(first).clone()
    inside[:, :, :3] = inside[:, :, -3:] = False
    return float((first - second)[inside].norm() / first[inside].norm())


def invariants_per_voxel(embedding):
    def field(image):
        out, start = [], 0
        values = embedding.field(image)
        for mul, ir in embedding.irreps:
            block = values[:, start : start + mul * ir.dim]
            out.append(block if ir.l == 0 else block.reshape(block.shape[0], mul, ir.dim, *block.shape[2:]).norm(dim=2))
            start += mul * ir.dim
        return torch.cat(out, dim=1)

    return field


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
    adapter = attach(model, {})
    added = sum(p.numel() for p in adapter.parameters())
    convolution = adapter.embedding.convolution

    def use(extra, reuse_kernel=True):
        def configure():
            model.image_encoder.extra_embedding = extra
            convolution.reuse_kernel = reuse_kernel

        return configure

    variants = {
        "original": use(None),
        "equivariant, kernel rebuilt": use(adapter, reuse_kernel=False),
        "equivariant, kernel reused": use(adapter),
    }
    results = measure(model, variants, image, args.repeats)
    base_gmacs, base_seconds, base_cpu = results["original"]
    print(
        f"preset {args.preset}, input {tuple(config.spatial_size)}, {args.threads} threads, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(f"parameters: SegVol {base_parameters / 1e6:.2f} M, adapter adds {added} ({added / base_parameters:.4%})")
    for name, (gmacs, seconds, cpu) in results.items():
        print(
            f"encode_image, {name:28s} wall {seconds:7.3f} s (x{seconds / base_seconds:5.2f}), "
            f"CPU {cpu:7.3f} s (x{cpu / base_cpu:5.2f}), "
            f"{gmacs:8.3f} GMACs (x{gmacs / base_gmacs:.3f}, {(gmacs - base_gmacs) * 1e3:+.2f} M MACs)"
        )
    model.image_encoder.extra_embedding = adapter

    from scipy import ndimage

    generator = torch.Generator().manual_seed(0)
    smooth = ndimage.gaussian_filter(torch.rand(1, 1, 24, 64, 64, generator=generator).numpy(), (0, 0, 2, 2, 2))
    volume = torch.from_numpy(smooth)
    volume = (volume - volume.mean()) / volume.std()
    embedding = adapter.embedding
    plain = torch.nn.Conv3d(1, embedding.irreps.dim, 5, padding=2)
    equivariant = rotation_error(invariants_per_voxel(embedding), volume, 45.0)
    ordinary = rotation_error(lambda image: plain(image), volume, 45.0)
    lattice = rotation_error(invariants_per_voxel(embedding), volume, 90.0)
    print(
        f"45 deg about z, relative error of rotated per-voxel features: equivariant invariants {equivariant:.3f},"
        f" ordinary convolution {ordinary:.3f} (ratio {ordinary / equivariant:.1f}); 90 deg (lattice): {lattice:.2e}"
    )


if __name__ == "__main__":
    main()
