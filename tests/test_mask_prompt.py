"""The 3-D mask-prompt branch: zero-initialised (released outputs bit-identical), its own file, shapes."""

from __future__ import annotations

import pytest
import torch

from segvol.model import build_model, checkpoint, model_config
from segvol.model.checkpoint import load_mask_prompt
from segvol.model.mask_prompt import MASK_LOGIT_LIMIT, attach_mask_prompt, mask_prompt_is_trained, mask_prompt_path

torch.set_num_threads(1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = build_model(model_config("tiny")).eval()
    with torch.no_grad():  # make prompts matter clearly in a fresh decoder
        for embedding in model.prompt_encoder.point_embeddings:
            embedding.weight.normal_(0, 1)
    return model


def train_a_little(branch, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in branch.downscaling[-1].parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 32, 64, 64, generator=generator)
    boxes = torch.tensor([[2, 5, 6, 20, 40, 50], [8, 10, 10, 30, 60, 60]], dtype=torch.float32)
    points = (torch.tensor([[[10.0, 20.0, 30.0]], [[15.0, 33.0, 41.0]]]), torch.tensor([[1], [0]]))
    mask = torch.randn(2, 1, 32, 64, 64, generator=generator) * 30  # beyond the clamp, like stitched logits
    return image, boxes, points, mask


def test_untrained_branch_leaves_decoder_outputs_bit_identical(prompts):
    image, boxes, points, mask = prompts
    model = tiny_model()
    with torch.no_grad():
        embedding = model.encode_image(image)
        released = model.decode(embedding, text=["liver", "spleen"], boxes=boxes, points=points)
        branch = attach_mask_prompt(model)
        assert not branch.trained and not mask_prompt_is_trained(model)
        with_mask = model.decode(embedding, text=["liver", "spleen"], boxes=boxes, points=points, mask_prompt=mask)
        dense = branch(mask)
    assert dense.shape == (2, 128, *model.config.grid_size) and not dense.any()
    assert torch.equal(with_mask, released)
    # trained, the same call does use the mask
    train_a_little(branch)
    assert mask_prompt_is_trained(model)
    with torch.no_grad():
        trained = model.decode(embedding, text=["liver", "spleen"], boxes=boxes, points=points, mask_prompt=mask)
        other = model.decode(embedding, text=["liver", "spleen"], boxes=boxes, points=points, mask_prompt=-mask)
    assert not torch.allclose(trained, released) and not torch.allclose(trained, other)


def test_branch_clamps_logits_and_accepts_a_binary_mask_as_plus_minus_limit():
    model = tiny_model()
    branch = attach_mask_prompt(model)
    train_a_little(branch)
    generator = torch.Generator().manual_seed(5)
    inside = torch.rand(1, 1, 32, 64, 64, generator=generator) > 0.5
    binary = torch.where(inside, MASK_LOGIT_LIMIT, -MASK_LOGIT_LIMIT)
    confident = torch.where(inside, 1e4, -1e4)  # e.g. OUTSIDE_LOGIT of stitched logits
    with torch.no_grad():
        assert torch.equal(branch(binary), branch(confident))
        assert not torch.allclose(branch(binary), branch(binary * 0.5))
        # the low-resolution grid of the decoder is taken as is
        low = torch.nn.functional.interpolate(binary, size=branch.low_res_size, mode="area")
        torch.testing.assert_close(branch(binary), branch(low))


def test_decode_rejects_a_mask_prompt_without_a_branch_or_of_a_wrong_shape(prompts):
    image, boxes, _, mask = prompts
    model = tiny_model()
    with torch.no_grad():
        embedding = model.encode_image(image)
        with pytest.raises(ValueError, match="no mask-prompt branch"):
            model.decode(embedding, boxes=boxes, mask_prompt=mask)
        attach_mask_prompt(model)
        with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
            model.decode(embedding, boxes=boxes, mask_prompt=mask[:, 0])
        with pytest.raises(ValueError, match="batch sizes differ"):
            model.decode(embedding, boxes=boxes, mask_prompt=mask[:1].expand(3, -1, -1, -1, -1))
        # a mask alone is a prompt
        assert model.decode(embedding, mask_prompt=mask).shape == (2, 1, 32, 64, 64)


def test_branch_has_its_own_file_and_the_model_file_keeps_the_released_keys(tmp_path, prompts):
    image, boxes, _, mask = prompts
    plain = tiny_model()
    released_keys = set(plain.state_dict())
    model = tiny_model()
    branch = attach_mask_prompt(model)
    train_a_little(branch)
    path = checkpoint.save(model, tmp_path / "model.safetensors")
    side = mask_prompt_path(path)
    assert side == tmp_path / "model.mask_prompt.safetensors" and side.is_file()
    plain_path = checkpoint.save(plain, tmp_path / "plain.safetensors")
    assert not mask_prompt_path(plain_path).exists()  # no branch, no branch file
    assert set(checkpoint.read_weights(path)) == set(checkpoint.read_weights(plain_path))
    assert not any(key.startswith("mask_prompt_encoder.") for key in released_keys)
    assert set(checkpoint.read_weights(side)) == {"mask_prompt_encoder." + k for k in branch.state_dict()}

    loaded = checkpoint.load(path)
    assert mask_prompt_is_trained(loaded)
    with torch.no_grad():
        embedding = model.encode_image(image[:1])
        torch.testing.assert_close(
            loaded.decode(embedding, boxes=boxes[:1], mask_prompt=mask[:1]),
            model.decode(embedding, boxes=boxes[:1], mask_prompt=mask[:1]),
            rtol=0,
            atol=0,
        )
    # a branch file of another model width is refused by name
    narrow = build_model(model_config("tiny", hidden_size=64))
    with pytest.raises(ValueError, match="model.mask_prompt.safetensors: mask-prompt branch does not fit"):
        load_mask_prompt(narrow, path)
    assert narrow.mask_prompt_encoder is None
    # the model file alone loads as the released network
    side.unlink()
    assert checkpoint.load(path).mask_prompt_encoder is None


def test_untrained_branch_leaves_the_released_base_network_bit_identical(monkeypatch):
    from segvol.model import SegVol, build

    # decode needs the prompt encoder and the mask decoder only: skip initialising 87M encoder weights
    monkeypatch.setattr(build, "build_image_encoder", lambda config: torch.nn.Identity())
    torch.manual_seed(0)
    config = model_config("base")
    model = SegVol(config, *build.build_vision_parts(config), text_encoder=None).eval()
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 768, 8, 16, 16, generator=generator)
    boxes = torch.tensor([[4.0, 30.0, 40.0, 20.0, 200.0, 180.0]])
    points = (torch.tensor([[[12.0, 100.0, 90.0], [6.0, 40.0, 60.0]]]), torch.tensor([[1, 0]]))
    mask = torch.randn(1, 1, 32, 256, 256, generator=generator) * 10
    released_keys = set(model.state_dict())
    with torch.no_grad():
        released = model.decode(embedding, boxes=boxes, points=points)
        attach_mask_prompt(model)
        assert torch.equal(model.decode(embedding, boxes=boxes, points=points, mask_prompt=mask), released)
    assert set(model.state_dict()) - released_keys == {
        "mask_prompt_encoder." + key for key in model.mask_prompt_encoder.state_dict()
    }
