"""Ground-truth prompts, per-case scoring, Table 2/3 and the `segvol evaluate` CLI on tiny stores."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

import segvol.infer
from segvol.cli import main
from segvol.evaluate import methods as methods_module
from segvol.evaluate.cases import score_store
from segvol.evaluate.methods import Method
from segvol.evaluate.prompts import positive_points, prompt_from_truth
from segvol.evaluate.table2 import table2
from segvol.evaluate.table3 import table3
from segvol.pseudo.sampling import segment_box

CATEGORIES = ["liver", "spleen", "tumor"]


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def write_store(path, n_cases=3, dataset="ext_tiny", shape=(12, 16, 16)):
    """A dataset store after the CONTRIBUTING.md contract: liver = cube, spleen = ball, tumor empty."""
    root = zarr.open_group(str(path), mode="w")
    cases = [f"case_{i:03d}" for i in range(n_cases)]
    for index, case in enumerate(cases):
        labels = np.zeros((len(CATEGORIES), *shape), np.uint8)
        labels[0, 2:6, 3 : 9 + index, 4:10] = 1
        labels[1] = ball(shape, (8, 10, 10), 3 + index % 2)
        image = (0.2 + 0.5 * labels[0] + 0.3 * labels[1]).astype(np.float32)
        group = root.create_group(case)
        group.create_array("image", data=image)
        group.create_array("labels", data=labels)
        group.attrs["spacing"] = [2.0, 1.0, 1.0]
    root.attrs.update(
        {
            "dataset": dataset,
            "role": "external",
            "modality": "CT",
            "categories": CATEGORIES,
            "cases": cases,
            "split": {"train": cases[1:], "test": cases[:1], "seed": 0, "test_fraction": 0.2},
            "format_version": 1,
        }
    )
    return path


class BoxOracle(Method):
    """Predicts the filled prompt box: its Dice is known without any model."""

    name, prompt = "oracle", "box"

    def predict(self, volume, spacing, prompt):
        mask = np.zeros(volume.shape, bool)
        d0, h0, w0, d1, h1, w1 = prompt.box
        mask[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = True
        return mask


def test_box_prompt_is_tight_and_points_lie_inside_the_mask():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 2:6, 4] = True
    assert prompt_from_truth("box", "liver", mask.astype(np.uint8), np.random.default_rng(0)).box == (1, 2, 4, 2, 5, 4)
    assert prompt_from_truth("box", "liver", np.zeros((2, 2, 2)), np.random.default_rng(0)) is None
    points = positive_points(mask, np.random.default_rng(0))
    assert points.shape == (5, 3) and mask[tuple(points.T)].all()
    again = positive_points(mask, np.random.default_rng(0))
    np.testing.assert_array_equal(points, again)


def test_prompt_kinds():
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1:3] = True
    rng = np.random.default_rng(1)
    both = prompt_from_truth("box+text", "liver", mask, rng)
    assert both.text == "liver" and both.box == (1, 1, 1, 1, 1, 2) and both.points is None
    points = prompt_from_truth("point+text", "liver", mask, rng)
    assert points.box is None and points.points.shape == (5, 3) and (points.point_labels == 1).all()
    assert prompt_from_truth("text", "liver", mask, rng).box is None
    assert prompt_from_truth("box", "liver", np.zeros_like(mask), rng) is None
    with pytest.raises(ValueError, match="prompt kind"):
        prompt_from_truth("mask", "liver", mask, rng)


def test_score_store_rows_and_skips(tmp_path):
    store = write_store(tmp_path / "ext_tiny.zarr")
    rows, skipped = score_store(store, [BoxOracle()])
    assert len(rows) == 3 * 2 and set(rows["category"]) == {"liver", "spleen"}
    assert list(skipped["category"]) == ["tumor"] * 3
    root = zarr.open_group(str(store), mode="r")
    for row in rows.itertuples():
        truth = root[row.case]["labels"][CATEGORIES.index(row.category)] > 0
        box = np.zeros_like(truth)
        d0, h0, w0, d1, h1, w1 = segment_box(truth)
        box[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = True
        assert row.dice == pytest.approx(2 * truth.sum() / (truth.sum() + box.sum()))
    assert (rows.loc[rows.category == "liver", "dice"] == 1.0).all()
    test_rows, _ = score_store(store, [BoxOracle()], split="test")
    assert set(test_rows["case"]) == {"case_000"}


def test_bad_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        score_store(tmp_path / "missing.zarr", [BoxOracle()])
    store = write_store(tmp_path / "bad.zarr", n_cases=1)
    root = zarr.open_group(str(store), mode="r+")
    root["case_000"]["image"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_store(store, [BoxOracle()])


def test_table2_medians_average_and_empty_columns():
    per_case = pd.DataFrame(
        {
            "dataset": ["d"] * 5,
            "case": ["a", "b", "c", "a", "b"],
            "category": ["liver"] * 3 + ["spleen"] * 2,
            "method": ["SegVol"] * 5,
            "dice": [0.5, 0.9, 0.7, 0.2, np.nan],
        }
    )
    table = table2(per_case, ["SegVol", "MedSAM"]).set_index("category")
    assert table.loc["liver", "SegVol"] == pytest.approx(0.7)
    assert table.loc["spleen", "SegVol"] == pytest.approx(0.2)
    assert table.loc["Average", "SegVol"] == pytest.approx((0.7 + 0.2) / 2)
    assert table["MedSAM"].isna().all()


def test_table3_one_row_per_mode():
    per_case = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "case": ["a", "a", "b", "b"],
            "mode": ["zoom", "resize"] * 2,
            "dice": [0.9, 0.5, 0.7, 0.3],
            "case_seconds": [2.0, 1.0, 4.0, 1.0],
        }
    )
    table = table3(per_case).set_index("mode")
    assert list(table.index) == ["resize", "zoom"]
    assert table.loc["zoom", "median_dice"] == pytest.approx(0.8)
    assert table.loc["zoom", "median_ms_per_case"] == pytest.approx(3000.0)


class Prompt:
    def __init__(self, text=None, box=None, points=None, point_labels=None):
        self.text, self.box, self.points, self.point_labels = text, box, points, point_labels


def box_segment(model, volume, prompts, mode="zoom", **kwargs):
    """Stand-in for segvol.infer.segment: logits +1 inside each prompt's box, -1 outside."""
    import torch

    logits = -torch.ones(len(prompts), *volume.shape)
    for k, prompt in enumerate(prompts):
        d0, h0, w0, d1, h1, w1 = prompt.box
        logits[k, d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = 1
    return logits


@pytest.fixture
def stub_segvol(monkeypatch):
    monkeypatch.setattr(segvol.infer, "segment", box_segment, raising=False)
    monkeypatch.setattr(segvol.infer, "Prompt", Prompt, raising=False)
    monkeypatch.setattr(methods_module, "load_segvol", lambda checkpoint, settings=None, device=None: object())


def test_cli_cases_table2_table3(tmp_path, stub_segvol):
    stores = [write_store(tmp_path / f"ext_{n}.zarr", dataset=f"ext_{n}") for n in ("a", "b")]
    params = json.dumps({"methods": ["SegVol", "SAM", "MedSAM"], "baseline_checkpoints": {"SAM": None}})
    outputs = []
    for store in stores:
        out = tmp_path / "cases" / f"{store.stem}.parquet"
        assert (
            main(
                [
                    "evaluate",
                    "cases",
                    "--checkpoint",
                    "m.safetensors",
                    "--zarr",
                    str(store),
                    "--out",
                    str(out),
                    "--params",
                    params,
                ]
            )
            == 0
        )
        outputs.append(str(out))
    rows = pd.read_parquet(outputs[0])
    assert set(rows["method"]) == {"SegVol"} and set(rows["prompt"]) == {"box+text"}
    assert {"dataset", "case", "category", "method", "prompt", "dice", "nsd", "seconds"} <= set(rows.columns)
    assert (rows.loc[rows.category == "liver", "dice"] == 1.0).all()

    table_path, sidecar = tmp_path / "table2.csv", tmp_path / "methods.json"
    assert (
        main(
            [
                "evaluate",
                "table2",
                "--cases",
                *outputs,
                "--out",
                str(table_path),
                "--per-case",
                str(tmp_path / "per_case.parquet"),
                "--methods",
                str(sidecar),
                "--params",
                params,
            ]
        )
        == 0
    )
    table = pd.read_csv(table_path)
    assert list(table.columns) == ["dataset", "category", "SegVol", "SAM (point)", "SAM (box)", "MedSAM"]
    assert list(table["category"]) == ["liver", "spleen", "Average"] * 2
    assert table[["SAM (point)", "SAM (box)", "MedSAM"]].isna().all().all()
    expected = rows[rows.category == "spleen"]["dice"].median()
    assert table.loc[(table.dataset == "ext_a") & (table.category == "spleen"), "SegVol"].item() == pytest.approx(
        expected, abs=1e-4
    )
    reasons = json.loads(sidecar.read_text(encoding="utf-8"))["columns"]
    assert set(reasons["MedSAM"].values()) == {"not run: no checkpoint"}

    table3_path = tmp_path / "table3.csv"
    assert (
        main(["evaluate", "table3", "--checkpoint", "m", "--zarr", *map(str, stores), "--out", str(table3_path)]) == 0
    )
    t3 = pd.read_csv(table3_path)
    assert list(t3["mode"]) == ["resize", "window", "zoom"]
    assert (t3["median_ms_per_case"] > 0).all() and (t3["cases"] == 6).all()


def test_table2_gets_a_column_for_a_baseline_with_a_checkpoint(tmp_path, stub_segvol, monkeypatch):
    """SAM-Med3D (a small stand-in of its architecture, in its released checkpoint format) fills its column."""
    import torch

    from segvol.evaluate.baselines import sam

    small = {
        **sam.ARCHITECTURES["sam-med3d"],
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "global_attn_indexes": (1,),
        "window_size": 3,
        "img_size": 32,
        "prompt_dim": 48,
    }
    monkeypatch.setitem(sam.ARCHITECTURES, "sam-med3d", small)
    checkpoint = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": sam.build("sam-med3d").state_dict()}, checkpoint)
    store = write_store(tmp_path / "ext_a.zarr", dataset="ext_a")
    params = json.dumps(
        {"methods": ["SegVol", "SAM-Med2D", "SAM-Med3D"], "baseline_checkpoints": {"SAM-Med3D": str(checkpoint)}}
    )
    cases = tmp_path / "cases.parquet"
    assert (
        main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(cases), "--params", params])
        == 0
    )
    rows = pd.read_parquet(cases)
    assert set(rows["method"]) == {"SegVol", "SAM-Med3D"}
    assert set(rows.loc[rows.method == "SAM-Med3D", "prompt"]) == {"point"}
    sidecar = tmp_path / "methods.json"
    assert (
        main(
            [
                "evaluate",
                "table2",
                "--cases",
                str(cases),
                "--out",
                str(tmp_path / "t2.csv"),
                "--per-case",
                str(tmp_path / "pc.parquet"),
                "--methods",
                str(sidecar),
                "--params",
                params,
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "t2.csv")
    assert list(table.columns) == ["dataset", "category", "SegVol", "SAM-Med2D", "SAM-Med3D"]
    assert table["SAM-Med3D"].between(0, 1).all() and table["SAM-Med2D"].isna().all()
    reasons = json.loads(sidecar.read_text(encoding="utf-8"))["columns"]
    assert set(reasons["SAM-Med3D"].values()) == {f"ran: {checkpoint}"}
    assert set(reasons["SAM-Med2D"].values()) == {"not run: no checkpoint"}


def test_cli_bad_store_leaves_no_output(tmp_path, stub_segvol, capsys):
    out = tmp_path / "x.parquet"
    assert (
        main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(tmp_path / "nope.zarr"), "--out", str(out)]) == 2
    )
    assert "nope.zarr" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "evaluate",
                "cases",
                "--checkpoint",
                "m",
                "--zarr",
                str(tmp_path / "nope.zarr"),
                "--out",
                str(out),
                "--params",
                '{"prompt": "box+text", "colour": 1}',
            ]
        )
        == 2
    )


def test_cases_and_table3_with_a_real_tiny_model(tmp_path):
    """The real network and `segvol.infer.segment` behind the CLI (random weights: plumbing only)."""
    checkpoints = pytest.importorskip("segvol.model.checkpoint")
    import torch

    from segvol.model import build_model, model_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.safetensors"
    checkpoints.save(build_model(model_config("tiny", text_encoder="minilm")), checkpoint)
    store = write_store(tmp_path / "ext_real.zarr", n_cases=1, dataset="ext_real", shape=(20, 40, 36))
    out = tmp_path / "cases.parquet"
    assert (
        main(
            [
                "evaluate",
                "cases",
                "--checkpoint",
                str(checkpoint),
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--params",
                json.dumps({"methods": ["SegVol", "MedSAM"]}),
            ]
        )
        == 0
    )
    rows = pd.read_parquet(out)
    assert len(rows) == 2 and rows["dice"].between(0, 1).all() and (rows["seconds"] > 0).all()
    assert (
        main(
            [
                "evaluate",
                "table3",
                "--checkpoint",
                str(checkpoint),
                "--zarr",
                str(store),
                "--out",
                str(tmp_path / "t3.csv"),
            ]
        )
        == 0
    )
    assert list(pd.read_csv(tmp_path / "t3.csv")["mode"]) == ["resize", "window", "zoom"]
