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
from segvol.evaluate.fig3a import run_number
from segvol.evaluate.mri import mr_like
from segvol.evaluate.rotation import rotate_case
from segvol.evaluate.stores import Case
from segvol.pseudo.sampling import segment_box
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
        assert (
            main(
                [
                    "evaluate",
                    "cases",
                    "--checkpoint",
                    "m",
                    "--zarr",
                    str(store),
                    "--out",
                    str(out),
                    "--label",
                    run,
                    "--segvol-only",
                ]
            )
            == 0
        )
        runs.append(str(out))
    assert (
        main(
            [
                "evaluate",
                "fig3a",
                "--cases",
                *runs,
                "--total",
                "3",
                "--out",
                str(tmp_path / "a.csv"),
                "--png",
                str(tmp_path / "a.png"),
            ]
        )
        == 0
    )
    scaling = pd.read_csv(tmp_path / "a.csv")
    assert list(scaling["run"]) == ["first1", "segvol"] and list(scaling["n_datasets"]) == [1, 3]
    expected = pd.read_parquet(runs[0])["dice"].median()
    assert scaling["median_dice"][0] == pytest.approx(expected, abs=1e-4)

    prompts = tmp_path / "prompts.parquet"
    assert (
        main(
            [
                "evaluate",
                "cases",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(prompts),
                "--prompts",
                "box,box+text",
                "--segvol-only",
                "--split",
                "test",
            ]
        )
        == 0
    )
    assert set(pd.read_parquet(prompts)["prompt"]) == {"box", "box+text"}
    assert (
        main(
            [
                "evaluate",
                "fig3b",
                "--cases",
                str(prompts),
                "--out",
                str(tmp_path / "b.csv"),
                "--png",
                str(tmp_path / "b.png"),
            ]
        )
        == 0
    )
    combos = pd.read_csv(tmp_path / "b.csv")
    assert set(combos["category"]) == {"liver", "spleen", "All"}
    assert (
        main(
            [
                "evaluate",
                "fig2",
                "--per-case",
                runs[1],
                "--png",
                str(tmp_path / "v.png"),
                "--params",
                json.dumps({"methods": ["SegVol"]}),
            ]
        )
        == 0
    )
    for name in ("a.png", "b.png", "v.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert (
        main(
            [
                "evaluate",
                "cases",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(prompts),
                "--prompts",
                "box,scribble",
            ]
        )
        == 2
    )


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
    assert (
        main(
            [
                "evaluate",
                "rotation",
                *common,
                "--out",
                str(tmp_path / "r.csv"),
                "--per-case",
                str(tmp_path / "r.parquet"),
                "--png",
                str(tmp_path / "r.png"),
            ]
        )
        == 0
    )
    rotation = pd.read_csv(tmp_path / "r.csv").set_index("category")
    per_case = pd.read_parquet(tmp_path / "r.parquet")
    assert set(per_case["variant"]) == {"original", "rotated"}
    original = per_case[(per_case.variant == "original") & (per_case.category == "liver")]["dice"].median()
    assert rotation.loc["liver", "original"] == pytest.approx(original, abs=1e-4) == pytest.approx(1.0)
    # a box oracle on a cube rotated 45 degrees covers more than the cube: Dice drops
    assert rotation.loc["liver", "dice_drop"] > 0.05

    assert (
        main(
            [
                "evaluate",
                "mri",
                *common,
                "--stand-in",
                "--out",
                str(tmp_path / "m.csv"),
                "--per-case",
                str(tmp_path / "m.parquet"),
                "--png",
                str(tmp_path / "m.png"),
            ]
        )
        == 0
    )
    assert set(pd.read_csv(tmp_path / "m.csv")["modality"]) == {"CT", "MR-like stand-in"}

    assert (
        main(
            [
                "evaluate",
                "table6",
                *common,
                "--out",
                str(tmp_path / "t6.csv"),
                "--per-case",
                str(tmp_path / "t6.parquet"),
            ]
        )
        == 0
    )
    table6 = pd.read_csv(tmp_path / "t6.csv")
    assert table6["parameters"][0] == 15
    assert table6["cases"][0] == 2 and table6["seconds_per_case"][0] > 0


def test_table6_adds_the_baselines_that_run(tmp_path, stub, monkeypatch):
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
    store = write_store(tmp_path / "ext.zarr", n_cases=2, dataset="ext")
    params = {"methods": ["SegVol", "SAM", "SAM-Med3D"], "baseline_checkpoints": {"SAM-Med3D": str(checkpoint)}}
    assert (
        main(
            [
                "evaluate",
                "table6",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(tmp_path / "t6.csv"),
                "--per-case",
                str(tmp_path / "t6.parquet"),
                "--params",
                json.dumps(params),
            ]
        )
        == 0
    )
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
            box = segment_box(root[case]["labels"][index] > 0).tolist()
            if box[0] >= 0:
                boxes.setdefault(name, []).append(box)

    def text_aware(model, volume, prompts, mode="zoom", **kwargs):
        spatial = [p for p in prompts if p.box is not None]
        logits = box_segment(model, volume, spatial) if spatial else -torch.ones(len(prompts), *volume.shape)
        for k, prompt in enumerate(prompts):
            if prompt.box is None:
                for d0, h0, w0, d1, h1, w1 in boxes.get(prompt.text, []):
                    logits[k, d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = 1
        return logits

    monkeypatch.setattr(segvol.infer, "segment", text_aware)
    out = tmp_path / "f5.csv"
    assert (
        main(
            [
                "evaluate",
                "fig5",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--per-case",
                str(tmp_path / "f5.parquet"),
                "--png",
                str(tmp_path / "f5.png"),
            ]
        )
        == 0
    )
    summary = pd.read_csv(out).set_index("top_k")
    assert summary.loc[1, "accuracy"] == 1.0 and summary.loc[1, "examples"] == 4
    rows = pd.read_parquet(tmp_path / "f5.parquet")
    assert (rows["predicted"] == rows["category"]).all()
    assert (tmp_path / "f5.png").read_bytes()[:4] == b"\x89PNG"


def box_and_click_segment(model, volume, prompts, mode="zoom", **kwargs):
    """Stand-in for segvol.infer.segment: +1 inside the box, then each click sets a 5^3 cube."""
    logits = -torch.ones(len(prompts), *volume.shape)
    for k, prompt in enumerate(prompts):
        if prompt.box is not None:
            d0, h0, w0, d1, h1, w1 = prompt.box
            logits[k, d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = 1
        for point, label in zip(prompt.points or [], prompt.point_labels or []):
            d, h, w = (int(v) for v in point)
            logits[k, max(d - 2, 0) : d + 3, max(h - 2, 0) : h + 3, max(w - 2, 0) : w + 3] = 1 if label == 1 else -1
    return logits


def test_interactive_protocol_and_statistics_commands(tmp_path, stub, monkeypatch):
    monkeypatch.setattr(segvol.infer, "segment", box_and_click_segment, raising=False)
    store = write_store(tmp_path / "ext_organs.zarr", n_cases=3, dataset="ext_organs")
    out, steps, png = tmp_path / "interactive.csv", tmp_path / "steps.parquet", tmp_path / "curve.png"
    assert (
        main(
            [
                "evaluate",
                "interactive",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--per-step",
                str(steps),
                "--png",
                str(png),
                "--params",
                json.dumps({"methods": ["SegVol"]}),
            ]
        )
        == 0
    )
    per_step = pd.read_parquet(steps)
    assert set(per_step["step"]) == set(range(6))
    assert per_step.groupby(["case", "category"]).size().eq(6).all()
    table = pd.read_csv(out).set_index("category")
    assert {"dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds_per_step", "n"} <= set(table.columns)
    assert (table["n"] == 3).all()
    for category, block in per_step.groupby("category"):
        curves = block.sort_values("step").groupby("case")["dsc"].apply(list)
        assert all(curve[0] > 0.3 for curve in curves)  # the box step follows the box
        auc = np.median([np.trapezoid(curve[1:], dx=1.0) for curve in curves])
        assert table.loc[category, "dsc_auc"] == pytest.approx(auc, abs=1e-4)
        assert table.loc[category, "dsc_final"] == pytest.approx(np.median([c[-1] for c in curves]), abs=1e-4)
    assert png.read_bytes()[:4] == b"\x89PNG"

    cases = tmp_path / "cases.parquet"
    assert (
        main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(cases), "--segvol-only"])
        == 0
    )
    stats = tmp_path / "stats.csv"
    assert main(["evaluate", "statistics", "--per-case", str(cases), "--out", str(stats)]) == 0
    frame = pd.read_csv(stats)
    assert {"median", "ci_low", "ci_high", "n", "wilcoxon_p"} <= set(frame.columns)
    assert (frame["ci_low"] <= frame["median"] + 1e-9).all() and (frame["n"] == 3).all()


def test_pick_cases_best_median_worst():
    from segvol.evaluate.pictures import pick_cases

    frame = pd.DataFrame(
        {
            "dataset": "d",
            "category": "liver",
            "method": "SegVol",
            "case": [f"c{i}" for i in range(5)],
            "dice": [0.5, 0.9, 0.1, 0.7, 0.3],
        }
    )
    frame = pd.concat([frame, frame.assign(method="SAM (box)", dice=1.0)])
    picks = pick_cases(frame).set_index("rank")
    assert picks.loc["best", "case"] == "c1" and picks.loc["median", "case"] == "c0"
    assert picks.loc["worst", "case"] == "c2"


def test_gallery_and_fig4(tmp_path, stub, monkeypatch):
    store = write_store(tmp_path / "ext_organs.zarr", n_cases=3, dataset="ext_organs")
    cases = tmp_path / "cases.parquet"
    assert (
        main(["evaluate", "cases", "--checkpoint", "m", "--zarr", str(store), "--out", str(cases), "--segvol-only"])
        == 0
    )
    png = tmp_path / "gallery.png"
    assert (
        main(
            [
                "evaluate",
                "gallery",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--per-case",
                str(cases),
                "--png",
                str(png),
                "--params",
                json.dumps({"methods": ["SegVol"]}),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"

    # A store whose tumour lies inside its liver; the stub reads text as an intensity threshold.
    root = zarr.open_group(str(tmp_path / "lesions.zarr"), mode="w")
    image = np.zeros((16, 24, 24), np.float32)
    image[3:13, 4:20, 4:20] = 0.6
    image[6:10, 9:15, 9:15] = 0.95
    labels = np.stack([image >= 0.6, image >= 0.95]).astype(np.uint8)
    group = root.create_group("case_000")
    group.create_array("image", data=image)
    group.create_array("labels", data=labels)
    group.attrs["spacing"] = [2.0, 1.0, 1.0]
    root.attrs.update(
        {
            "dataset": "lesions",
            "role": "train",
            "modality": "CT",
            "categories": ["liver", "liver tumor"],
            "cases": ["case_000"],
            "format_version": 1,
        }
    )

    def text_segment(model, volume, prompts, mode="zoom", **kwargs):
        logits = -torch.ones(len(prompts), *volume.shape)
        for k, prompt in enumerate(prompts):
            if prompt.text is not None:
                threshold = {"liver": 0.5, "liver tumor": 0.9}[prompt.text]
                logits[k][torch.from_numpy(volume >= threshold)] = 1
            else:
                d, h, w = prompt.points[0]
                logits[k, d - 1 : d + 2, h - 1 : h + 2, w - 1 : w + 2] = 1
        return logits

    monkeypatch.setattr(segvol.infer, "segment", text_segment, raising=False)
    out, png4 = tmp_path / "fig4.csv", tmp_path / "fig4.png"
    assert (
        main(
            [
                "evaluate",
                "fig4",
                "--checkpoint",
                "m",
                "--zarr",
                str(tmp_path / "lesions.zarr"),
                "--out",
                str(out),
                "--png",
                str(png4),
            ]
        )
        == 0
    )
    table = pd.read_csv(out).set_index(["prompt", "category"])["dice"]
    assert table["point + 'liver tumor'", "liver tumor"] == 1.0 and table["point + 'liver'", "liver"] == 1.0
    assert table["point + 'liver'", "liver tumor"] < 0.5 and table["point only", "liver"] < 0.2
    assert png4.read_bytes()[:4] == b"\x89PNG"


def test_nested_pair_finds_a_tumour_cut_out_of_its_organ():
    from segvol.evaluate.pictures import nested_pair

    liver = np.zeros((16, 24, 24), bool)
    liver[3:13, 4:20, 4:20] = True
    tumour = np.zeros_like(liver)
    tumour[6:10, 9:15, 9:15] = True
    spleen = np.zeros_like(liver)
    spleen[2:6, 20:24, 0:4] = True
    labels = np.stack([liver & ~tumour, tumour, spleen])
    assert nested_pair(["liver", "liver tumor", "spleen"], labels) == (1, 0)
    assert nested_pair(["liver", "spleen"], labels[[0, 2]]) is None
