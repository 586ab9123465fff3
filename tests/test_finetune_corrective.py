"""Corrective-click training (`finetune.corrective_clicks`, `finetune.mask_prompt`): the protocol's clicks,
rounds, the mask branch trained, and released-style training left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segvol.finetune.corrective import click_rounds, decode_with_clicks, place_clicks
from segvol.infer.clicks import corrective_click
from tests.test_finetune import TEST_MODEL, make_store, settings

torch.set_num_threads(1)


def _ball(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def test_clicks_are_the_protocols_deepest_voxel_of_the_largest_error():
    from segvol.evaluate import interactive

    assert interactive.challenge_click is corrective_click  # one placement for training and evaluation
    truth = np.zeros((2, 12, 20, 20), dtype=np.float32)
    truth[0][_ball((12, 20, 20), (6, 10, 10), (4, 6, 6))] = 1
    truth[1][_ball((12, 20, 20), (6, 10, 10), (3, 3, 3))] = 1
    logits = torch.full(truth.shape, -5.0)
    logits[1] = torch.where(torch.from_numpy(_ball((12, 20, 20), (6, 10, 10), (5, 8, 8))), 5.0, -5.0)
    coords, labels = place_clicks(logits, torch.from_numpy(truth))
    assert coords.shape == (2, 1, 3) and labels.shape == (2, 1)
    assert coords[0, 0].tolist() == [6, 10, 10] and int(labels[0, 0]) == 1  # a miss: positive, in its middle
    assert int(labels[1, 0]) == 0  # over-segmented: a negative click in the false positives
    assert truth[1][tuple(int(v) for v in coords[1, 0])] == 0 and logits[1][tuple(coords[1, 0].long())] > 0
    perfect = torch.from_numpy(truth * 10 - 5)
    coords, labels = place_clicks(perfect, torch.from_numpy(truth))
    assert labels.tolist() == [[-1], [-1]] and coords.eq(-1).all()  # nothing wrong: an ignored point


def test_rounds_are_drawn_per_step_from_seed_and_step_alone():
    drawn = [click_rounds(7, step, 3) for step in range(200)]
    assert set(drawn) == {0, 1, 2, 3}
    assert drawn == [click_rounds(7, step, 3) for step in range(200)]
    assert all(click_rounds(7, step, 0) == 0 for step in range(20))


class _Recorder(torch.nn.Module):
    """Decodes a ball around the first positive point; records each call's points and mask prompt."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def decode(self, embedding, text=None, boxes=None, points=None, mask_prompt=None):
        self.calls.append((None if points is None else points[1].clone(), mask_prompt))
        shape = embedding.shape[0], 1, 8, 16, 16
        return self.scale * torch.full(shape, -3.0)


def test_each_round_adds_one_click_and_passes_the_previous_logits():
    model = _Recorder()
    target = torch.zeros(2, 8, 16, 16)
    target[:, 2:6, 4:12, 4:12] = 1
    points = (torch.zeros(2, 3, 3), torch.tensor([[1, -1, -1], [1, 0, -1]]))
    logits = decode_with_clicks(model, torch.zeros(2, 4), None, None, points, target, rounds=3, mask_prompt=True)
    assert logits.requires_grad
    assert [labels.shape[1] for labels, _ in model.calls] == [3, 4, 5, 6]
    assert model.calls[0][1] is None and all(mask is not None for _, mask in model.calls[1:])
    assert model.calls[-1][0][:, 3:].eq(1).all()  # every click positive: the object was missed
    model.calls.clear()
    decode_with_clicks(model, torch.zeros(2, 4), None, None, None, target, rounds=2, mask_prompt=False)
    assert [labels.shape[1] for labels, _ in model.calls[1:]] == [1, 2]  # clicks alone become the points
    assert all(mask is None for _, mask in model.calls)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("corrective")
    path = make_store(base / "zarr" / "ds.zarr", "ds", ["liver"], 3, 4, pseudo_path=base / "pseudo" / "ds.zarr")
    return str(path), str(base / "pseudo" / "ds.zarr")


def test_corrective_training_trains_the_mask_branch_into_its_own_file(store, tmp_path):
    from safetensors.torch import load_file

    from segvol.finetune.train import finetune
    from segvol.model import checkpoint
    from segvol.model.mask_prompt import mask_prompt_is_trained, mask_prompt_path

    out = tmp_path / "corrective" / "model.safetensors"
    finetune([store[0]], [store[1]], str(out), settings(steps=3, corrective_clicks=2, mask_prompt=True, lr=1e-2),
             TEST_MODEL, seed=3, threads=1, device="cpu")  # fmt: skip
    assert mask_prompt_path(out).is_file()
    assert not any(key.startswith("mask_prompt_encoder.") for key in load_file(str(out)))
    assert mask_prompt_is_trained(checkpoint.load(out))


def test_released_style_training_is_unchanged_by_the_new_settings(store, tmp_path):
    from safetensors.torch import load_file

    from segvol.finetune.train import finetune

    written = []
    for name, extra in (("default", {}), ("off", {"corrective_clicks": 0, "mask_prompt": False})):
        out = tmp_path / name / "model.safetensors"
        finetune([store[0]], [store[1]], str(out), settings(steps=2, **extra), TEST_MODEL, seed=3, threads=1,
                 device="cpu")  # fmt: skip
        written.append(load_file(str(out)))
        assert not (out.parent / "model.mask_prompt.safetensors").exists()
    assert written[0].keys() == written[1].keys()
    for key in written[0]:
        assert torch.equal(written[0][key], written[1][key]), key
