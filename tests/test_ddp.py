"""DDP on CPU (gloo): two ranks with one sample each train exactly like one process with both."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from tests.test_finetune import TEST_MODEL, make_store, settings

STEPS = 2
LR = 1e-3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, stores: dict, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
    )
    from segvol.finetune.train import finetune

    finetune(
        stores["zarr"],
        stores["pseudo"],
        out,
        settings(steps=STEPS, batch_size=1, lr=LR, checkpoint_every=0),
        TEST_MODEL,
        seed=9,
        threads=1,
        device="cpu",
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    a = make_store(
        base / "zarr" / "ds_a.zarr", "ds_a", ["liver", "spleen"], 4, 1, pseudo_path=base / "pseudo" / "ds_a.zarr"
    )
    return {"zarr": [str(a)], "pseudo": [str(base / "pseudo" / "ds_a.zarr")]}


def test_two_gloo_ranks_match_one_process_with_the_combined_batch(stores, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from segvol.finetune.train import finetune
    from segvol.model import build_model, model_config_from_settings

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(1)
    single = tmp_path / "single" / "model.safetensors"
    finetune(
        stores["zarr"],
        stores["pseudo"],
        str(single),
        settings(steps=STEPS, batch_size=2, lr=LR, checkpoint_every=0),
        TEST_MODEL,
        seed=9,
        threads=1,
        device="cpu",
    )

    distributed = tmp_path / "ddp" / "model.safetensors"
    context = torch.multiprocessing.start_processes(
        _rank_main, args=(2, _free_port(), stores, str(distributed)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP run did not finish within 240 s")

    torch.manual_seed(9)
    initial = build_model(model_config_from_settings(TEST_MODEL)).state_dict()
    a, b = load_file(str(single)), load_file(str(distributed))
    assert a.keys() == b.keys()
    moved, mismatched, total = 0, 0, 0
    for key in a:
        reference = initial.get(key)
        assert (a[key] - b[key]).abs().max() <= 2.05 * LR * STEPS, key  # Adam moves at most ~lr per step
        if reference is not None and a[key].is_floating_point():
            delta_single, delta_ddp = a[key] - reference, b[key] - reference
            moved += int((delta_single.abs() > 0.1 * LR).sum())
            mismatched += int(((delta_single - delta_ddp).abs() > 0.01 * LR).sum())
            total += a[key].numel()
    assert moved > 0.5 * total  # the run really trained
    assert mismatched <= 1e-3 * total, (mismatched, total)
