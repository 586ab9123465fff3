"""Equivariant patch embedding: equivariance, zero-initialised adapter, frozen training, adapter file,
rotation evaluation with the equivariant model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("e3nn")

from segvol.model.embedding_adapter import EquivariantAdapter, attach, load_adapter, save_adapter  # noqa: E402
from segvol.model.equivariant_embedding import EquivariantPatchEmbedding  # noqa: E402
from tests.test_finetune import TEST_MODEL, make_store  # noqa: E402

torch.set_num_threads(1)

AXES = {"z": (3, 4), "x": (2, 3), "y": (2, 4)}  # rot90 planes of a (B, C, D, H, W) field


def rotation_matrix(dims, shape) -> torch.Tensor:
    """The (x, y, z) rotation that torch.rot90(., 1, dims) applies to voxel positions (x=W, y=H, z=D)."""
    axes = [torch.arange(s, dtype=torch.float64) - (s - 1) / 2 for s in shape]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    positions = torch.stack([w, h, d])[None]  # the value at each voxel is its own position
    moved = torch.rot90(positions, 1, dims)  # the value at p' is the old position R^-1 p'
    inverse = torch.linalg.lstsq(positions.reshape(3, -1).T, moved.reshape(3, -1).T).solution.T
    return torch.linalg.inv(inverse).round()


@pytest.fixture(scope="module")
def embedding():
    torch.manual_seed(0)
    module = EquivariantPatchEmbedding((4, 4, 4), irreps="3x0e + 2x1o + 2x2e + 1x3o", kernel_size=5)
    with torch.no_grad():
        module.convolution.bias.normal_()  # a non-zero bias must not break equivariance
    return module.double()


@pytest.mark.parametrize("axis", ["z", "x", "y"])
def test_raw_field_rotates_with_wigner_d(embedding, axis):
    image = torch.rand(1, 1, 12, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dims = AXES[axis]
    rotation = rotation_matrix(dims, (12, 12, 12))
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64))
    wigner = embedding.irreps.D_from_matrix(rotation)
    field = embedding.field(image).detach()
    expected = torch.einsum("ij,bj...->bi...", wigner, torch.rot90(field, 1, dims))
    got = embedding.field(torch.rot90(image, 1, dims)).detach()
    assert field.abs().max() > 0.1  # not trivially zero
    assert torch.allclose(got, expected, atol=1e-5 * float(field.abs().max()))
    # the l > 0 channels do change under rotation: rotating the field alone would be wrong
    assert not torch.allclose(got, torch.rot90(field, 1, dims), atol=1e-3)


def test_invariant_tokens_just_rotate(embedding):
    image = torch.rand(2, 1, 8, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tokens = embedding(image)  # (B, 2*4*4, n_invariants)
    rotated = embedding(torch.rot90(image, 1, (3, 4)))
    grid = tokens.transpose(1, 2).reshape(2, -1, 2, 4, 4)
    expected = torch.rot90(grid, 1, (3, 4)).reshape(2, -1, 32).transpose(1, 2)
    assert tokens.shape == (2, 32, embedding.n_invariants)
    assert torch.allclose(rotated, expected, atol=1e-9)
    assert not torch.allclose(rotated, tokens, atol=1e-3)


def _tokens_from_full_field(module, image):
    """The invariants computed the plain way: full-resolution field of every channel, patch means of it and
    of its squares (what `forward` computes with a strided patch convolution and l > 0 channels only)."""
    field = module.field(image)
    b, _, depth, height, width = field.shape
    pd, ph, pw = module.patch_size

    def patch_mean(values):
        return values.reshape(b, -1, depth // pd, pd, height // ph, ph, width // pw, pw).mean(dim=(3, 5, 7))

    mean, mean_square = patch_mean(field), patch_mean(field * field)
    parts, start = [], 0
    for mul, ir in module.irreps:
        channels = mul * ir.dim
        if ir.l == 0:
            parts.append(mean[:, start : start + channels])
        else:
            grid = mean.shape[2:]
            parts.append(mean[:, start : start + channels].reshape(b, mul, ir.dim, *grid).norm(dim=2))
            parts.append(mean_square[:, start : start + channels].reshape(b, mul, ir.dim, *grid).sum(dim=2).sqrt())
        start += channels
    return torch.cat(parts, dim=1).flatten(2).transpose(1, 2)


def test_patch_convolutions_equal_the_full_resolution_field():
    torch.manual_seed(3)
    # scalars not first, and an l = 3 irrep: the l > 0 channel selection must follow the irreps' order
    module = EquivariantPatchEmbedding((2, 4, 4), irreps="2x1o + 3x0e + 1x2e + 1x3o", kernel_size=5).double()
    with torch.no_grad():
        module.convolution.bias.normal_()
    image = torch.rand(2, 1, 6, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _tokens_from_full_field(module, image)
        got = module(image)
        mean = module.patch_field(image)
    assert got.shape == expected.shape == (2, 3 * 3 * 2, module.n_invariants)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert mean.abs().max() > 0.1 and torch.allclose(
        mean, module.field(image).reshape(2, -1, 3, 2, 3, 4, 2, 4).mean(dim=(3, 5, 7)), atol=1e-12
    )
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        module(image[:, :, :5])


def _uncached(module):
    import copy

    fresh = copy.deepcopy(module)
    for child in fresh.modules():
        if hasattr(child, "reuse_kernel"):
            child.reuse_kernel = False
    return fresh


def test_reused_kernel_gives_identical_outputs():
    torch.manual_seed(5)
    module = EquivariantPatchEmbedding((4, 4, 4), irreps="3x0e + 2x1o + 1x2e", kernel_size=5).eval()
    with torch.no_grad():
        module.convolution.bias.normal_()
    image = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(6))
    convolution = module.convolution
    with torch.inference_mode():
        first = module(image)
        assert convolution.kernel() is convolution.kernel()  # built once, then reused
        second, field = module(image), module.field(image)
    with torch.no_grad():
        third = module(image)  # a kernel built in inference mode serves outside it too
    rebuilt = _uncached(module)
    with torch.no_grad():
        assert rebuilt.convolution.kernel() is not rebuilt.convolution.kernel()
        expected, expected_field = rebuilt(image), rebuilt.field(image)
    assert torch.equal(first, expected) and torch.equal(second, expected) and torch.equal(third, expected)
    assert torch.equal(field, expected_field)
    # bf16 autocast at the call that builds the kernel must not leak into the reused kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_kernel = convolution._build_kernel()
    assert autocast_kernel.dtype == torch.float32 and torch.equal(autocast_kernel, convolution.kernel())


def test_reused_kernel_follows_every_weight_change():
    torch.manual_seed(7)
    adapter = EquivariantAdapter((4, 4, 4), 16, irreps="2x0e + 2x1o + 1x2e", kernel_size=3)
    with torch.no_grad():
        adapter.proj.weight.normal_()  # zero-initialised, it would stop every gradient to the kernel
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(8))
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.5)
    radial_weight = adapter.embedding.convolution.radial_weight
    other = EquivariantAdapter((4, 4, 4), 16, irreps="2x0e + 2x1o + 1x2e", kernel_size=3)

    def optimizer_step():
        adapter.train()
        optimizer.zero_grad()
        adapter(image).square().mean().backward()
        assert radial_weight.grad.abs().sum() > 0  # training backpropagates through the kernel
        optimizer.step()

    def write_through_data():  # `.data` writes do not bump the version counter; the cache must notice anyway
        radial_weight.data.mul_(1.5)

    def load_other_weights():
        adapter.load_state_dict(other.state_dict())

    adapter.eval()
    with torch.inference_mode():
        previous = adapter(image)
    for change in (optimizer_step, write_through_data, load_other_weights):
        change()
        adapter.eval()
        with torch.inference_mode():
            reused = adapter(image)
            reused_again = adapter(image)
        with torch.no_grad():
            fresh = _uncached(adapter)(image)
        assert torch.equal(reused, fresh) and torch.equal(reused_again, fresh), change.__name__
        assert not torch.allclose(reused, previous, atol=1e-4), change.__name__
        previous = reused


def test_eval_mode_still_backpropagates():
    torch.manual_seed(9)
    module = EquivariantPatchEmbedding((4, 4, 4), irreps="2x0e + 1x1o", kernel_size=3).eval()
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(10))
    with torch.inference_mode():
        module(image)  # fills the cache
    module(image).sum().backward()  # grad mode and trainable weights: the kernel is rebuilt with its graph
    assert module.convolution.radial_weight.grad.abs().sum() > 0
    # frozen weights: the reused kernel (built in inference mode) still lets gradients reach the image
    module.requires_grad_(False)
    with torch.inference_mode():
        module(image)
    image.requires_grad_(True)
    module(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def _tiny_model():
    from segvol.model import build_model
    from segvol.model.config import model_config_from_settings
    from segvol.settings import stage_settings

    torch.manual_seed(0)
    return build_model(model_config_from_settings(stage_settings("model", TEST_MODEL))).eval()


def test_untrained_adapter_equals_the_original_exactly_and_keeps_key_names():
    model = _tiny_model()
    keys = set(model.state_dict())
    image = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        before = model.encode_image(image)
        adapter = attach(model, {"kernel_size": 3})
        after = model.encode_image(image)
        # proof that the adapter is in the path: a non-zero projection changes the embedding
        adapter.proj.bias.fill_(0.5)
        moved = model.encode_image(image)
    assert torch.equal(before, after)
    assert not torch.allclose(before, moved)
    assert {k for k in model.state_dict() if not k.startswith("image_encoder.extra_embedding.")} == keys
    assert all(not p.requires_grad for n, p in model.named_parameters() if "extra_embedding" not in n)
    assert all(p.requires_grad for p in adapter.parameters())


def test_adapter_file_round_trip_and_bad_files(tmp_path):
    model = _tiny_model()
    adapter = attach(model, {"irreps": "4x0e + 2x1o", "kernel_size": 3, "radial_basis": 2})
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_()
    path = save_adapter(adapter, tmp_path / "adapter.safetensors")
    image = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(image)
    fresh = _tiny_model()
    loaded = load_adapter(fresh, path)
    assert loaded.settings == {"irreps": "4x0e + 2x1o", "kernel_size": 3, "radial_basis": 2}
    with torch.no_grad():
        assert torch.allclose(fresh.encode_image(image), expected, atol=1e-6)
    from safetensors.torch import load_file

    assert all(key.startswith("adapter.") for key in load_file(str(path)))

    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_adapter(_tiny_model(), tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_adapter(_tiny_model(), tmp_path / "missing.safetensors")
    wide = _tiny_model()
    wide_adapter = EquivariantAdapter((4, 8, 8), 64, kernel_size=3)
    save_adapter(wide_adapter, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="wide.safetensors"):
        load_adapter(wide, tmp_path / "wide.safetensors")


def test_training_moves_only_the_adapter(tmp_path):
    from segvol.finetune.equivariant import train_adapter
    from segvol.settings import stage_settings

    store = make_store(
        tmp_path / "zarr" / "ds_a.zarr",
        "ds_a",
        ["liver", "spleen"],
        3,
        1,
        pseudo_path=tmp_path / "pseudo" / "ds_a.zarr",
    )
    model = _tiny_model()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    settings = stage_settings(
        "finetune_equivariant",
        {
            "steps": 3,
            "batch_size": 1,
            "lr": 1e-2,
            "prompt_combinations": 2,
            "pseudo_passes": 2,
            "rotation_probability": 1.0,
            "kernel_size": 3,
            "checkpoint_every": 0,
        },
    )
    out = tmp_path / "adapter.safetensors"
    train_adapter(
        "unused",
        [str(store)],
        [str(tmp_path / "pseudo" / "ds_a.zarr")],
        str(out),
        settings,
        threads=1,
        device="cpu",
        model=model,
    )
    after = model.state_dict()
    for key, value in frozen.items():
        assert torch.equal(after[key], value), f"{key} changed during adapter training"
    adapter = model.image_encoder.extra_embedding
    assert adapter.proj.weight.abs().sum() > 0  # the zero-initialised projection did learn
    assert out.is_file() and not (tmp_path / "adapter.safetensors.ckpt").exists()


def test_rotate_sample_rotates_masks_and_redraws_prompts():
    from segvol.finetune.equivariant import rotate_sample

    labels = torch.zeros(2, 8, 16, 16)
    labels[0, 2:6, 2:5, 4:12] = 1.0  # a bar along W; category 1 absent
    sample = {
        "image": labels[:1].clone(),
        "labels": labels.to(torch.float16),
        "present": torch.tensor([True, False]),
        "points": torch.full((2, 21, 3), -1.0),
        "point_labels": torch.full((2, 21), -1),
        "boxes": torch.full((2, 6), -1.0),
    }
    out = rotate_sample(sample, [90.0, 0.0, 0.0], np.random.default_rng(0))
    np.testing.assert_allclose(out["labels"][0].float().numpy(), np.rot90(labels[0].numpy(), 1, (1, 2)), atol=1e-3)
    box = out["boxes"][0].tolist()
    assert box[1:3] != [2.0, 4.0] and (box[4] - box[1], box[5] - box[2]) == (7.0, 2.0)  # the bar now runs along H
    coords, point_labels = out["points"][0], out["point_labels"][0]
    positives = coords[point_labels == 1].long()
    assert len(positives) and all(out["labels"][0][tuple(p)] > 0.9 for p in positives)
    assert not out["present"][1] and (out["boxes"][1] == -1).all()


def test_effect_verdict():
    from segvol.evaluate.rotation import effect_verdict

    assert effect_verdict(0.01, 0.2) == "helped" and effect_verdict(-0.2, -0.01) == "hurt"
    assert effect_verdict(-0.1, 0.1) == "made no measurable difference"
    assert effect_verdict(float("nan"), float("nan")) == "made no measurable difference"


@pytest.mark.slow
def test_rotation_cli_compares_both_models(tmp_path, monkeypatch):
    """End to end through two real (tiny) models and zoom inference: rotation and Table 6 (~15 s idle)."""
    from segvol.cli import main
    from segvol.evaluate import methods as methods_module
    from tests.test_evaluate import write_store

    monkeypatch.setattr(methods_module, "load_segvol", lambda checkpoint, settings=None, device=None: _tiny_model())
    adapter = attach(_tiny_model(), {"kernel_size": 3})
    with torch.no_grad():
        adapter.proj.weight.normal_(std=0.5)  # an adapter that does change the masks
    path = save_adapter(adapter, tmp_path / "adapter.safetensors")
    store = write_store(tmp_path / "ext.zarr", n_cases=3, dataset="ext")
    out = tmp_path / "r.csv"
    assert (
        main(
            [
                "evaluate",
                "rotation",
                "--checkpoint",
                "m",
                "--equivariant",
                str(path),
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--per-case",
                str(tmp_path / "r.parquet"),
                "--png",
                str(tmp_path / "r.png"),
                "--params",
                json.dumps({"prompt": "box", "max_cases": 3}),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    summary = pd.read_csv(out).set_index("category")
    per_case = pd.read_parquet(tmp_path / "r.parquet")
    assert set(per_case["method"]) == {"SegVol", "SegVol + equivariant embedding"}
    rotated = per_case[per_case.variant == "rotated"].pivot_table(
        index=["case", "category"], columns="method", values="dice"
    )
    difference = rotated["SegVol + equivariant embedding"] - rotated["SegVol"]
    assert summary.loc["all", "rotated_difference"] == pytest.approx(float(np.median(difference)), abs=1e-4)
    assert summary.loc["all", "rotated_pairs"] == len(difference)
    pooled = per_case[(per_case.method == "SegVol") & (per_case.variant == "rotated")]["dice"].median()
    assert summary.loc["all", "rotated"] == pytest.approx(pooled, abs=1e-4)
    assert list(summary.index)[-1] == "all"
    overall = summary.loc["all"]
    assert overall["rotated_ci_low"] <= overall["rotated_difference"] <= overall["rotated_ci_high"]
    for category in set(per_case["category"]):
        chosen = (per_case.method != "SegVol") & (per_case.category == category) & (per_case.variant == "original")
        ours = per_case[chosen]
        assert summary.loc[category, "equivariant_original"] == pytest.approx(ours["dice"].median(), abs=1e-4)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"

    table6 = tmp_path / "t6.csv"
    assert (
        main(
            [
                "evaluate",
                "table6",
                "--checkpoint",
                "m",
                "--equivariant",
                str(path),
                "--zarr",
                str(store),
                "--out",
                str(table6),
                "--per-case",
                str(tmp_path / "t6.parquet"),
                "--threads",
                "1",
                "--params",
                json.dumps({"max_cases": 1, "methods": ["SegVol"]}),
            ]
        )
        == 0
    )
    table = pd.read_csv(table6).set_index("method")
    ours, theirs = table.loc["SegVol + equivariant embedding"], table.loc["SegVol"]
    assert ours["parameters"] - theirs["parameters"] == sum(p.numel() for p in adapter.parameters())
    # the CSV keeps 4 decimals of M
    assert ours["trainable_parameters_m"] * 1e6 == pytest.approx(sum(p.numel() for p in adapter.parameters()), abs=50)
    assert ours["gmacs_per_case"] > theirs["gmacs_per_case"]

    assert (
        main(
            [
                "evaluate",
                "rotation",
                "--checkpoint",
                "m",
                "--equivariant",
                str(tmp_path / "none.safetensors"),
                "--zarr",
                str(store),
                "--out",
                str(tmp_path / "x.csv"),
                "--per-case",
                str(tmp_path / "x.parquet"),
                "--png",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.csv").exists()


def test_demo_dag_trains_the_adapter_for_rotation_and_table6():
    from tests.test_workflow import assert_ok, job_counts, snakemake

    counts = job_counts(assert_ok(snakemake("-n", "results/rotation.csv", "results/table6.csv")))
    assert counts["finetune_equivariant"] == 1 and counts["rotation"] == 1 and counts["table6"] == 1


def test_killed_adapter_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from segvol.finetune.equivariant import train_adapter
    from segvol.settings import stage_settings

    store = make_store(tmp_path / "zarr" / "ds_a.zarr", "ds_a", ["liver", "spleen"], 3, 2)
    settings = stage_settings(
        "finetune_equivariant",
        {
            "steps": 3,
            "batch_size": 1,
            "lr": 1e-2,
            "prompt_combinations": 1,
            "pseudo_weight": 0.0,
            "rotation_probability": 0.5,
            "kernel_size": 3,
            "checkpoint_every": 0,
        },
    )
    straight, resumed = tmp_path / "straight.safetensors", tmp_path / "resumed.safetensors"
    train_adapter("unused", [str(store)], [], str(straight), settings, threads=1, device="cpu", model=_tiny_model())
    train_adapter(
        "unused", [str(store)], [], str(resumed), settings, threads=1, device="cpu", model=_tiny_model(), stop_after=2
    )
    assert not resumed.exists() and (tmp_path / "resumed.safetensors.ckpt").is_dir()
    train_adapter("unused", [str(store)], [], str(resumed), settings, threads=1, device="cpu", model=_tiny_model())
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if k.endswith("proj.weight"))
