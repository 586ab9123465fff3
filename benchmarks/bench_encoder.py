"""How close the SegVol image encoder runs to this machine's matmul limit on CPU, and which options pay.

    python benchmarks/bench_encoder.py                       # base encoder, 2 threads, every option
    python benchmarks/bench_encoder.py --threads 1 --repeats 5 --options fp32 bf16
    python benchmarks/bench_encoder.py --no-compile          # skip the torch.compile options

One run prints:
  1. the fp32 matmul rate (torch.matmul of N x N fp32 matrices, --matmul-size, median of 3) with the
     thread count the encoder uses, and the bf16 rate for reference;
  2. the FLOPs of one image-encoder call (2 x MACs counted by segvol.model.complexity on the meta
     device; base: 1 x 1 x 32 x 256 x 256 input, 4 x 16 x 16 patches, 768 wide, 12 blocks);
  3. per option: the median seconds of `model.encode_image` (random weights, inference_mode,
     one warm-up call), the ratio encoder time / floor with floor = FLOPs / fp32 matmul rate
     (goal: within 1.5x), the speed-up over the first option (fp32) and the max abs difference of the embedding
     from the fp32 one (the embedding is layer-normed: its values have a standard deviation ~1),
     and the minor page faults per call (memory the allocator took fresh from the kernel; see
     docs/performance.md for glibc settings that keep it);
  4. after fp32, where one fp32 call spends its time (torch.profiler self time grouped by part,
     with the GFLOP/s of the linear layers and of attention).

The machine may be shared with other jobs: every timed encoder call lies between two matmul-rate
measurements, its floor uses their mean, and the ratio printed is the median of the per-call
ratios, so load from elsewhere slows numerator and denominator alike; the speed-ups ("x vs
first", the first option timed) are ratios of these ratios.

Options: fp32 (what `segvol predict` runs by default; attention through PyTorch's fused
scaled_dot_product_attention), fp32-channels-last (the input in channels_last_3d layout),
fp32-sdpa-math (attention through SDPA's unfused math backend, to show what the fused kernel
gives), bf16-autocast (torch.autocast bfloat16 around fp32 weights: the weights are cast on every
call), bf16 (`--precision bf16`: linear weights converted to bfloat16 once, see
segvol/model/image_encoder.py), and torch.compile of fp32, bf16-autocast and bf16 (compile
seconds are printed; they are lower when Inductor's on-disk cache already holds the graph;
skipped with the reason when compiling fails or takes longer than --compile-limit seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import statistics
import time

import torch

from segvol.model import build_model, model_config
from segvol.model.complexity import macs_per_forward

OPTIONS = (
    "fp32",
    "fp32-channels-last",
    "fp32-sdpa-math",
    "fp32-compile",
    "bf16-autocast",
    "bf16-autocast-compile",
    "bf16",
    "bf16-compile",
)


def matmul_rate(size: int, dtype=torch.float32, repeats: int = 3) -> float:
    """Median GFLOP/s of one (size x size) @ (size x size) torch.matmul after a warm-up."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9


GROUPS = {  # profiler op name -> part of the encoder it measures
    "aten::addmm": "linear layers",
    "aten::mm": "linear layers",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::copy_": "copies (bias broadcast, layouts)",
    "aten::native_layer_norm": "layer norms",
    "aten::gelu": "GELU",
    "aten::add": "residual adds",
}


def profile_breakdown(encode, config, flops: float) -> str:
    """Where one fp32 encoder call spends its time, by part (torch.profiler, self time per op)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        encode()
    seconds: dict[str, float] = {}
    for event in profiler.key_averages():
        group = GROUPS.get(event.key, "other")
        seconds[group] = seconds.get(group, 0.0) + event.self_cpu_time_total / 1e6
    tokens = 1
    for size, patch in zip(config.spatial_size, config.patch_size):
        tokens *= size // patch
    # q @ k^T and attention @ v: 2 x (2 x tokens^2 x hidden) per block
    attention_flops = 4 * tokens**2 * config.hidden_size * config.num_layers
    rates = {"linear layers": flops - attention_flops, "attention": attention_flops}
    parts = []
    for group, value in sorted(seconds.items(), key=lambda item: -item[1]):
        rate = f" = {rates[group] / value / 1e9:.0f} GFLOP/s" if group in rates and value > 0 else ""
        parts.append(f"{group} {value:.2f} s{rate}")
    return f"fp32 profile ({sum(seconds.values()):.2f} s): " + ", ".join(parts)


class CompileTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise CompileTimeout(f"compiling took longer than {seconds} s (--compile-limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def time_option(encode, flops: float, size: int, repeats: int) -> dict:
    """Warm-up, then `repeats` encoder calls, each between two matmul-rate measurements."""
    embedding = encode()
    seconds, ratios, faults = [], [], []
    after = matmul_rate(size)
    for _ in range(repeats):
        before = after
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        encode()
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        after = matmul_rate(size)
        ratios.append(seconds[-1] / (flops / ((before + after) / 2 * 1e9)))
    return {
        "seconds": statistics.median(seconds),
        "ratio": statistics.median(ratios),
        "embedding": embedding,
        "page_faults": statistics.median(faults),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="model preset (default base, the released network)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for matmul and encoder (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder calls per option (default 3)")
    parser.add_argument("--matmul-size", type=int, default=3072, help="N of the N x N matmul (default 3072)")
    parser.add_argument(
        "--options",
        nargs="+",
        choices=OPTIONS,
        default=list(OPTIONS),
        metavar="OPTION",
        help=f"options to time, in this order: {' '.join(OPTIONS)} (default all)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile options")
    parser.add_argument("--compile-limit", type=int, default=300, help="seconds allowed to compile (default 300)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = [o for o in OPTIONS if o in args.options and not (args.no_compile and o.endswith("-compile"))]

    config = model_config(args.preset)
    flops = 2 * macs_per_forward(config)["image_encoder"]
    fp32_rate = matmul_rate(args.matmul_size)
    bf16_rate = matmul_rate(args.matmul_size, torch.bfloat16)
    floor = flops / (fp32_rate * 1e9)
    shape = "x".join(map(str, (1, config.in_channels, *config.spatial_size)))
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"matmul {args.matmul_size}x{args.matmul_size}: fp32 {fp32_rate:.1f} GFLOP/s, bf16 {bf16_rate:.1f} GFLOP/s "
        f"(median of 3)"
    )
    print(f"image encoder ({args.preset}, input {shape}): {flops / 1e9:.1f} GFLOP per call (2 x MACs)")
    print(
        f"fp32 floor = {flops / 1e9:.1f} GFLOP / {fp32_rate:.1f} GFLOP/s = {floor:.2f} s; "
        f"bf16 floor = {flops / (bf16_rate * 1e9):.2f} s"
    )

    torch.manual_seed(0)
    model = build_model(config).eval()
    image = torch.rand(1, config.in_channels, *config.spatial_size)
    encoder = model.image_encoder
    with torch.inference_mode():
        reference = model.encode_image(image)  # fp32 eager: what every option is compared with
    results = {}

    def run(name: str, encode, note: str = "") -> None:
        with torch.inference_mode():
            result = time_option(encode, flops, args.matmul_size, args.repeats)
        result["diff"] = (result["embedding"].float() - reference).abs().max().item()
        results[name] = result
        # From the ratios, not the seconds: other jobs' load may differ between options.
        speedup = next(iter(results.values()))["ratio"] / result["ratio"]
        print(
            f"{name:22s} {result['seconds']:8.2f} s  {result['ratio']:5.2f}x floor  {speedup:5.2f}x vs first  "
            f"max|diff| {result['diff']:.2e}  {result['page_faults'] / 1e3:5.0f}k page faults  {note}",
            flush=True,
        )

    def run_compiled(name: str, autocast: bool) -> None:
        compiled = torch.compile(encoder)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        start = time.perf_counter()
        try:
            with time_limit(args.compile_limit), torch.inference_mode(), context:
                compiled(image)
        except Exception as error:  # noqa: BLE001 - a failed or slow compile skips the option, with the reason
            print(f"{name:22s} skipped: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
            return
        compile_seconds = time.perf_counter() - start
        model.image_encoder = compiled

        def encode():
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                return model.encode_image(image)

        try:  # the matmul rate is measured outside autocast: fp32
            run(name, encode, f"(compiled in {compile_seconds:.0f} s)")
        finally:
            model.image_encoder = encoder

    print(f"{'option':22s} {'median':>10s}  {'ratio':>11s}  {'speed-up':>13s}  (median of {args.repeats})")
    for name in options:
        if name == "fp32":
            run(name, lambda: model.encode_image(image))
            print("    " + profile_breakdown(lambda: model.encode_image(image), config, flops), flush=True)
        elif name == "fp32-channels-last":
            channels_last = image.contiguous(memory_format=torch.channels_last_3d)
            run(
                name,
                lambda image=channels_last: model.encode_image(image),
                "(1 input channel: the same memory order as NCDHW)" if config.in_channels == 1 else "",
            )
        elif name == "fp32-sdpa-math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def unfused():
                with sdpa_kernel(SDPBackend.MATH):
                    return model.encode_image(image)

            run(name, unfused)
        elif name == "fp32-compile":
            run_compiled(name, autocast=False)
        elif name == "bf16-autocast":

            def autocast():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model.encode_image(image)

            run(name, autocast, "(weights cast every call)")
        elif name == "bf16-autocast-compile":
            run_compiled(name, autocast=True)
        elif name == "bf16":
            encoder.set_precision("bf16")  # irreversible: the bf16 options come last
            run(name, lambda: model.encode_image(image), "(segvol predict --precision bf16)")
        elif name == "bf16-compile":
            encoder.set_precision("bf16")
            run_compiled(name, autocast=False)


if __name__ == "__main__":
    main()
