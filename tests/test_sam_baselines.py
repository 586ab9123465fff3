"""SAM-Med2D and SAM-Med3D: architectures with the released parameter names, checkpoint loading,
their preprocessing and click loops (random weights; the real checkpoints are not reachable here)."""

import argparse

import numpy as np
import pytest
import torch

from segvol.evaluate.baselines import build_baselines
from segvol.evaluate.baselines.sam import ARCHITECTURES, PromptableSam, build, load_checkpoint
from segvol.evaluate.baselines.sam.image_encoder import Attention, window_partition, window_unpartition
from segvol.evaluate.baselines.sam_med2d import SamMed2DSegmenter
from segvol.evaluate.baselines.sam_med3d import SamMed3DMethod, paste, prepare
from segvol.evaluate.baselines.slicewise import SliceWiseMethod
from segvol.evaluate.metrics import dice
from segvol.evaluate.prompts import prompt_from_truth

TINY = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=3)
TINY_2D = dict(TINY, img_size=64, prompt_dim=32)
TINY_3D = dict(TINY, img_size=32, prompt_dim=48)


def randomized(model):
    """Every parameter random, so that zero-initialised tables cannot hide a wrong index."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


@pytest.mark.parametrize(
    "name,millions,shapes",
    [
        # Published sizes: SAM-Med2D 271M parameters, SAM-Med3D 100.5M (their papers).
        (
            "sam-med2d",
            271.2,
            {
                "image_encoder.pos_embed": (1, 16, 16, 768),
                "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # windowed block: 14-wide windows
                "image_encoder.blocks.2.attn.rel_pos_w": (31, 64),  # global block over the 16 x 16 grid
                "image_encoder.blocks.11.Adapter.spatial.2.weight": (768, 768, 4, 4),
                "image_encoder.blocks.0.Adapter.channel.0.weight": (192, 768),
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
                "prompt_encoder.point_embeddings.3.weight": (1, 256),
                "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
            },
        ),
        (
            "sam-med3d",
            100.5,
            {
                "image_encoder.pos_embed": (1, 8, 8, 8, 768),
                "image_encoder.patch_embed.proj.weight": (768, 1, 16, 16, 16),
                "image_encoder.blocks.0.attn.rel_pos_d": (27, 64),
                "image_encoder.blocks.5.attn.rel_pos_d": (15, 64),
                "image_encoder.neck.0.weight": (384, 768, 1, 1, 1),
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, 128),
                "prompt_encoder.point_embeddings.1.weight": (1, 384),
                "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2, 2),
                "mask_decoder.output_upscaling.3.weight": (96, 48, 2, 2, 2),
                "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
            },
        ),
    ],
)
def test_architectures_match_the_releases(name, millions, shapes):
    with torch.device("meta"):
        model = build(name)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "prompt_encoder.point_embeddings.2.weight" not in state or name == "sam-med2d"  # 3-D: no box kinds


def test_2d_sam_equals_transformers_sam():
    """Without adapters our 2-D model is SAM: it must match transformers' SamModel given the same weights."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    from segvol.evaluate.baselines.transformers_sam import _rename_original_sam

    ours = randomized(build("sam-med2d", **dict(TINY_2D, adapter=False)))
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            window_size=3,
            global_attn_indexes=[1],
            num_pos_feats=16,
            mlp_dim=128,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=64, patch_size=16, mask_input_channels=16
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8, iou_head_hidden_dim=256
        ),
    )
    reference = SamModel(config).eval()
    reference.load_state_dict(_rename_original_sam(ours.state_dict()), strict=True)
    image = torch.randn(1, 3, 64, 64)
    points, labels = torch.tensor([[[10.0, 20.0], [40.0, 33.0]]]), torch.tensor([[1, 0]])
    box, mask = torch.tensor([[5.0, 6.0, 50.0, 40.0]]), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        embedding = ours.encode(image)
        torch.testing.assert_close(embedding, reference.get_image_embeddings(image), atol=1e-5, rtol=1e-4)
        masks, iou = ours.decode(embedding, points, labels, multimask=True)
        expected = reference(
            image_embeddings=embedding,
            input_points=points[:, None],
            input_labels=labels[:, None],
            multimask_output=True,
        )
        torch.testing.assert_close(masks, expected.pred_masks[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou, expected.iou_scores[:, 0], atol=1e-4, rtol=1e-4)
        masks, _ = ours.decode(embedding, box=box, mask=mask)
        expected = reference(
            image_embeddings=embedding, input_boxes=box[:, None], input_masks=mask, multimask_output=False
        )
        torch.testing.assert_close(masks, expected.pred_masks[:, 0], atol=1e-4, rtol=1e-4)


def test_3d_windows_round_trip_with_padding():
    tokens = torch.randn(2, 5, 4, 6, 3)
    windows, padded = window_partition(tokens, 3)
    assert padded == (6, 6, 6) and windows.shape == (2 * 8, 3, 3, 3, 3)
    assert torch.equal(window_unpartition(windows, 3, padded, (5, 4, 6)), tokens)
    assert torch.equal(windows[0], tokens[0, :3, :3, :3])  # the first window is the first corner


def test_3d_relative_positions_against_a_direct_sum():
    attention = randomized(Attention(dim=8, num_heads=2, grid=(2, 3, 4)))
    q = torch.randn(4, 24, 4)
    with torch.no_grad():
        bias = attention.relative_bias(q, (2, 3, 4))
    coords = [np.unravel_index(i, (2, 3, 4)) for i in range(24)]
    tables = (attention.rel_pos_d, attention.rel_pos_h, attention.rel_pos_w)
    for b in (0, 3):
        for i in (0, 7, 23):
            for j in (0, 5, 18):
                expected = sum(
                    q[b, i] @ table.detach()[coords[i][a] - coords[j][a] + size - 1]
                    for a, (table, size) in enumerate(zip(tables, (2, 3, 4)))
                )
                assert float(bias[b, i, j]) == pytest.approx(float(expected), abs=1e-5)


def test_3d_model_shapes_and_prompts():
    model = randomized(build("sam-med3d", **TINY_3D))
    embedding = model.encode(torch.randn(1, 1, 32, 32, 32))
    assert embedding.shape == (1, 48, 2, 2, 2)
    points, labels = torch.tensor([[[3.0, 20.0, 9.0]]]), torch.tensor([[1]])
    low, iou = model.decode(embedding, points, labels, mask=torch.zeros(1, 1, 8, 8, 8))
    assert low.shape == (1, 1, 8, 8, 8) and iou.shape == (1, 1)
    moved, _ = model.decode(embedding, points + 10, labels, mask=torch.zeros(1, 1, 8, 8, 8))
    assert not torch.allclose(low, moved)  # the click position reaches the mask
    with pytest.raises(ValueError, match="box"):
        model.decode(embedding, box=torch.tensor([[0.0, 0, 0, 5, 5, 5]]))


def test_released_checkpoint_formats_load_and_tampered_ones_do_not(tmp_path):
    source = randomized(build("sam-med3d", **TINY_3D))
    wrapped = {
        "model_state_dict": {"module." + key: value for key, value in source.state_dict().items()},
        "args": argparse.Namespace(crop_size=128, lr=8e-4),
        "best_dice": np.float64(0.8),
        "epoch": 3,
    }
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(wrapped, path)
    loaded = load_checkpoint(build("sam-med3d", **TINY_3D), path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    state = dict(source.state_dict())
    state.pop("image_encoder.blocks.0.attn.rel_pos_d")
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    torch.save({"model": state}, tmp_path / "tampered.pth")
    with pytest.raises(ValueError, match=r"tampered.pth.*1 missing.*rel_pos_d.*shape mismatch.*iou_token"):
        load_checkpoint(build("sam-med3d", **TINY_3D), tmp_path / "tampered.pth")

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"model": source.state_dict(), "payload": Payload()}, tmp_path / "malicious.pth")
    with pytest.raises(ValueError, match="never unpickled"):
        load_checkpoint(build("sam-med3d", **TINY_3D), tmp_path / "malicious.pth")
    assert not marker.exists()


def box_truth(shape, box):
    truth = np.zeros(shape, bool)
    truth[tuple(slice(a, b) for a, b in zip(box[:3], box[3:]))] = True
    return truth


def test_sam_med3d_crop_round_trips_with_anisotropic_spacing():
    volume = np.random.default_rng(0).random((40, 90, 100)).astype(np.float32)
    truth = box_truth(volume.shape, (10, 30, 20, 25, 60, 50))
    cube, cube_truth, crop = prepare(volume, (3.0, 0.8, 0.8), truth)
    assert cube.shape == cube_truth.shape == (128, 128, 128)
    # (x, y, z) = (W, H, D) voxel order at 1.5 mm: 100 * 0.8 / 1.5, 90 * 0.8 / 1.5, 40 * 3 / 1.5
    assert crop.resampled_shape == (53, 48, 80)
    assert cube_truth[64, 64, 64]  # centred on the object
    assert abs(float(cube[cube > 0].mean())) < 1  # z-normalised
    assert dice(paste(cube_truth, crop), truth) > 0.95


class OracleSam3D(PromptableSam):
    """Answers every click with the cube's truth (as low-res logits): isolates the method's geometry."""

    def __init__(self, truth_fn):
        super().__init__(**{**ARCHITECTURES["sam-med3d"], **TINY_3D, "img_size": 128})
        self.truth_fn, self.clicks = truth_fn, []

    def encode(self, image):
        return image

    def decode(self, embedding, points=None, labels=None, box=None, mask=None, multimask=False):
        self.clicks.append(points[0].numpy().astype(int))
        truth = torch.from_numpy(self.truth_fn().astype(np.float32))[None, None]
        low = torch.nn.functional.interpolate(truth, size=(32, 32, 32), mode="area")
        return (low - 0.5) * 20, torch.ones(1, 1)


def test_sam_med3d_method_maps_its_prediction_back_onto_the_volume():
    volume = np.random.default_rng(1).random((30, 70, 80)).astype(np.float32)
    truth = box_truth(volume.shape, (5, 20, 30, 25, 50, 70))
    spacing = (2.5, 1.0, 1.0)
    model = OracleSam3D(lambda: prepare(volume, spacing, truth)[1])
    prompt = prompt_from_truth("point", "liver", truth, np.random.default_rng(0))
    mask = SamMed3DMethod(model).predict(volume, spacing, prompt)
    assert mask.shape == volume.shape
    assert dice(mask, truth) > 0.9
    cube_truth = prepare(volume, spacing, truth)[1]
    assert cube_truth[tuple(model.clicks[0][0])]  # the first click is inside the object, in cube (x, y, z)


def test_sam_med2d_slice_wise_click_loop():
    model = randomized(build("sam-med2d", **TINY_2D))
    segmenter = SamMed2DSegmenter(model)
    calls = []
    decode = model.decode

    def spy(embedding, points=None, labels=None, box=None, mask=None, multimask=False):
        calls.append((points.shape[1], None if mask is None else tuple(mask.shape), multimask))
        return decode(embedding, points, labels, box, mask, multimask)

    model.decode = spy
    volume = np.random.default_rng(0).random((4, 40, 30)).astype(np.float32)
    truth = box_truth(volume.shape, (1, 10, 8, 3, 25, 20))
    prompt = prompt_from_truth("point", "liver", truth, np.random.default_rng(0))
    mask = SliceWiseMethod("SAM-Med2D", segmenter, "point").predict(volume, (1, 1, 1), prompt)
    assert mask.shape == volume.shape and not mask[0].any() and not mask[3].any()
    assert calls[0] == (1, None, True)  # one click, no mask yet, best of three candidates
    # each slice starts without a mask prompt; every corrective click gets the previous 16 x 16 logits
    assert all((shape is None) == (count == 1) for count, shape, _ in calls)
    assert all(shape == (1, 1, 16, 16) for count, shape, _ in calls if count > 1)
    assert any(count > 1 for count, _, _ in calls)  # corrective clicks were added


def test_baselines_load_released_checkpoints_and_run(tmp_path, monkeypatch):
    """build_baselines -> loaded SAM-Med2D and SAM-Med3D runs that segment a volume (small stand-ins)."""
    from segvol.evaluate.baselines import sam

    monkeypatch.setitem(sam.ARCHITECTURES, "sam-med2d", {**ARCHITECTURES["sam-med2d"], **TINY_2D})
    monkeypatch.setitem(sam.ARCHITECTURES, "sam-med3d", {**ARCHITECTURES["sam-med3d"], **TINY_3D})
    torch.save({"model": randomized(build("sam-med2d")).state_dict()}, tmp_path / "sam-med2d_b.pth")
    torch.save({"model_state_dict": randomized(build("sam-med3d")).state_dict()}, tmp_path / "sam_med3d_turbo.pth")
    runs, reasons = build_baselines(
        ["SegVol", "SAM-Med2D", "SAM-Med3D"],
        {"SAM-Med2D": str(tmp_path / "sam-med2d_b.pth"), "SAM-Med3D": str(tmp_path / "sam_med3d_turbo.pth")},
    )
    assert [run.name for run in runs] == ["SAM-Med2D", "SAM-Med3D"]
    assert reasons["SAM-Med3D"].startswith("ran: ") and reasons["SAM-Med3D"].endswith("sam_med3d_turbo.pth")
    volume = np.random.default_rng(0).random((6, 24, 24)).astype(np.float32)
    truth = box_truth(volume.shape, (1, 5, 5, 4, 15, 15))
    prompt = prompt_from_truth("point", "liver", truth, np.random.default_rng(0))
    for run in runs:
        mask = run.predict(volume, (1.5, 1.5, 1.5), prompt)
        assert mask.shape == volume.shape and mask.dtype == bool


def test_full_size_sam_med3d_runs_a_case_on_cpu():
    """The real architecture (random weights) through the whole click loop on one small CT-like case."""
    torch.manual_seed(0)
    volume = np.random.default_rng(0).random((20, 64, 64)).astype(np.float32)
    truth = box_truth(volume.shape, (5, 20, 20, 15, 40, 45))
    prompt = prompt_from_truth("point", "liver", truth, np.random.default_rng(0))
    mask = SamMed3DMethod(build("sam-med3d")).predict(volume, (3.0, 1.5, 1.5), prompt)
    assert mask.shape == volume.shape and mask.dtype == bool


def test_full_size_sam_med2d_segments_a_slice():
    torch.manual_seed(0)
    model = build("sam-med2d")
    segmenter = SamMed2DSegmenter(model)
    segmenter.set_image(np.random.default_rng(0).random((100, 80)).astype(np.float32))
    assert segmenter.embedding.shape == (1, 256, 16, 16)
    logits, low = segmenter.predict(np.array([[50, 40]]), np.array([1]), None, None)
    assert logits.shape == (100, 80) and low.shape == (1, 1, 64, 64)


def test_hub_reference_of_a_baseline_fails_clearly_offline(tmp_path):
    """hf://owner/repo/file works for baseline checkpoints too; offline, the error names the file."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from segvol.evaluate.baselines import build_baselines\n"
        "try:\n    build_baselines(['SAM-Med3D'], {'SAM-Med3D': 'hf://blueyo0/SAM-Med3D/sam_med3d_turbo.pth'})\n"
        "except FileNotFoundError as e:\n    print('ERROR', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR hf://blueyo0/SAM-Med3D/sam_med3d_turbo.pth" in result.stdout, result.stderr
    assert "HF_HUB_OFFLINE" in result.stdout
