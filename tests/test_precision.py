"""Image-encoder precision: fp32 keeps the released numbers, bf16 (`segvol predict --precision bf16`) stays close."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from segvol import cli_options
from segvol.cli import main
from segvol.model import build_image_encoder, model_config
from segvol.model import image_encoder as image_encoder_module

torch.set_num_threads(1)


def test_bf16_is_autocast_with_linear_weights_converted_once():
    torch.manual_seed(0)
    encoder = build_image_encoder(model_config("tiny")).eval()
    image = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        fp32 = encoder(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = encoder(image).float()
        assert encoder.set_precision("bf16") is encoder
        bf16 = encoder(image)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    linear = [p for m in encoder.modules() if isinstance(m, nn.Linear) for p in m.parameters()]
    others = [p for m in encoder.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]
    assert linear and all(p.dtype == torch.bfloat16 for p in linear)
    assert others and all(p.dtype == torch.float32 for p in others)  # layer norms, position embeddings
    torch.testing.assert_close(bf16, autocast, rtol=0, atol=0)
    # Really bfloat16 arithmetic, and close: the embedding is layer-normed (standard deviation ~1).
    difference = (bf16 - fp32).abs().max().item()
    assert 1e-4 < difference < 0.1, difference


def test_fp32_is_the_plain_chain_of_the_released_layers():
    torch.manual_seed(0)
    encoder = build_image_encoder(model_config("tiny")).eval()
    image = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        tokens = encoder.patch_embedding(image)
        for block in encoder.blocks:
            tokens = block(tokens)
        expected = encoder.norm(tokens).transpose(1, 2).reshape(2, 128, *encoder.grid_size)
        assert encoder.precision == "fp32"
        torch.testing.assert_close(encoder(image), expected, rtol=0, atol=0)


def test_bad_precision_switches_raise():
    encoder = build_image_encoder(model_config("tiny"))
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        encoder.set_precision("fp16")
    assert encoder.set_precision("fp32").precision == "fp32"  # the default: nothing changes
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    encoder.set_precision("bf16")
    with pytest.raises(ValueError, match="reload the weights"):
        encoder.set_precision("fp32")
    assert cli_options.PRECISIONS == image_encoder_module.PRECISIONS


def _predict(tmp_path, checkpoint, *extra):
    output = tmp_path / f"seg{len(list(tmp_path.glob('seg*.nii.gz')))}.nii.gz"
    code = main(
        [
            "predict",
            str(tmp_path / "ct.nii.gz"),
            "-o",
            str(output),
            "--checkpoint",
            str(checkpoint),
            "--box",
            "5",
            "5",
            "5",
            "34",
            "40",
            "50",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )
    assert code == 0
    manifest = json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
    return np.asarray(nib.load(str(output)).dataobj), manifest


def test_predict_bf16_label_map_matches_fp32(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    hu = np.full((40, 48, 56), -1000, np.int16)
    hu[2:-2, 2:-2, 2:-2] = rng.integers(-100, 300, (36, 44, 52))
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii.gz"))

    fp32, fp32_manifest = _predict(tmp_path, tiny_checkpoint)
    bf16, bf16_manifest = _predict(tmp_path, tiny_checkpoint, "--precision", "bf16")
    assert (fp32_manifest["precision"], bf16_manifest["precision"]) == ("fp32", "bf16")
    inside = fp32 == 1
    # Not a trivial mask: the random-weight model puts part of the box in, part out.
    assert 0.2 < inside.sum() / (30 * 36 * 46) < 0.8
    both = (inside & (bf16 == 1)).sum()
    dice = 2 * both / (inside.sum() + (bf16 == 1).sum())
    assert dice >= 0.99, dice


def test_predict_rejects_an_unknown_precision(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                str(tmp_path / "ct.nii.gz"),
                "-o",
                str(tmp_path / "seg.nii.gz"),
                "--text",
                "liver",
                "--precision",
                "fp16",
            ]
        )
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog, native_bf16, tiny_checkpoint):
    from segvol.infer.predict import load_model

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16, raising=False)
    with caplog.at_level("WARNING", logger="segvol"):
        model, _ = load_model(str(tiny_checkpoint), torch.device("cpu"), precision="bf16")
    assert model.image_encoder.precision == "bf16"
    assert ("no bf16 instructions" in caplog.text) is not native_bf16
