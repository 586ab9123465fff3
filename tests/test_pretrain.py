"""SimMIM pretraining: masks, pixel shuffle, masked L1, a short run, resume, encoder hand-over."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from segvol.model.image_encoder import PatchFlatten
from segvol.pretrain.simmim import SimMIM, patchify_mask, random_patch_mask, unpatchify
from segvol.settings import stage_settings
from segvol.training.volumes import read_window
from tests.test_finetune import TEST_MODEL, make_store

torch.set_num_threads(1)


def test_mask_hides_the_ratio_in_whole_mask_patches():
    generator = torch.Generator().manual_seed(0)
    mask = random_patch_mask(3, (4, 8, 8), (1, 2, 2), 0.6, generator)
    assert mask.shape == (3, 4, 8, 8)
    coarse = mask[:, :, ::2, ::2]
    assert (coarse.flatten(1).sum(1) == round(0.6 * 4 * 4 * 4)).all()
    # every 2x2 block of tokens is either fully hidden or fully visible
    expanded = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.equal(mask, expanded)
    assert not torch.equal(mask[0], mask[1])


def test_unpatchify_inverts_the_encoder_patch_order():
    patch = (2, 4, 4)
    image = torch.randn(2, 1, 4, 8, 12)
    tokens = PatchFlatten(patch)(image)  # (B, N, prod(patch))
    grid = (2, 2, 3)
    as_grid = tokens.transpose(1, 2).reshape(2, -1, *grid)
    assert torch.equal(unpatchify(as_grid, patch), image)


def _simmim(seed=0):
    from segvol.pretrain.train import build_encoder

    torch.manual_seed(seed)
    encoder, cfg = build_encoder(TEST_MODEL)
    return SimMIM(encoder, cfg.hidden_size, cfg.spatial_size, cfg.patch_size, mask_patch_size=(4, 16, 16)), cfg


def test_loss_is_l1_on_masked_voxels_only_and_mask_token_is_used():
    simmim, cfg = _simmim()
    image = torch.rand(2, 1, *cfg.spatial_size)
    mask = simmim.random_mask(2, torch.Generator().manual_seed(1))
    loss, reconstruction = simmim(image, mask)
    voxels = patchify_mask(mask, cfg.patch_size)
    expected = (reconstruction - image).abs()[voxels].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # what lies under the mask does not reach the encoder: changing it leaves visible tokens alone
    changed = image.clone()
    changed[voxels] = 0.0
    _, again = simmim(changed, mask)
    torch.testing.assert_close(again, reconstruction)
    # ... while without the mask it does
    _, unmasked = simmim(changed, torch.zeros_like(mask))
    assert not torch.allclose(unmasked, reconstruction)


def test_rejects_mask_patch_not_multiple_of_vit_patch():
    from segvol.pretrain.train import build_encoder

    encoder, cfg = build_encoder(TEST_MODEL)
    with pytest.raises(ValueError, match="multiple"):
        SimMIM(encoder, cfg.hidden_size, cfg.spatial_size, cfg.patch_size, mask_patch_size=(4, 12, 8))


def test_read_window_pads_and_matches_numpy(tmp_path):
    import zarr

    data = np.arange(6 * 7 * 9, dtype=np.float32).reshape(6, 7, 9)
    array = zarr.open_group(str(tmp_path / "s.zarr"), mode="w").create_array("a", data=data, chunks=(2, 3, 3))
    window = read_window(array, (-2, 3, 5), (5, 4, 6))
    padded = np.zeros((10, 11, 13), dtype=np.float32)
    padded[2:8, 2:9, 2:11] = data  # pad 2 on every side
    np.testing.assert_array_equal(window, padded[0:5, 5:9, 7:13])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("pretrain")
    return str(make_store(base / "ct.zarr", "ct", ["liver"], 3, 4))


def _losses(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(handle)}


def test_pretrain_lowers_loss_resumes_exactly_and_hands_over_the_encoder(store, tmp_path):
    from safetensors.torch import load_file

    from segvol.finetune.train import load_encoder_weights
    from segvol.model import build_model, model_config_from_settings
    from segvol.pretrain.train import pretrain

    params = stage_settings("pretrain", {"steps": 12, "batch_size": 2, "lr": 3e-3, "checkpoint_every": 4})
    whole = tmp_path / "a" / "encoder.safetensors"
    pretrain([store], str(whole), params, TEST_MODEL, seed=5, threads=1, device="cpu")
    losses = _losses(whole.with_name("encoder.metrics.csv"))
    assert np.mean([losses[s] for s in (10, 11, 12)]) < 0.7 * np.mean([losses[s] for s in (1, 2, 3)])

    parted = tmp_path / "b" / "encoder.safetensors"
    pretrain([store], str(parted), params, TEST_MODEL, seed=5, threads=1, device="cpu", stop_after=6)
    assert not parted.exists()
    pretrain([store], str(parted), params, TEST_MODEL, seed=5, threads=1, device="cpu")
    resumed = _losses(parted.with_name("encoder.metrics.csv"))
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-5), step

    tensors = load_file(str(whole))
    assert tensors and all(k.startswith("image_encoder.") for k in tensors)
    model = build_model(model_config_from_settings(TEST_MODEL))
    assert load_encoder_weights(model, whole) == len(tensors)
    for key, value in tensors.items():
        torch.testing.assert_close(model.state_dict()[key], value)
