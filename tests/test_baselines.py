"""Baselines behind one interface: corrective clicks, slice-wise SAM with random weights, reasons."""

import numpy as np
import pytest
import torch

from segvol.evaluate.baselines import build_baselines
from segvol.evaluate.baselines.clicks import click_correction, next_click
from segvol.evaluate.baselines.slicewise import SliceWiseMethod
from segvol.evaluate.baselines.transformers_sam import TransformersSam
from segvol.evaluate.metrics import dice
from segvol.evaluate.prompts import prompt_from_truth


def disc(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_next_click_targets_the_largest_error():
    truth = np.zeros((20, 20), bool)
    truth[2:12, 2:12] = True
    prediction = np.zeros_like(truth)
    prediction[2:12, 2:5] = True  # misses 70 pixels
    prediction[15:18, 15:18] = True  # 9 false positives
    coordinate, label = next_click(prediction, truth)
    assert label == 1 and truth[tuple(coordinate)] and not prediction[tuple(coordinate)]
    assert next_click(truth, truth) is None


def test_click_correction_adds_clicks_until_five():
    """A predictor painting discs at positive clicks and erasing at negative ones improves."""
    truth = disc((32, 32), (10, 10), 4) | disc((32, 32), (24, 22), 4)

    calls = []

    def predict(points, labels, previous):
        calls.append(len(points))
        logits = -np.ones(truth.shape)
        for point, label in zip(points, labels):
            logits[disc(truth.shape, point, 4)] = 1 if label == 1 else -1
        return logits

    mask, clicks = click_correction(predict, truth, np.array([10, 10]), clicks=5)
    assert calls[0] == 1 and calls == sorted(calls) and len(clicks) <= 5
    assert clicks[1][1] == 1 and truth[tuple(clicks[1][0])]  # second click fixes the missed blob
    assert dice(mask, truth) > dice(predict(np.array([[10, 10]]), np.array([1]), None) > 0, truth)


@pytest.fixture(scope="module")
def tiny_sam():
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            window_size=2,
            global_attn_indexes=[0],
            num_pos_feats=8,
            mlp_dim=32,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    from transformers import SamModel

    return SamModel(config).eval()


@pytest.mark.parametrize("style,prompt", [("sam", "point"), ("sam", "box"), ("medsam", "box")])
def test_slice_wise_sam_shapes(tiny_sam, style, prompt):
    torch.set_num_threads(1)
    volume = np.random.default_rng(0).random((5, 40, 30)).astype(np.float32)
    truth = np.zeros(volume.shape, bool)
    truth[1:4, 10:20, 8:16] = True
    method = SliceWiseMethod("SAM", TransformersSam(tiny_sam, style=style), prompt)
    ground = prompt_from_truth(prompt, "liver", truth, np.random.default_rng(0))
    mask = method.predict(volume, (1, 1, 1), ground)
    assert mask.shape == volume.shape and mask.dtype == bool
    assert not mask[0].any() and not mask[4].any()  # slices without the category are not prompted


def test_methods_without_checkpoint_do_not_run():
    runs, reasons = build_baselines(["SegVol", "SAM", "MedSAM", "SAM-Med2D", "SAM-Med3D"], {})
    assert runs == []
    assert set(reasons) == {"SAM (point)", "SAM (box)", "MedSAM", "SAM-Med2D", "SAM-Med3D"}
    assert set(reasons.values()) == {"not run: no checkpoint"}
    with pytest.raises(ValueError, match="unknown method"):
        build_baselines(["SAMv9"], {})
    for method in ("MedSAM", "SAM-Med2D", "SAM-Med3D"):
        with pytest.raises(FileNotFoundError, match="nowhere.pth"):
            build_baselines([method], {method: "/nowhere.pth"})


ORIGINAL_SAM_KEYS = [  # key names of segment-anything's sam_vit_b checkpoint (one of each kind)
    "image_encoder.pos_embed",
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.blocks.0.norm1.weight",
    "image_encoder.blocks.0.attn.qkv.weight",
    "image_encoder.blocks.0.attn.rel_pos_h",
    "image_encoder.blocks.0.attn.proj.bias",
    "image_encoder.blocks.0.norm2.bias",
    "image_encoder.blocks.0.mlp.lin1.weight",
    "image_encoder.blocks.0.mlp.lin2.bias",
    "image_encoder.neck.0.weight",
    "image_encoder.neck.1.weight",
    "image_encoder.neck.2.weight",
    "image_encoder.neck.3.bias",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "prompt_encoder.point_embeddings.3.weight",
    "prompt_encoder.not_a_point_embed.weight",
    "prompt_encoder.no_mask_embed.weight",
    "prompt_encoder.mask_downscaling.0.weight",
    "prompt_encoder.mask_downscaling.1.bias",
    "prompt_encoder.mask_downscaling.6.weight",
    "mask_decoder.iou_token.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
    "mask_decoder.transformer.layers.0.norm1.weight",
    "mask_decoder.transformer.layers.0.mlp.lin1.weight",
    "mask_decoder.transformer.layers.0.cross_attn_image_to_token.out_proj.bias",
    "mask_decoder.transformer.final_attn_token_to_image.k_proj.weight",
    "mask_decoder.transformer.norm_final_attn.weight",
    "mask_decoder.output_upscaling.0.weight",
    "mask_decoder.output_upscaling.1.weight",
    "mask_decoder.output_upscaling.3.bias",
    "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
    "mask_decoder.output_hypernetworks_mlps.3.layers.1.bias",
    "mask_decoder.output_hypernetworks_mlps.2.layers.2.weight",
    "mask_decoder.iou_prediction_head.layers.0.weight",
    "mask_decoder.iou_prediction_head.layers.2.bias",
]


def test_original_sam_keys_map_onto_transformers(tiny_sam):
    from segvol.evaluate.baselines.transformers_sam import _rename_original_sam

    renamed = _rename_original_sam({key: None for key in ORIGINAL_SAM_KEYS + ["pixel_mean"]})
    known = set(tiny_sam.state_dict())
    assert not set(renamed) - known, sorted(set(renamed) - known)
    assert len(renamed) == len(ORIGINAL_SAM_KEYS) + 1  # + the prompt encoder's copy of the Fourier matrix


def test_original_sam_vit_b_file_loads_into_transformers(tmp_path):
    """A file in segment-anything's layout (here written from our SAM modules, random weights) loads
    strictly as SAM ViT-B through `load_sam` (outputs of the two implementations are compared on a
    small configuration in test_sam_baselines.py)."""
    from segvol.evaluate.baselines.sam import build
    from segvol.evaluate.baselines.transformers_sam import load_sam

    torch.manual_seed(0)
    original = build("sam-med2d", img_size=1024, adapter=False)  # = SAM ViT-B without adapters
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(original.state_dict(), path)
    loaded = load_sam(path)
    assert torch.equal(loaded.vision_encoder.pos_embed, original.image_encoder.pos_embed)
    assert torch.equal(
        loaded.vision_encoder.layers[11].attn.rel_pos_h, original.image_encoder.blocks[11].attn.rel_pos_h
    )
    assert torch.equal(
        loaded.mask_decoder.iou_prediction_head.proj_out.weight,
        original.mask_decoder.iou_prediction_head.layers[2].weight,
    )
