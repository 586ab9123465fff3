"""SegVol network (`tiny` preset): shapes, prompt semantics, shared-embedding decoding, bad input."""

from __future__ import annotations

import pytest
import torch

from segvol.model import build_model, model_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(model_config("tiny")).eval()
    # A freshly initialised decoder has tiny, near-constant outputs; widen the prompt tokens so
    # that prompt changes produce clearly measurable output changes.
    with torch.no_grad():
        for embedding in model.prompt_encoder.point_embeddings:
            embedding.weight.normal_(0, 1)
    return model


def _image(model, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *model.config.spatial_size, generator=generator)


def test_forward_shapes_and_grid(tiny):
    cfg = tiny.config
    image = _image(tiny, batch=2)
    with torch.no_grad():
        embedding = tiny.encode_image(image)
        assert embedding.shape == (2, cfg.hidden_size, *cfg.grid_size)
        text = tiny.encode_text(["liver", "spleen"])
        assert text.shape == (2, cfg.hidden_size)
        boxes = torch.tensor([[2.0, 3, 4, 20, 30, 40], [0, 0, 0, 31, 63, 63]])
        points = (torch.tensor([[[5.0, 6, 7], [9, 9, 9]]] * 2), torch.tensor([[1, 0]] * 2))
        for prompts in (
            dict(text=text),
            dict(boxes=boxes),
            dict(points=points),
            dict(text=text, boxes=boxes, points=points),
        ):
            logits = tiny.decode(embedding, **prompts)
            assert logits.shape == (2, 1, *cfg.spatial_size)
            assert torch.isfinite(logits).all()
        forward = tiny(image, text=["liver", "spleen"], boxes=boxes)
        assert forward.shape == (2, 1, *cfg.spatial_size)


def test_text_changes_output(tiny):
    image = _image(tiny)
    boxes = torch.tensor([[4.0, 10, 10, 20, 40, 40]])
    with torch.no_grad():
        embedding = tiny.encode_image(image)
        liver = tiny.decode(embedding, text=["liver"], boxes=boxes)
        kidney = tiny.decode(embedding, text=["left kidney"], boxes=boxes)
        none = tiny.decode(embedding, boxes=boxes)
    assert (liver - kidney).abs().max() > 1e-4
    assert (liver - none).abs().max() > 1e-4


def test_ignored_points_do_not_depend_on_coordinates(tiny):
    image = _image(tiny)
    labels = torch.tensor([[1, -1, -1]])
    first = torch.tensor([[[10.0, 20, 30], [1, 2, 3], [30, 60, 60]]])
    second = torch.tensor([[[10.0, 20, 30], [25, 5, 50], [0, 0, 0]]])
    moved_positive = torch.tensor([[[2.0, 50, 5], [1, 2, 3], [30, 60, 60]]])
    with torch.no_grad():
        embedding = tiny.encode_image(image)
        a = tiny.decode(embedding, points=(first, labels))
        b = tiny.decode(embedding, points=(second, labels))
        c = tiny.decode(embedding, points=(moved_positive, labels))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - c).abs().max() > 1e-4  # a point that counts does move the output


def test_shared_embedding_decode_equals_separate_forwards(tiny):
    image = _image(tiny, seed=3)
    names = ["liver", "spleen", "aorta"]
    boxes = torch.tensor([[2.0, 3, 4, 20, 30, 40], [5, 5, 5, 25, 60, 50], [0, 10, 20, 31, 40, 60]])
    coords = torch.tensor([[[5.0, 6, 7]], [[10, 30, 30]], [[20, 40, 12]]])
    labels = torch.tensor([[1], [0], [1]])
    with torch.no_grad():
        embedding = tiny.encode_image(image)
        text = tiny.encode_text(names)
        shared = tiny.decode(embedding.expand(3, -1, -1, -1, -1), text=text, boxes=boxes, points=(coords, labels))
        broadcast = tiny.decode(embedding, text=text, boxes=boxes, points=(coords, labels))
        separate = torch.cat(
            [
                tiny(image, text=[names[k]], boxes=boxes[k : k + 1], points=(coords[k : k + 1], labels[k : k + 1]))
                for k in range(3)
            ]
        )
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(broadcast, separate, rtol=1e-4, atol=1e-4)
    assert (separate[0] - separate[1]).abs().max() > 1e-4  # the prompts really differ


def test_gradients_reach_trainable_parts_but_not_the_frozen_text_backbone(tiny):
    tiny.zero_grad(set_to_none=True)
    image = _image(tiny)
    logits = tiny(image, text=["liver"], boxes=torch.tensor([[2.0, 3, 4, 20, 30, 40]]))
    logits.mean().backward()
    assert tiny.image_encoder.patch_embedding.position_embeddings.grad is not None
    assert tiny.text_encoder.dim_align.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in tiny.text_encoder.language_model.parameters())
    tiny.zero_grad(set_to_none=True)


def test_bad_input_raises_clear_errors(tiny):
    cfg = tiny.config
    image = _image(tiny)
    with pytest.raises(ValueError, match="expects a"):
        tiny.encode_image(torch.rand(1, *cfg.spatial_size))  # 4-D
    with pytest.raises(ValueError, match="expects a"):
        tiny.encode_image(torch.rand(1, 1, 16, 16, 16))
    nan_image = image.clone()
    nan_image[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny.encode_image(nan_image)
    with torch.no_grad():
        embedding = tiny.encode_image(image)
    with pytest.raises(ValueError, match="at least one prompt"):
        tiny.decode(embedding)
    with pytest.raises(ValueError, match="point labels"):
        tiny.decode(embedding, points=(torch.zeros(1, 1, 3), torch.tensor([[2]])))
    with pytest.raises(ValueError, match="boxes must be"):
        tiny.decode(embedding, boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="batch"):
        tiny.decode(embedding.expand(2, -1, -1, -1, -1), boxes=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="category name"):
        tiny.encode_text([""])
    with pytest.raises(ValueError, match="list of category names"):
        tiny.encode_text("liver")


def test_model_config_presets_and_overrides():
    base = model_config("base")
    assert base.grid_size == (8, 16, 16) and base.coordinate_convention == "released"
    assert base.text_encoder == "clip"
    wide = model_config("tiny", num_layers=6)
    assert wide.num_layers == 6 and wide.spatial_size == model_config("tiny").spatial_size
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        model_config("tiny", depth=3)
    with pytest.raises(ValueError, match="divisible"):
        model_config("tiny", patch_size=(5, 8, 8))
    assert type(base).from_dict(base.to_dict()) == base


def test_text_encoder_from_a_local_model_directory_and_bad_sources(tiny):
    from segvol.model.text_encoder import build_text_encoder, minilm_directory

    folder = minilm_directory()
    from_path = build_text_encoder(str(folder), out_dim=tiny.config.hidden_size)
    assert from_path.kind == "hf"
    names = ["liver", "right kidney"]
    torch.testing.assert_close(from_path.pooled_features(names), tiny.text_encoder.pooled_features(names))
    # Mean pooling over real tokens: recompute by hand for one name.
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(folder))(["A computerized tomography of a liver."], return_tensors="pt")
    with torch.no_grad():
        hidden = from_path.language_model(**tokens).last_hidden_state
    torch.testing.assert_close(from_path.pooled_features(["liver"])[0], hidden[0].mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not 'clip', 'minilm'"):
        build_text_encoder("/nonexistent/model-dir", out_dim=8)


def test_text_cached_under_inference_mode_still_trains_dim_align(tiny):
    tiny.text_encoder.clear_cache()
    with torch.inference_mode():
        frozen = tiny.encode_text(["gallbladder"])
    tiny.zero_grad(set_to_none=True)
    trained = tiny.encode_text(["gallbladder"])
    trained.sum().backward()
    torch.testing.assert_close(trained.detach(), frozen)
    assert tiny.text_encoder.dim_align.weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_dense_box_prompt_coverage_is_the_share_of_each_patch_inside_the_box():
    from segvol.model import build_model, model_config

    model = build_model(model_config("tiny"))
    encoder = model.prompt_encoder
    patch = encoder.patch_size
    # inclusive box over exactly the first token cell, and one over half a cell along w
    exact = torch.tensor([[0.0, 0, 0, patch[0] - 1, patch[1] - 1, patch[2] - 1]])
    half = torch.tensor([[0.0, 0, 0, patch[0] - 1, patch[1] - 1, patch[2] // 2 - 1]])
    empty = torch.full((1, 6), -1.0)
    expected = torch.zeros(encoder.image_embedding_size)
    expected[0, 0, 0] = 1.0
    torch.testing.assert_close(encoder.box_coverage(exact)[0], expected)
    torch.testing.assert_close(encoder.box_coverage(half)[0], expected * 0.5)
    assert encoder.box_coverage(empty).abs().sum() == 0
    # the paper model keeps the released key list: no dense box embedding there
    assert not model_config("base").dense_box_prompt


def test_dense_positional_encoding_is_computed_once_per_value_of_its_matrix(tiny):
    encoder = tiny.prompt_encoder
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first  # kept between decodes
    assert torch.equal(first, encoder.pe_layer.dense(encoder.image_embedding_size).unsqueeze(0))
    matrix = encoder.pe_layer.positional_encoding_gaussian_matrix
    saved = matrix.clone()
    with torch.no_grad():
        matrix.mul_(2.0)  # new weights (as a checkpoint load copies them in place)
    try:
        fresh = encoder.get_dense_pe()
        assert not torch.equal(fresh, first)
        assert torch.equal(fresh, encoder.pe_layer.dense(encoder.image_embedding_size).unsqueeze(0))
    finally:
        with torch.no_grad():
            matrix.copy_(saved)
    assert torch.equal(encoder.get_dense_pe(), first)


def test_patch_transpose_convolution_equals_the_convolution_it_replaces(tiny):
    from segvol.model.mask_decoder import PatchConvTranspose3d

    assert isinstance(tiny.mask_decoder.output_upscaling[3], PatchConvTranspose3d)
    torch.manual_seed(1)
    patch = PatchConvTranspose3d(12, 5)
    plain = torch.nn.ConvTranspose3d(12, 5, kernel_size=2, stride=2)
    plain.load_state_dict(patch.state_dict())  # same keys and shapes as the released layer
    x = torch.randn(2, 12, 3, 4, 5, requires_grad=True)
    with torch.no_grad():  # inference: the matrix product, bit for bit the convolution's numbers
        ours, theirs = patch(x), plain(x)
    assert ours.shape == (2, 5, 6, 8, 10)
    assert torch.equal(ours, theirs)
    # Training: the convolution itself, so weight gradients (and every trained model) stay exact.
    ours, theirs = patch(x), plain(x)
    upstream = torch.randn(ours.shape)
    grads = torch.autograd.grad((ours * upstream).sum(), [x, patch.weight, patch.bias])
    expected = torch.autograd.grad((theirs * upstream).sum(), [x, plain.weight, plain.bias])
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)
    half = x.detach().to(torch.bfloat16)  # not float32: the plain convolution
    torch.testing.assert_close(patch.to(torch.bfloat16)(half), plain.to(torch.bfloat16)(half))


def test_image_skip_packs_mask_resolution_features_into_the_token_of_their_cell():
    """The packed skip channels of token (i, j, k) hold exactly the 4x4x4 mask cells it upsamples to."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny", image_skip_channels=2)).eval()
    cfg, skip = model.config, model.image_skip
    assert cfg.embedding_channels == cfg.hidden_size + 64 * 2
    image = _image(model)
    with torch.no_grad():
        embedding = model.encode_image(image)
        assert embedding.shape == (1, cfg.embedding_channels, *cfg.grid_size)
        features = skip.unpack(embedding[:, cfg.hidden_size :])
        assert features.shape == (1, 2, *cfg.low_res_size)
        pooled = torch.nn.functional.avg_pool3d(image, skip.pool)
        torch.testing.assert_close(features, skip.conv2(torch.nn.functional.gelu(skip.conv1(pooled))))
        # a token's own channels are its cell's features: cell (1, 2, 3) of the mask grid at the
        # token grid's position (1, 2, 3) (a wrong packing order puts other voxels there)
        cell = features[0, :, 4:8, 8:12, 12:16]
        packed = embedding[0, cfg.hidden_size :, 1, 2, 3].reshape(2, 4, 4, 4)
        torch.testing.assert_close(packed, cell)
        # and the decoder reads it: changing only the skip channels changes the logits
        boxes = torch.tensor([[2.0, 3, 4, 20, 30, 40]])
        before = model.decode(embedding, boxes=boxes)
        changed = embedding.clone()
        changed[:, cfg.hidden_size :] += 1.0
        assert (model.decode(changed, boxes=boxes) - before).abs().max() > 0
    # off in the paper's network and the plain tiny preset: the released key list is unchanged
    for preset in ("base", "tiny"):
        assert model_config(preset).image_skip_channels == 0
    assert not any("skip" in name for name in build_model(model_config("tiny")).state_dict())


def test_image_skip_model_round_trips_through_its_checkpoint(tmp_path):
    from segvol.model import checkpoint

    torch.manual_seed(0)
    model = build_model(model_config("tiny", image_skip_channels=2)).eval()
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "model.safetensors"))
    assert loaded.config.image_skip_channels == 2
    image = _image(model)
    boxes = torch.tensor([[2.0, 3, 4, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, boxes=boxes), model(image, boxes=boxes), rtol=0, atol=0)
