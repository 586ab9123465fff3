"""Fig 2/3a/3b/5, Table 6, rotation and MRI subcommands on tiny stores with a stub SegVol."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

import segvol.infer
from segvol.cli import main
from segvol.evaluate import methods as methods_module
from segvol.evaluate.ablations import mr_like, rotate_case, run_number
from segvol.evaluate.prompts import tight_box
from segvol.evaluate.stores import Case
from tests.test_evaluate import Prompt, box_segment, write_store


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(segvol.infer, "segment", box_segment, raising=False)
    monkeypatch.setattr(segvol.infer, "Prompt", Prompt, raising=False)
    model = torch.nn.Linear(4, 3)  # a model with a known parameter count: 15
    monkeypatch.setattr(methods_module, "load_segvol", lambda checkpoint, settings=None, device=None: model)
    return model


def test_fig2_fig3a_fig3b_from_parquet(tmp_path, stub):
    store = write_store(tmp_path / "abdomen_a.zarr", n_cases=4, dataset="abdomen_a")
    runs = []
    for run in ("first1", "segvol"):
        out = tmp_path / f"{run}.parquet"
        assert main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(out),
                     "--label", run, "--segvol-only"]) == 0
        runs.append(str(out))
    assert main(["evaluate", "fig3a", "--cases", *runs, "--total", "3", "--out", str(tmp_path / "a.csv"),
                 "--png", str(tmp_path / "a.png")]) == 0
    scaling = pd.read_csv(tmp_path / "a.csv")
    assert list(scaling["run"]) == ["first1", "segvol"] and list(scaling["n_datasets"]) == [1, 3]
    expected = pd.read_parquet(runs[0])["dice"].median()
    assert scaling["median_dice"][0] == pytest.approx(expected, abs=1e-4)

    prompts = tmp_path / "prompts.parquet"
    assert main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(prompts),
                 "--prompts", "box,box+text", "--segvol-only", "--split", "test"]) == 0
    assert set(pd.read_parquet(prompts)["prompt"]) == {"box", "box+text"}
    assert main(["evaluate", "fig3b", "--cases", str(prompts), "--out", str(tmp_path / "b.csv"),
                 "--png", str(tmp_path / "b.png")]) == 0
    combos = pd.read_csv(tmp_path / "b.csv")
    assert set(combos["category"]) == {"liver", "spleen", "All"}
    assert main(["evaluate", "fig2", "--per-case", runs[1], "--png", str(tmp_path / "v.png"),
                 "--params", json.dumps({"methods": ["SegVol"]})]) == 0
    for name in ("a.png", "b.png", "v.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(prompts),
                 "--prompts", "box,scribble"]) == 2


def test_run_number():
    assert run_number("first2", 5) == 2 and run_number("segvol", 5) == 5
    with pytest.raises(ValueError):
        run_number("last2", 5)


def test_rotation_by_90_degrees_matches_rot90():
    image = np.random.default_rng(0).random((4, 9, 9)).astype(np.float32)
    labels = np.zeros((1, 4, 9, 9), bool)
    labels[0, 1:3, 1:4, 2:7] = True
    case = Case("d", "c", image, labels, ["liver"], (1.0, 1.0, 1.0))
    rotated = rotate_case(case, 90, 0, 0)
    np.testing.assert_array_equal(rotated.labels[0], np.rot90(labels[0], 1, axes=(1, 2)))
    np.testing.assert_allclose(rotated.image, np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
    tilted = rotate_case(case, 45, 5.73, 5.73)
    assert tilted.image.shape == image.shape and tilted.labels.shape == labels.shape


def test_mr_like_keeps_air_and_reorders_contrast():
    ct = np.array([0.0, 0.3, 0.5, 0.95], np.float32).reshape(1, 4, 1)
    mr = mr_like(ct)
    assert mr[0, 0, 0] == 0.0
    assert mr[0, 2, 0] > mr[0, 3, 0]  # dense tissue becomes darker than soft tissue: a new contrast


def test_rotation_mri_table6(tmp_path, stub):
    store = write_store(tmp_path / "ext.zarr", n_cases=2, dataset="ext")
    common = ["--checkpoint", "m", "--zarr", str(store)]
    assert main(["evaluate", "rotation", *common, "--out", str(tmp_path / "r.csv"), "--per-case",
                 str(tmp_path / "r.parquet"), "--png", str(tmp_path / "r.png")]) == 0
    rotation = pd.read_csv(tmp_path / "r.csv").set_index("category")
    per_case = pd.read_parquet(tmp_path / "r.parquet")
    assert set(per_case["variant"]) == {"original", "rotated"}
    original = per_case[(per_case.variant == "original") & (per_case.category == "liver")]["dice"].median()
    assert rotation.loc["liver", "original"] == pytest.approx(original, abs=1e-4) == pytest.approx(1.0)
    # a box oracle on a cube rotated 45 degrees covers more than the cube: Dice drops
    assert rotation.loc["liver", "dice_drop"] > 0.05

    assert main(["evaluate", "mri", *common, "--stand-in", "--out", str(tmp_path / "m.csv"), "--per-case",
                 str(tmp_path / "m.parquet"), "--png", str(tmp_path / "m.png")]) == 0
    assert set(pd.read_csv(tmp_path / "m.csv")["modality"]) == {"CT", "MR-like stand-in"}

    assert main(["evaluate", "table6", *common, "--out", str(tmp_path / "t6.csv"), "--per-case",
                 str(tmp_path / "t6.parquet")]) == 0
    table6 = pd.read_csv(tmp_path / "t6.csv")
    assert table6["parameters"][0] == 15
    assert table6["cases"][0] == 2 and table6["seconds_per_case"][0] > 0


def test_table6_adds_the_baselines_that_run(tmp_path, stub, monkeypatch):
    from segvol.evaluate.baselines import sam

    small = {**sam.ARCHITECTURES["sam-med3d"], "embed_dim": 32, "depth": 2, "num_heads": 2,
             "global_attn_indexes": (1,), "window_size": 3, "img_size": 32, "prompt_dim": 48}
    monkeypatch.setitem(sam.ARCHITECTURES, "sam-med3d", small)
    checkpoint = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": sam.build("sam-med3d").state_dict()}, checkpoint)
    store = write_store(tmp_path / "ext.zarr", n_cases=2, dataset="ext")
    params = {"methods": ["SegVol", "SAM", "SAM-Med3D"], "baseline_checkpoints": {"SAM-Med3D": str(checkpoint)}}
    assert main(["evaluate", "table6", "--checkpoint", "m", "--zarr", str(store), "--out", str(tmp_path / "t6.csv"),
                 "--per-case", str(tmp_path / "t6.parquet"), "--params", json.dumps(params)]) == 0
    table6 = pd.read_csv(tmp_path / "t6.csv").set_index("method")
    assert list(table6.index) == ["SegVol", "SAM-Med3D"]  # SAM has no checkpoint: no row
    assert table6.loc["SAM-Med3D", "parameters"] == sum(p.numel() for p in sam.build("sam-med3d").parameters())
    assert table6.loc["SAM-Med3D", "gmacs_per_case"] > 0 and table6.loc["SAM-Med3D", "cases"] == 2
    assert set(pd.read_parquet(tmp_path / "t6.parquet")["method"]) == {"SegVol", "SAM-Med3D"}


def test_fig5_identifies_the_category_whose_text_matches_the_box(tmp_path, monkeypatch, stub):
    store = write_store(tmp_path / "abdomen_a.zarr", n_cases=2, dataset="abdomen_a")
    root = zarr.open_group(str(store), mode="r")
    boxes = {}  # category -> its boxes in every case: a text prompt segments where its category lies
    for case in root.attrs["cases"]:
        for index, name in enumerate(root.attrs["categories"]):
            box = tight_box(root[case]["labels"][index])
            if box is not None:
                boxes.setdefault(name, []).append(box)

    def text_aware(model, volume, prompts, mode="zoom", **kwargs):
        spatial = [p for p in prompts if p.box is not None]
        logits = box_segment(model, volume, spatial) if spatial else -torch.ones(len(prompts), *volume.shape)
        for k, prompt in enumerate(prompts):
            if prompt.box is None:
                for d0, h0, w0, d1, h1, w1 in boxes.get(prompt.text, []):
                    logits[k, d0:d1 + 1, h0:h1 + 1, w0:w1 + 1] = 1
        return logits

    monkeypatch.setattr(segvol.infer, "segment", text_aware)
    out = tmp_path / "f5.csv"
    assert main(["evaluate", "fig5", "--checkpoint", "m", "--zarr", str(store), "--out", str(out),
                 "--per-case", str(tmp_path / "f5.parquet"), "--png", str(tmp_path / "f5.png")]) == 0
    summary = pd.read_csv(out).set_index("top_k")
    assert summary.loc[1, "accuracy"] == 1.0 and summary.loc[1, "examples"] == 4
    rows = pd.read_parquet(tmp_path / "f5.parquet")
    assert (rows["predicted"] == rows["category"]).all()
    assert (tmp_path / "f5.png").read_bytes()[:4] == b"\x89PNG"
