"""Fine-tuning: prompts, samples, the two loss schedules, a short run and exact resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from segvol.finetune.data import DatasetBatches, FinetuneSamples, SampleKey
from segvol.finetune.objective import PROMPT_COMBINATIONS, FinetuneObjective
from segvol.finetune.prompts import POINTS_PER_PROMPT, sample_points, tight_box
from segvol.settings import stage_settings

torch.set_num_threads(1)

# A model small enough for CPU tests: 16x32x32 input, 4x4x4 tokens of width 32.
TEST_MODEL = {
    "preset": "tiny",
    "text_encoder": "minilm",
    "overrides": {
        "spatial_size": [16, 32, 32],
        "patch_size": [4, 8, 8],
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_layers": 1,
        "num_heads": 2,
        "decoder_depth": 1,
        "decoder_heads": 2,
        "decoder_mlp_dim": 64,
        "iou_head_hidden_dim": 16,
    },
}


def _ellipsoid(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_store(
    path: Path,
    name: str,
    categories: list[str],
    n_cases: int,
    seed: int,
    shape=(20, 40, 44),
    pseudo_path: Path | None = None,
) -> Path:
    """A tiny labelled store (and its pseudo store) following CONTRIBUTING.md, built with zarr."""
    import zarr

    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    pseudo_root = zarr.open_group(str(pseudo_path), mode="w") if pseudo_path else None
    cases = [f"case_{i:03d}" for i in range(n_cases)]
    for case in cases:
        image = rng.normal(0.2, 0.02, size=shape).astype(np.float32)
        labels = np.zeros((len(categories), *shape), dtype=np.uint8)
        for c in range(len(categories)):
            centre = [rng.integers(s // 4, 3 * s // 4) for s in shape]
            radii = [rng.integers(3, 6), rng.integers(5, 10), rng.integers(5, 10)]
            mask = _ellipsoid(shape, centre, radii)
            labels[c] = mask
            image[mask] = 0.5 + 0.2 * c
        image = np.clip(image, 0, 1)
        group = root.create_group(case)
        group.create_array("image", data=image, chunks=(8, 16, 16))
        group.create_array("labels", data=labels, chunks=(1, 8, 16, 16))
        group.attrs.update({"spacing": [2.0, 1.0, 1.0], "categories_present": categories})
        if pseudo_root is not None:
            ids = np.zeros(shape, dtype=np.int32)
            ids[:, : shape[1] // 2] = 1
            ids[:, shape[1] // 2 :] = 2
            for c in range(len(categories)):
                ids[labels[c] > 0] = 3 + c
            pgroup = pseudo_root.create_group(case)
            pgroup.create_array("pseudo", data=ids, chunks=(8, 16, 16))
            pgroup.attrs.update(
                {
                    "n_segments": 2,
                    "segment_sizes": [int((ids == 1).sum()), int((ids == 2).sum())],
                    "gt_ids": {n: 3 + c for c, n in enumerate(categories)},
                }
            )
    root.attrs.update(
        {
            "dataset": name,
            "role": "train",
            "modality": "CT",
            "categories": categories,
            "cases": cases,
            "split": {"train": cases[:-1], "test": cases[-1:], "seed": 0, "test_fraction": 0.2},
            "format_version": 1,
        }
    )
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("stores")
    a = make_store(
        base / "zarr" / "ds_a.zarr", "ds_a", ["liver", "spleen"], 4, 1, pseudo_path=base / "pseudo" / "ds_a.zarr"
    )
    b = make_store(base / "zarr" / "ds_b.zarr", "ds_b", ["kidney"], 3, 2, pseudo_path=base / "pseudo" / "ds_b.zarr")
    return {
        "zarr": [str(a), str(b)],
        "pseudo": [str(base / "pseudo" / "ds_a.zarr"), str(base / "pseudo" / "ds_b.zarr")],
    }


def settings(**overrides):
    values = {"steps": 4, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "pseudo_passes": 2}
    values.update(overrides)
    return stage_settings("finetune", values)


# -- prompts ----------------------------------------------------------------------------------


def test_points_follow_the_mask_and_are_padded():
    rng = np.random.default_rng(0)
    mask = torch.zeros(8, 12, 12)
    mask[2:5, 3:9, 4:7] = 1.0
    coords, labels = sample_points(mask, rng, n_positive=3, n_negative=4)
    assert coords.shape == (POINTS_PER_PROMPT, 3) and labels.shape == (POINTS_PER_PROMPT,)
    assert labels.tolist() == [1] * 4 + [0] * 4 + [-1] * (POINTS_PER_PROMPT - 8)
    inside = mask[tuple(coords[labels >= 0].long().T)]
    assert torch.equal(inside, (labels[labels >= 0] == 1).float())
    assert (coords[labels == -1] == -1).all()
    # an empty mask gives only padding, never a fake positive
    coords, labels = sample_points(torch.zeros(4, 4, 4), rng, 3, 3)
    assert (labels == -1).all()


def test_tight_box_matches_numpy_bounds_and_jitter_stays_in_volume():
    mask = torch.zeros(10, 20, 30)
    mask[3:7, 5:6, 10:25] = 1.0
    where = np.argwhere(mask.numpy() > 0.5)
    expected = np.concatenate([where.min(0), where.max(0)]).astype(np.float32)
    assert np.array_equal(tight_box(mask).numpy(), expected)
    assert (tight_box(torch.zeros(3, 3, 3)) == -1).all()
    rng = np.random.default_rng(1)
    for _ in range(20):
        box = tight_box(mask, jitter=10, rng=rng)
        assert (box >= 0).all() and (box[:3] <= torch.tensor([10.0, 20.0, 30.0])).all()
        assert (box - torch.from_numpy(expected)).abs().max() <= 10


# -- samples and batches ----------------------------------------------------------------------


def test_samples_are_deterministic_and_batches_hold_one_dataset(stores):
    data = FinetuneSamples(stores["zarr"], stores["pseudo"], spatial_size=(16, 32, 32), seed=3, settings=settings())
    sampler = DatasetBatches(data, batch_size=2, rank=0, world_size=1, start=0, stop=12, seed=3)
    batches = list(sampler)
    assert len(batches) == 12
    for keys in batches:
        stores_of_batch = {data.reader.cases[k.case].store for k in keys}
        assert len(stores_of_batch) == 1
    # test split never used for training
    used = {data.reader.cases[k.case].case for keys in batches for k in keys if data.reader.cases[k.case].store == 0}
    assert "case_003" not in used
    first = data[batches[0][0]]
    again = data[batches[0][0]]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # prompts agree with the sample's own labels
    for c in range(first["labels"].shape[0]):
        if first["present"][c]:
            box = tight_box(first["labels"][c].float())
            assert torch.equal(first["boxes"][c], box)
            assert first["point_labels"][c][0] == 1
        else:
            assert (first["point_labels"][c] == -1).all()


def test_ranks_split_the_global_batch(stores):
    data = FinetuneSamples(stores["zarr"], [], spatial_size=(16, 32, 32), seed=3, settings=settings())
    single = list(DatasetBatches(data, batch_size=2, rank=0, world_size=1, start=0, stop=5, seed=3))
    rank0 = list(DatasetBatches(data, batch_size=1, rank=0, world_size=2, start=0, stop=5, seed=3))
    rank1 = list(DatasetBatches(data, batch_size=1, rank=1, world_size=2, start=0, stop=5, seed=3))
    for whole, a, b in zip(single, rank0, rank1):
        assert whole == a + b
    resumed = list(DatasetBatches(data, batch_size=2, rank=0, world_size=1, start=3, stop=5, seed=3))
    assert resumed == single[3:]


def test_bad_stores_are_rejected(tmp_path, stores):
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        FinetuneSamples([str(tmp_path / "missing.zarr")], [], spatial_size=(16, 32, 32), seed=0, settings=settings())
    bad = make_store(tmp_path / "nan.zarr", "nan", ["liver"], 2, 5)
    import zarr

    image = zarr.open_group(str(bad), mode="a")["case_000"]["image"]
    values = image[...]
    values[0, 0, 0] = np.nan
    image[...] = values
    data = FinetuneSamples([str(bad)], [], spatial_size=(16, 32, 32), seed=0, settings=settings(resize_probability=1.0))
    with pytest.raises(ValueError, match="nan.zarr/case_000/image.*NaN"):
        data[SampleKey(0, 0, 0)]
    with pytest.raises(ValueError, match="without a matching --zarr"):
        FinetuneSamples(stores["zarr"][:1], stores["pseudo"], spatial_size=(16, 32, 32), seed=0, settings=settings())


# -- objective --------------------------------------------------------------------------------


def _model(seed=0):
    from segvol.model import build_model, model_config_from_settings

    torch.manual_seed(seed)
    return build_model(model_config_from_settings(TEST_MODEL))


def _batch(data, keys):
    from torch.utils.data import default_collate

    return default_collate([data[k] for k in keys])


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(stores):
    data = FinetuneSamples(stores["zarr"], stores["pseudo"], spatial_size=(16, 32, 32), seed=3, settings=settings())
    keys = next(iter(DatasetBatches(data, batch_size=2, rank=0, world_size=1, start=0, stop=1, seed=3)))
    batch = _batch(data, keys)
    categories = data.categories[int(batch["store"][0])]
    objective = FinetuneObjective(_model(), pseudo_weight=0.1)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    pairs = float(batch["present"].sum())
    losses = []
    for _ in range(10):
        loss, parts = objective(batch, categories, pairs, 2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert parts["pseudo"] > 0
    assert losses[-1] < 0.85 * losses[0], losses


def test_absent_categories_do_not_contribute(stores):
    data = FinetuneSamples(
        stores["zarr"][:1], [], spatial_size=(16, 32, 32), seed=3, settings=settings(pseudo_passes=0)
    )
    batch = _batch(data, [SampleKey(0, 0, 0), SampleKey(0, 1, 1)])
    batch["present"][:] = True
    objective = FinetuneObjective(_model(), pseudo_weight=0.0)
    categories = data.categories[0]
    full, _ = objective(batch, categories, 4.0, 2.0)
    # Independent expectation: per-pair losses of each combination, summed, divided by the pairs.
    from segvol.finetune.losses import dice_bce

    model = objective.model
    emb = model.encode_image(batch["image"])
    text = model.encode_text(categories)
    per_pair = torch.zeros(2, 2)
    for b in range(2):
        for k in range(2):
            for use_text, use_box, use_points in PROMPT_COMBINATIONS:
                logits = model.decode(
                    emb[b : b + 1],
                    text=text[k : k + 1] if use_text else None,
                    boxes=batch["boxes"][b : b + 1, k] if use_box else None,
                    points=(batch["points"][b : b + 1, k], batch["point_labels"][b : b + 1, k]) if use_points else None,
                )
                per_pair[b, k] += dice_bce(logits[:, 0], batch["labels"][b : b + 1, k])[0].detach()
    assert full.item() == pytest.approx(per_pair.sum().item() / 4, rel=1e-4)
    batch["present"][1, 0] = False
    masked, _ = objective(batch, categories, 3.0, 2.0)
    expected = (per_pair.sum() - per_pair[1, 0]).item() / 3
    assert masked.item() == pytest.approx(expected, rel=1e-4)


def test_per_category_schedule_matches_shared_loss_for_one_category(stores):
    data = FinetuneSamples(
        stores["zarr"][1:], [], spatial_size=(16, 32, 32), seed=3, settings=settings(pseudo_passes=0)
    )
    batch = _batch(data, [SampleKey(0, 0, 0), SampleKey(0, 1, 1)])
    categories = data.categories[0]
    assert len(categories) == 1
    objective = FinetuneObjective(_model(), pseudo_weight=0.0)
    pairs = float(batch["present"].sum())
    shared, _ = objective(batch, categories, pairs, 2.0)
    single, _ = objective(batch, categories, pairs, 2.0, category=0)
    assert shared.item() == pytest.approx(single.item(), rel=1e-4)


# -- the loop: short run, kill and resume -----------------------------------------------------


def _read_losses(path: Path) -> dict[int, float]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def test_kill_and_resume_gives_the_same_losses_and_weights(stores, tmp_path):
    from safetensors.torch import load_file

    from segvol.finetune.train import finetune

    params = settings(steps=5, checkpoint_every=2)
    whole = tmp_path / "whole" / "model.safetensors"
    finetune(stores["zarr"], stores["pseudo"], str(whole), params, TEST_MODEL, seed=7, threads=1, device="cpu")
    assert whole.is_file() and not (tmp_path / "whole" / "model.safetensors.ckpt").exists()

    parted = tmp_path / "parted" / "model.safetensors"
    finetune(
        stores["zarr"], stores["pseudo"], str(parted), params, TEST_MODEL, seed=7, threads=1, device="cpu", stop_after=3
    )
    assert not parted.exists() and (parted.parent / "model.safetensors.ckpt" / "state.pt").is_file()
    finetune(stores["zarr"], stores["pseudo"], str(parted), params, TEST_MODEL, seed=7, threads=1, device="cpu")

    expected = _read_losses(whole.with_name("model.metrics.csv"))
    resumed = _read_losses(parted.with_name("model.metrics.csv"))
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a, b = load_file(str(whole)), load_file(str(parted))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_released_schedule_runs_and_encoder_is_loaded(stores, tmp_path):
    from safetensors.torch import load_file, save_file

    from segvol.finetune.train import finetune

    model = _model(seed=11)
    encoder = tmp_path / "encoder.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("image_encoder.")}, str(encoder)
    )
    out = tmp_path / "released" / "model.safetensors"
    finetune(
        stores["zarr"],
        [],
        str(out),
        settings(steps=1, shared_embedding=False, lr=0.0),
        TEST_MODEL,
        encoder=str(encoder),
        seed=1,
        threads=1,
        device="cpu",
    )
    written = load_file(str(out))
    encoder_keys = [k for k in written if k.startswith("image_encoder.")]
    assert encoder_keys
    for key in encoder_keys:  # lr 0: the written encoder is exactly the loaded one
        torch.testing.assert_close(written[key], model.state_dict()[key])


def test_encoder_with_wrong_shapes_is_rejected(tmp_path):
    from safetensors.torch import save_file

    from segvol.finetune.train import load_encoder_weights

    model = _model()
    path = tmp_path / "bad.safetensors"
    tensors = {k: torch.zeros(1) for k in model.state_dict() if k.startswith("image_encoder.")}
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="bad.safetensors.*shape"):
        load_encoder_weights(model, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_encoder_weights(model, tmp_path / "junk.safetensors")


def test_cli_help_explains_with_an_example(capsys):
    from segvol.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "--pseudo" in text and "--encoder" in text


def test_dataset_reopens_stores_lazily_after_pickling(stores):
    import pickle

    data = FinetuneSamples(stores["zarr"], stores["pseudo"], spatial_size=(16, 32, 32), seed=3, settings=settings())
    key = SampleKey(0, 0, 0)
    before = data[key]  # opens handles in this process
    assert data.reader._groups
    clone = pickle.loads(pickle.dumps(data))  # what a spawned DataLoader worker receives
    assert clone.reader._groups == [] and all(s is None or s._group is None for s in clone.pseudo_stores)
    after = clone[key]
    for name in before:
        assert torch.equal(before[name], after[name]), name


# -- resume keyed on input contents, bitwise reproducibility, log lines ------------------------


def _encoder_file(path: Path, seed: int) -> Path:
    from segvol.model.checkpoint import save_image_encoder

    return save_image_encoder(_model(seed=seed), path)


def test_resume_with_a_changed_encoder_starts_afresh(stores, tmp_path, caplog):
    """Same paths, new encoder content (pretraining reran): the old state must not be resumed."""
    from safetensors.torch import load_file

    from segvol.finetune.train import finetune

    params = settings(steps=3, checkpoint_every=1)
    encoder = _encoder_file(tmp_path / "encoder.safetensors", seed=21)
    out = tmp_path / "run" / "model.safetensors"
    finetune(
        stores["zarr"],
        stores["pseudo"],
        str(out),
        params,
        TEST_MODEL,
        encoder=str(encoder),
        seed=7,
        threads=1,
        device="cpu",
        stop_after=2,
    )
    assert (out.parent / "model.safetensors.ckpt" / "state.pt").is_file()

    _encoder_file(encoder, seed=22)  # overwritten in place
    with caplog.at_level("WARNING", logger="segvol.training.runtime"):
        finetune(
            stores["zarr"],
            stores["pseudo"],
            str(out),
            params,
            TEST_MODEL,
            encoder=str(encoder),
            seed=7,
            threads=1,
            device="cpu",
        )
    assert "encoder changed" in caplog.text and "starting afresh" in caplog.text

    fresh = tmp_path / "fresh" / "model.safetensors"
    finetune(
        stores["zarr"],
        stores["pseudo"],
        str(fresh),
        params,
        TEST_MODEL,
        encoder=str(encoder),
        seed=7,
        threads=1,
        device="cpu",
    )
    assert _read_losses(out.with_name("model.metrics.csv")) == _read_losses(fresh.with_name("model.metrics.csv"))
    a, b = load_file(str(out)), load_file(str(fresh))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_store_content_key_follows_chunks_and_attrs(tmp_path):
    import zarr

    from segvol.training.runtime import content_key

    path = make_store(tmp_path / "ds.zarr", "ds", ["liver"], 2, 3)
    before = content_key(path)
    assert content_key(path) == before and before.startswith("store:")
    group = zarr.open_group(str(path), mode="r+")
    group["case_000"]["image"][:8, :16, :16] = 0.0  # one chunk rewritten: compressed size changes
    after_chunk = content_key(path)
    assert after_chunk != before
    group["case_001"].attrs["intensity"] = {"mean": 0.5}  # per-case statistics
    assert content_key(path) not in (before, after_chunk)


def test_runs_are_bitwise_identical_and_headers_stable(stores, tmp_path):
    """Two processes' worth of runs (fresh model, fresh optimizer) give the same file bytes."""
    import hashlib
    import json

    from segvol.finetune.train import finetune

    params = settings(steps=2, checkpoint_every=0, threads=2)
    digests = []
    try:
        for name in ("a", "b"):
            out = tmp_path / name / "model.safetensors"
            finetune(stores["zarr"], stores["pseudo"], str(out), params, TEST_MODEL, seed=7, device="cpu")
            assert torch.get_num_threads() == 2  # the stage's `threads` setting, not the caller's
            data = out.read_bytes()
            digests.append(hashlib.sha256(data).hexdigest())
            metadata = list(json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"])
            assert metadata == sorted(metadata)
    finally:
        torch.set_num_threads(1)
    assert digests[0] == digests[1]


def test_cli_log_has_plain_progress_lines(stores, tmp_path):
    """stderr to a file (a Snakemake log): whole progress lines, never carriage-return frames."""
    import json
    import subprocess
    import sys

    log = tmp_path / "finetune.log"
    out = tmp_path / "cli" / "model.safetensors"
    params = {"steps": 3, "batch_size": 1, "pseudo_passes": 0, "checkpoint_every": 0, "threads": 1}
    with open(log, "w") as handle:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "segvol",
                "finetune",
                "--zarr",
                *stores["zarr"],
                "--out",
                str(out),
                "--params",
                json.dumps(params),
                "--model",
                json.dumps(TEST_MODEL),
                "--device",
                "cpu",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert out.is_file() and "\r" not in text
    assert max(len(line) for line in text.splitlines()) <= 500
    assert "finetune: 3/3 step (100%)" in text
