"""Model complexity: parameters, multiply-accumulates per forward, seconds per case.

MACs are counted with `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2) on the
meta device: no memory, no compute, and attention is counted (on CPU tensors the counter does
not see PyTorch's fused attention kernel). The text backbone is excluded: it runs once per
category name and is cached.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segvol.model.build import build_vision_parts
from segvol.model.config import ModelConfig


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """{submodule: {"total": n, "trainable": n}} for each top-level child of `model`."""
    return {
        name: {"total": count_parameters(child), "trainable": count_parameters(child, trainable_only=True)}
        for name, child in model.named_children()
    }


def macs_per_forward(config: ModelConfig, batch: int = 1) -> dict[str, int]:
    """MACs of encode_image and of one decode with a box + text prompt, for `batch` cases."""
    with torch.device("meta"):
        image_encoder, prompt_encoder, mask_decoder = build_vision_parts(config)
        image = torch.empty(batch, config.in_channels, *config.spatial_size)
        boxes = torch.zeros(batch, 6)
        text = torch.empty(batch, config.hidden_size)
    with FlopCounterMode(display=False) as counter:
        embedding = image_encoder(image)
    encoder_macs = counter.get_total_flops() // 2
    with FlopCounterMode(display=False) as counter:
        sparse, dense = prompt_encoder(None, boxes, text, batch)
        low_res = mask_decoder(embedding, prompt_encoder.get_dense_pe(), sparse, dense, text_embedding=text)
        F.interpolate(low_res, size=config.spatial_size, mode="trilinear", align_corners=False)
    decoder_macs = counter.get_total_flops() // 2
    return {"image_encoder": encoder_macs, "decoder": decoder_macs, "forward": encoder_macs + decoder_macs}


def median_seconds(
    function: Callable[[], object], repeats: int = 5, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median duration of `function` by `clock` (wall time; pass time.process_time for CPU time,
    which is steadier than wall time on a machine shared with other jobs)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def seconds_per_case(model, repeats: int = 3, warmup: int = 1, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds of encode_image and of one box+text decode for one case (no gradient)."""
    config = model.config
    image = torch.rand(1, config.in_channels, *config.spatial_size, device=model.device)
    box = torch.tensor(
        [[2.0, 4.0, 4.0, config.spatial_size[0] / 2, config.spatial_size[1] / 2, config.spatial_size[2] / 2]]
    )
    model.eval()
    with torch.no_grad():
        text = model.encode_text(["liver"])
        embedding = model.encode_image(image)
        encode = median_seconds(lambda: model.encode_image(image), repeats, warmup, clock)
        decode = median_seconds(lambda: model.decode(embedding, text=text, boxes=box), repeats, warmup, clock)
    return {"encode_image": encode, "decode": decode, "case": encode + decode}


def training_step_seconds(
    model, batch: int = 2, decoder_passes: int = 6, repeats: int = 5, warmup: int = 1, clock=time.perf_counter
) -> float:
    """Median seconds of forward + backward: one image encoding, `decoder_passes` decodes per case."""
    config = model.config
    image = torch.rand(batch, config.in_channels, *config.spatial_size, device=model.device)
    box = torch.tensor([[2.0, 4.0, 4.0, 20.0, 30.0, 30.0]] * batch)
    target = (torch.rand(batch, 1, *config.spatial_size, device=model.device) > 0.5).float()
    model.train()
    model.encode_text(["liver"])

    def step():
        model.zero_grad(set_to_none=True)
        embedding = model.encode_image(image)
        text = model.encode_text(["liver"] * batch)
        loss = 0.0
        for index in range(decoder_passes):
            logits = model.decode(embedding, text=text if index % 2 == 0 else None, boxes=box)
            loss = loss + F.binary_cross_entropy_with_logits(logits, target)
        loss.backward()

    seconds = median_seconds(step, repeats, warmup, clock)
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds
