"""Fidelity of the components to the released SegVol (docs/model.md), checked independently.

The ViT is compared with MONAI's own ViT (the library SegVol used); the prompt encoder with the
documented formulas written out in numpy; the decoder's text branch and output upsampling with
re-computations from captured intermediates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segvol.model import build_model, checkpoint, model_config
from segvol.model.image_encoder import ImageEncoderViT3D, PatchEmbedding
from segvol.model.prompt_encoder import PromptEncoder3D

torch.set_num_threads(1)


def test_vit_matches_monai_vit():
    pytest.importorskip("einops")
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    kwargs = dict(
        in_channels=2, img_size=(8, 32, 16), patch_size=(2, 8, 4), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4
    )
    reference = monai_nets.ViT(
        proj_type="perceptron", classification=False, dropout_rate=0.0, qkv_bias=False, **kwargs
    ).eval()
    ours = ImageEncoderViT3D(
        spatial_size=kwargs["img_size"],
        patch_size=kwargs["patch_size"],
        in_channels=2,
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=4,
    ).eval()
    # Recent MONAI adds unused cross-attention norms: a documented, tolerated difference.
    checkpoint.load_state_dict(ours, reference.state_dict(), "monai-vit")
    image = torch.randn(3, 2, 8, 32, 16)
    with torch.no_grad():
        tokens, _ = reference(image)
        grid = ours(image)
    assert grid.shape == (3, 32, 4, 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens, rtol=1e-5, atol=1e-5)


def test_patch_embedding_is_a_strided_convolution_with_channel_last_patch_vectors():
    torch.manual_seed(1)
    embed = PatchEmbedding(in_channels=2, spatial_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=12)
    image = torch.randn(2, 2, 8, 16, 16)
    linear = embed.patch_embeddings[1]
    # Patch vectors are flattened (p_d, p_h, p_w, c): reshape the Linear weight accordingly.
    kernel = linear.weight.reshape(12, 4, 8, 8, 2).permute(0, 4, 1, 2, 3)
    expected = F.conv3d(image, kernel, linear.bias, stride=(4, 8, 8)).flatten(2).transpose(1, 2)
    expected = expected + embed.position_embeddings
    torch.testing.assert_close(embed(image), expected, rtol=1e-5, atol=1e-5)


def _numpy_pe(gaussian: np.ndarray, coords: np.ndarray) -> np.ndarray:
    projected = 2 * math.pi * ((2 * coords - 1) @ gaussian)
    return np.concatenate([np.sin(projected), np.cos(projected)], axis=-1)


@pytest.mark.parametrize("convention", ["released", "dhw"])
def test_positional_encoding_follows_the_documented_conventions(convention):
    torch.manual_seed(2)
    input_size, grid = (32, 256, 256), (8, 16, 16)
    encoder = PromptEncoder3D(64, grid, input_size, coordinate_convention=convention)
    gaussian = encoder.pe_layer.positional_encoding_gaussian_matrix.numpy().astype(np.float64)

    dense = encoder.get_dense_pe()[0].numpy()
    for i, j, k in [(0, 0, 0), (7, 3, 11), (2, 15, 5)]:
        if convention == "released":
            coord = np.array([(j + 0.5) / 16, (i + 0.5) / 8, (k + 0.5) / 16])
        else:
            coord = np.array([(i + 0.5) / 8, (j + 0.5) / 16, (k + 0.5) / 16])
        np.testing.assert_allclose(dense[:, i, j, k], _numpy_pe(gaussian, coord), atol=1e-4)

    point = np.array([5.0, 100.0, 30.0])  # (d, h, w) voxel index
    sparse, _ = encoder((torch.from_numpy(point[None, None]), torch.tensor([[1]])), None, None, 1)
    shifted = point + 0.5
    if convention == "released":
        coord = np.array([shifted[0] / 256, shifted[1] / 32, shifted[2] / 256])  # the released quirk
    else:
        coord = shifted / np.array(input_size)
    expected = _numpy_pe(gaussian, coord) + encoder.point_embeddings[1].weight.detach().numpy()[0]
    np.testing.assert_allclose(sparse[0, 0].detach().numpy(), expected, atol=1e-4)


def test_sparse_token_order_labels_padding_and_box_corners():
    torch.manual_seed(3)
    encoder = PromptEncoder3D(16, (2, 4, 4), (8, 32, 32), coordinate_convention="released")
    pe = encoder.pe_layer
    coords = torch.tensor([[[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]])
    labels = torch.tensor([[1, 0, -1]])
    box = torch.tensor([[0.0, 1, 2, 6, 20, 30]])
    text = torch.randn(1, 16)
    with torch.no_grad():
        points_only, dense = encoder((coords, labels), None, None, 1)
        everything, _ = encoder((coords, labels), box, text, 1)
        point_pe = pe.sparse(coords + 0.5, (8, 32, 32))
        corner_pe = pe.sparse(box.reshape(1, 2, 3) + 0.5, (8, 32, 32))
    weights = [e.weight[0].detach() for e in encoder.point_embeddings]
    not_a_point = encoder.not_a_point_embed.weight[0].detach()

    assert points_only.shape == (1, 4, 16)  # 3 points + the padding point (no box)
    assert everything.shape == (1, 6, 16)  # 3 points, 2 corners, text; no padding with a box
    torch.testing.assert_close(points_only[0, 0], point_pe[0, 0] + weights[1])
    torch.testing.assert_close(points_only[0, 1], point_pe[0, 1] + weights[0])
    torch.testing.assert_close(points_only[0, 2], not_a_point)  # coordinates dropped
    torch.testing.assert_close(points_only[0, 3], not_a_point)  # the pad point
    torch.testing.assert_close(everything[0, 3], corner_pe[0, 0] + weights[2])
    torch.testing.assert_close(everything[0, 4], corner_pe[0, 1] + weights[3])
    torch.testing.assert_close(everything[0, 5], text[0])
    assert dense.shape == (1, 16, 2, 4, 4)
    torch.testing.assert_close(dense[0, :, 1, 2, 3], encoder.no_mask_embed.weight[0].detach())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(4)
    return build_model(model_config("tiny")).eval()


def test_text_branch_adds_a_dot_product_with_the_upscaled_features(tiny):
    decoder = tiny.mask_decoder
    captured = {}
    hook = decoder.output_upscaling.register_forward_hook(lambda m, i, o: captured.__setitem__("up", o))
    embedding = torch.randn(1, *decoder.txt_align_upscaled_embedding.weight.shape[1:2], *tiny.config.grid_size)
    sparse, dense = tiny.prompt_encoder(None, torch.tensor([[1.0, 2, 3, 20, 30, 40]]), None, 1)
    text = torch.randn(1, tiny.config.hidden_size)
    with torch.no_grad():
        pe = tiny.prompt_encoder.get_dense_pe()
        without = decoder(embedding, pe, sparse, dense, text_embedding=None)
        upscaled = captured["up"]
        with_text = decoder(embedding, pe, sparse, dense, text_embedding=text)
        similarity = torch.einsum("c,cdhw->dhw", decoder.txt_align_upscaled_embedding(text)[0], upscaled[0])
    hook.remove()
    assert without.shape == (1, 1, *tiny.config.low_res_size)
    torch.testing.assert_close(with_text - without, similarity[None, None], rtol=1e-4, atol=1e-4)


def test_decode_upsamples_low_res_logits_trilinearly(tiny):
    captured = {}
    hook = tiny.mask_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("low", o))
    with torch.no_grad():
        embedding = tiny.encode_image(torch.rand(1, 1, *tiny.config.spatial_size))
        logits = tiny.decode(embedding, boxes=torch.tensor([[1.0, 2, 3, 20, 30, 40]]))
    hook.remove()
    expected = F.interpolate(captured["low"], size=tiny.config.spatial_size, mode="trilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)
