"""Checkpoints: the official key list loads strictly into `base`; ours round-trip; bad files fail clearly.

The `base` tests hold ~181M parameters twice in memory (model + file) and write ~0.7 GB per
official-format file to the temporary folder; they share one model per module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segvol.model import build_model, checkpoint, model_config

torch.set_num_threads(1)

KEY_TABLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dict_keys.tsv"
OFFICIAL_PARAMETERS = 180_890_064
POSITION_IDS = "text_encoder.clip_text_model.text_model.embeddings.position_ids"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def official_table():
    if not KEY_TABLE.is_file():
        pytest.skip(f"{KEY_TABLE} is not available")
    rows = []
    for line in KEY_TABLE.read_text(encoding="utf-8").splitlines()[1:]:
        key, shape, dtype, numel, is_buffer = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")), dtype, int(numel), is_buffer == "1"))
    return rows


@pytest.fixture(scope="module")
def random_official_state(official_table):
    """Every official key (prefix `module.` removed) with its shape and dtype, random values."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, shape, dtype, _, _ in official_table:
        assert key.startswith("module.")
        if DTYPES[dtype] == torch.int64:
            value = torch.arange(shape[-1]).reshape(shape)
        else:
            value = torch.randn(shape, generator=generator)
        state[key[len("module.") :]] = value
    return state


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return build_model(model_config("base"))


def _assert_equal_to(model, state):
    ours = model.state_dict()
    for key, value in state.items():
        if key == POSITION_IDS and key not in ours:
            continue
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key


def test_base_reproduces_the_official_key_list_and_parameter_count(base_model, official_table):
    ours = {k: tuple(v.shape) for k, v in base_model.state_dict().items()}
    official = {key[len("module.") :]: shape for key, shape, *_ in official_table}
    official_only = set(official) - set(ours)
    assert official_only <= {POSITION_IDS}  # non-persistent in recent transformers
    assert set(ours) - set(official) == set()
    assert {k: official[k] for k in ours} == ours
    assert len(official_table) == 475
    expected_parameters = sum(numel for *_, numel, is_buffer in official_table if not is_buffer)
    assert expected_parameters == OFFICIAL_PARAMETERS
    assert sum(p.numel() for p in base_model.parameters()) == OFFICIAL_PARAMETERS


def test_github_and_huggingface_formats_load_strictly_into_base(base_model, random_official_state, tmp_path):
    github = tmp_path / "SegVol_v1.pth"
    torch.save({"model": {"module." + k: v for k, v in random_official_state.items()}, "epoch": 7}, github)
    loaded = checkpoint.load(github)
    assert loaded.config == model_config("base")
    _assert_equal_to(loaded, random_official_state)
    del loaded
    github.unlink()

    from safetensors.torch import save_file

    huggingface = tmp_path / "pytorch_model.safetensors"
    save_file({"model." + k: v for k, v in random_official_state.items()}, str(huggingface))
    checkpoint.load_into(base_model, huggingface)
    _assert_equal_to(base_model, random_official_state)
    huggingface.unlink()


def test_state_dict_wrapper_and_tampered_dicts(base_model, random_official_state):
    wrapped = {"state_dict": {"model." + k: v for k, v in random_official_state.items()}}
    checkpoint.load_state_dict(base_model, wrapped)
    _assert_equal_to(base_model, random_official_state)

    renamed = dict(random_official_state)
    renamed["image_encoder.norm.gamma"] = renamed.pop("image_encoder.norm.weight")
    with pytest.raises(ValueError) as error:
        checkpoint.load_state_dict(base_model, renamed, "renamed.pth")
    message = str(error.value)
    assert "renamed.pth" in message
    assert "1 missing: image_encoder.norm.weight" in message
    assert "1 unexpected: image_encoder.norm.gamma" in message

    reshaped = dict(random_official_state)
    reshaped["mask_decoder.iou_token.weight"] = torch.zeros(2, 768)
    with pytest.raises(ValueError, match=r"mask_decoder.iou_token.weight: file \(2, 768\) vs model \(1, 768\)"):
        checkpoint.load_state_dict(base_model, reshaped)

    many_missing = {k: v for k, v in random_official_state.items() if not k.startswith("mask_decoder.")}
    with pytest.raises(ValueError, match=r"more\)"):  # long lists are truncated
        checkpoint.load_state_dict(base_model, many_missing)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(2)
    return build_model(model_config("tiny")).eval()


def test_our_format_round_trips_with_its_config(tiny_model, tmp_path):
    path = checkpoint.save(tiny_model, tmp_path / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "model.safetensors.provenance.json"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["format"] == "segvol-workflow"
    assert not any(k.startswith("text_encoder.backbone.") for k in keys)  # rebuilt from its package
    assert "text_encoder.dim_align.weight" in keys

    loaded = checkpoint.load(path)
    assert loaded.config == tiny_model.config
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = torch.rand(1, 1, *tiny_model.config.spatial_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, text=["liver"]), tiny_model(image, text=["liver"]), rtol=0, atol=0)

    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.load(path, hidden_size=64, mlp_dim=256)


def test_failed_save_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        checkpoint.save(tiny_model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_simmim_encoder_checkpoint_loads_only_the_encoder(tiny_model, tmp_path):
    generator = torch.Generator().manual_seed(5)
    encoder_state = {
        k: torch.randn(v.shape, generator=generator) for k, v in tiny_model.image_encoder.state_dict().items()
    }
    simmim = {"model.encoder." + k: v for k, v in encoder_state.items()}
    simmim["model.decoder.0.weight"] = torch.zeros(3, 3)  # SimMIM's reconstruction head is ignored
    path = tmp_path / "ViT_pretrain.ckpt"
    torch.save({"state_dict": simmim, "epoch": 2000}, path)

    decoder_before = {k: v.clone() for k, v in tiny_model.mask_decoder.state_dict().items()}
    checkpoint.load_image_encoder(tiny_model, path)
    for key, value in encoder_state.items():
        assert torch.equal(tiny_model.image_encoder.state_dict()[key], value), key
    for key, value in tiny_model.mask_decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key])
    with pytest.raises(ValueError, match="only image-encoder weights"):
        checkpoint.load(path)
    with pytest.raises(ValueError, match="only image-encoder weights"):
        checkpoint.load_into(tiny_model, path)


class _Payload:
    """Unpickling this would call its __reduce__ target: touch a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def test_untrusted_and_broken_files_are_refused(tmp_path):
    import argparse

    marker = tmp_path / "executed"
    pickled = tmp_path / "evil.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "extra": _Payload(marker)}, pickled)
    with pytest.raises(ValueError, match="evil.pth.*weights-only.*never unpickled"):
        checkpoint.read_state_dict(pickled)
    assert not marker.exists()
    # Plain training metadata saved beside the weights (argparse options, numpy scalars) is data, not code.
    options = tmp_path / "with_options.pth"
    torch.save(
        {"model_state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=1e-4), "best": np.float64(0.5)},
        options,
    )
    assert torch.equal(checkpoint.read_weights(options)["a"], torch.ones(1))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="not a checkpoint"):
        checkpoint.read_state_dict(junk)
    no_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "notes": "none"}, no_tensors)
    with pytest.raises(ValueError, match="no state dict"):
        checkpoint.read_state_dict(no_tensors)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        checkpoint.read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="hf://owner/repo"):
        checkpoint.resolve("hf://BAAI")


def test_hf_reference_offline_fails_clearly(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from segvol.model import checkpoint\n"
        "try:\n    checkpoint.resolve('hf://BAAI/SegVol')\n"
        "except FileNotFoundError as e:\n    print('ERROR', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR hf://BAAI/SegVol" in result.stdout, result.stderr
    assert "pytorch_model.bin" in result.stdout and "HF_HUB_OFFLINE" in result.stdout


def test_clip_text_encoder_pools_the_end_of_text_state(base_model, random_official_state):
    from segvol.model.tokenizer import ClipTokenizer

    checkpoint.load_state_dict(base_model, random_official_state)
    text_encoder = base_model.text_encoder
    tokenizer = ClipTokenizer()
    expected = []
    with torch.no_grad():
        for name in ("liver", "inferior vena cava"):
            ids = torch.tensor([tokenizer(f"A computerized tomography of a {name}.")])
            hidden = text_encoder.clip_text_model.text_model(input_ids=ids).last_hidden_state
            expected.append(text_encoder.dim_align(hidden[0, -1]))
        together = base_model.encode_text(["liver", "inferior vena cava"])  # padded batch
    # Padding changes the attention kernels' summation order (random weights, ~3e-4); pooling the
    # wrong token would differ by orders of magnitude more.
    torch.testing.assert_close(together, torch.stack(expected), rtol=1e-3, atol=1e-3)

    # New weights invalidate the per-name feature cache.
    changed = dict(random_official_state)
    key = "text_encoder.clip_text_model.text_model.final_layer_norm.weight"
    changed[key] = changed[key] * 3
    checkpoint.load_state_dict(base_model, changed)
    with torch.no_grad():
        again = base_model.encode_text(["liver"])
    assert (again[0] - together[0]).abs().max() > 1e-3


@pytest.mark.slow
def test_base_forward_gives_full_resolution_logits(base_model):
    image = torch.rand(1, 1, 32, 256, 256)
    with torch.no_grad():
        logits = base_model.eval()(image, text=["liver"], boxes=torch.tensor([[4.0, 30, 40, 20, 200, 180]]))
    assert logits.shape == (1, 1, 32, 256, 256)
    assert torch.isfinite(logits).all()


def test_model_from_settings_builds_and_initialises(tiny_model, tmp_path):
    path = checkpoint.save(tiny_model, tmp_path / "init.safetensors")
    model = checkpoint.model_from_settings({"preset": "tiny", "text_encoder": "minilm", "init_checkpoint": str(path)})
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.model_from_settings(
            {"preset": "tiny", "text_encoder": "minilm", "overrides": {"num_layers": 2}, "init_checkpoint": str(path)}
        )


def test_saved_image_encoder_loads_into_a_fresh_model(tiny_model, tmp_path):
    path = checkpoint.save_image_encoder(tiny_model, tmp_path / "encoder.safetensors")
    torch.manual_seed(9)
    fresh = build_model(tiny_model.config)
    checkpoint.load_image_encoder(fresh, path)
    for key, value in tiny_model.image_encoder.state_dict().items():
        assert torch.equal(fresh.image_encoder.state_dict()[key], value), key
    assert not torch.equal(fresh.mask_decoder.iou_token.weight, tiny_model.mask_decoder.iou_token.weight)
    with pytest.raises(ValueError, match="only image-encoder weights"):
        checkpoint.load(path)
    smaller = build_model(model_config("tiny", hidden_size=64, mlp_dim=128))
    with pytest.raises(ValueError, match="shape mismatch"):
        checkpoint.load_image_encoder(smaller, path)
