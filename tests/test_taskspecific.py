"""Task-specific baselines (Appendix C): label maps, nnU-Net through nnunetv2, SwinUNETR / 3D UX-Net,
the shared loop, their Method wrapper and the Fig 9 / Table 7 commands."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from segvol.cli import main
from segvol.taskspecific.labels import LabelMap, plan_label_map

CATEGORIES = ["liver", "liver tumor", "spleen"]


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def write_store(path, n_cases=4, shape=(16, 32, 32), dataset="tiny", seed=0):
    """A labelled store: a liver ball with a tumour inside it and a spleen ball, bright on dark."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    cases = [f"case_{i:03d}" for i in range(n_cases)]
    for case in cases:
        centre = rng.integers([6, 9, 9], [10, 13, 13])
        liver = ball(shape, centre, 5)
        tumor = ball(shape, centre + 1, 2) & liver
        spleen = ball(shape, (8, 22, 22) + rng.integers(-2, 3, 3), 4)
        labels = np.stack([liver, tumor, spleen]).astype(np.uint8)
        image = 0.1 + 0.3 * liver + 0.3 * tumor + 0.6 * spleen + 0.02 * rng.standard_normal(shape)
        group = root.create_group(case)
        group.create_array("image", data=image.clip(0, 1).astype(np.float32))
        group.create_array("labels", data=labels)
        group.attrs["spacing"] = [2.0, 1.0, 1.0]
    root.attrs.update(
        {
            "dataset": dataset,
            "role": "train",
            "modality": "CT",
            "categories": CATEGORIES,
            "cases": cases,
            "split": {"train": cases[1:], "test": cases[:1], "seed": 0, "test_fraction": 0.2},
            "format_version": 1,
        }
    )
    return path


# --- label maps ---------------------------------------------------------------------------------


def test_label_map_keeps_a_lesion_inside_its_organ():
    shape = (8, 12, 12)
    liver = ball(shape, (4, 6, 6), 4)
    tumor = ball(shape, (4, 6, 6), 2)
    spleen = np.zeros(shape, bool)
    spleen[0, 0, :3] = True
    labels = np.stack([liver, tumor, spleen]).astype(np.uint8)
    plan = plan_label_map(CATEGORIES, [labels])
    assert plan.contains == {"liver": ["liver tumor"]}
    # the smaller, nested category is painted last so it survives in the single-label map
    assert plan.values["liver tumor"] > plan.values["liver"]
    label_map = plan.to_label_map(labels)
    assert (label_map[tumor] == plan.values["liver tumor"]).all()
    masks = LabelMap.from_json(json.loads(json.dumps(plan.to_json()))).masks(label_map)
    for channel, name in enumerate(CATEGORIES):
        np.testing.assert_array_equal(masks[name], labels[channel] > 0)


# --- networks and the shared loop ---------------------------------------------------------------


def test_uxnet_published_configuration_has_the_papers_53_million_parameters():
    from segvol.taskspecific.uxnet import UXNet

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        count = sum(p.numel() for p in UXNet(1, 14).parameters())
    assert abs(count / 1e6 - 53.0) < 0.1, count


@pytest.mark.parametrize(
    "architecture,settings",
    [
        ("uxnet", {"depths": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "hidden_size": 32}),
        ("swinunetr", {"feature_size": 12}),
    ],
)
def test_networks_map_a_patch_to_class_logits_of_the_same_size(architecture, settings):
    from segvol.taskspecific.supervised import build_network

    network = build_network(architecture, 4, settings)
    with torch.no_grad():
        logits = network(torch.zeros(1, 1, 32, 64, 32))
    assert logits.shape == (1, 4, 32, 64, 32)


def test_unknown_architecture_is_refused():
    from segvol.taskspecific.supervised import build_network

    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("unet", 2, {})


def test_shared_loop_lowers_the_loss_on_a_toy_task():
    from segvol.taskspecific.supervised import build_network, train_supervised

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):
        label = np.zeros((32, 16, 16), np.int64)
        d, h, w = rng.integers([8, 5, 5], [24, 11, 11])
        label[d - 5 : d + 5, h - 3 : h + 3, w - 3 : w + 3] = 1
        samples.append(((0.1 * rng.random(label.shape) + 0.8 * label).astype(np.float32), label))
    torch.manual_seed(0)
    network = build_network("uxnet", 2, {"depths": [1, 1, 1, 1], "widths": [4, 8, 16, 32], "hidden_size": 16})
    losses = train_supervised(
        network, samples, {"steps": 15, "batch_size": 1, "lr": 1e-2, "weight_decay": 0.0, "patch_size": [32, 16, 16]}
    )
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


# --- the stage command and the Method wrapper -----------------------------------------------------


def test_uxnet_model_folder_scores_behind_the_method_interface(tmp_path):
    from segvol.evaluate.baselines.taskspecific import TaskSpecificMethod
    from segvol.evaluate.cases import score_store

    store = write_store(tmp_path / "tiny.zarr")
    params = {
        "supervised": {"steps": 2, "batch_size": 1, "patch_size": [16, 32, 32]},
        "uxnet": {"depths": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "hidden_size": 32},
    }
    out = tmp_path / "models" / "uxnet" / "tiny"
    assert (
        main(
            [
                "taskspecific",
                "--method",
                "uxnet",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--params",
                json.dumps(params),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["train_cases"] == ["case_001", "case_002", "case_003"] and manifest["name"] == "3D UX-Net"
    method = TaskSpecificMethod(out)
    rows, _ = score_store(store, [method], split="test")
    assert list(rows["case"].unique()) == ["case_000"] and set(rows["category"]) == set(CATEGORIES)
    assert rows["dice"].between(0, 1).all() and (rows["method"] == "3D UX-Net").all()


def test_swinunetr_trains_on_its_own_patch_size_and_refuses_one_monai_cannot_take(tmp_path, capsys):
    # MONAI's SwinUNETR instance-normalises a 1-voxel bottleneck at 32^3 and fails mid-training; the
    # architecture's own patch_size overrides the shared one, and a bad one stops before any work.
    store = write_store(tmp_path / "tiny.zarr")
    out = tmp_path / "models" / "swinunetr" / "tiny"
    params = {
        "supervised": {"steps": 1, "batch_size": 1, "patch_size": [32, 32, 32]},
        "swinunetr": {"feature_size": 12},
    }
    assert (
        main(
            [
                "taskspecific",
                "--method",
                "swinunetr",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--params",
                json.dumps(params),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multiples of 32, at least 64" in err and "[32, 32, 32]" in err
    assert not out.exists()
    params["swinunetr"]["patch_size"] = [64, 64, 64]
    assert (
        main(
            [
                "taskspecific",
                "--method",
                "swinunetr",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--params",
                json.dumps(params),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["patch_size"] == [64, 64, 64] and manifest["loss_last"] is not None


def test_training_refuses_an_unlabelled_store_and_leaves_nothing(tmp_path, capsys):
    store = write_store(tmp_path / "tiny.zarr")
    root = zarr.open_group(str(store), mode="r+")
    del root["case_001"]["labels"]
    out = tmp_path / "models" / "uxnet"
    assert main(["taskspecific", "--method", "uxnet", "--zarr", str(store), "--out", str(out)]) == 2
    assert "case_001: no 'labels' array" in capsys.readouterr().err
    assert not out.exists() and not list(out.parent.glob(".*tmp*"))


def test_nnunet_export_writes_its_raw_format(tmp_path):
    import SimpleITK as sitk

    from segvol.taskspecific.nnunet import export_raw

    store = write_store(tmp_path / "tiny.zarr")
    folder, label_map = export_raw(store, tmp_path / "raw")
    assert folder.name == "Dataset001_tiny"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and set(meta["labels"]) == {"background", *CATEGORIES}
    image = sitk.ReadImage(str(folder / "imagesTr" / "case_001_0000.nii.gz"))
    assert image.GetSpacing() == (1.0, 1.0, 2.0)  # (x, y, z) = our (W, H, D) reversed
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "case_001.nii.gz")))
    truth = np.asarray(zarr.open_group(str(store), mode="r")["case_001"]["labels"][...]) > 0
    masks = label_map.masks(label)
    for channel, name in enumerate(CATEGORIES):
        np.testing.assert_array_equal(masks[name], truth[channel])


@pytest.mark.slow
def test_nnunet_plans_preprocesses_trains_and_predicts_through_nnunetv2(tmp_path):
    """The real package end to end on tiny data: 1 epoch of 2 iterations on CPU."""
    from segvol.evaluate.baselines.taskspecific import TaskSpecificMethod
    from segvol.evaluate.cases import score_store

    store = write_store(tmp_path / "tiny.zarr")
    out, work = tmp_path / "models" / "nnunet" / "tiny", tmp_path / "work"
    params = {"nnunet": {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}}
    assert (
        main(
            [
                "taskspecific",
                "--method",
                "nnunet",
                "--zarr",
                str(store),
                "--out",
                str(out),
                "--work",
                str(work),
                "--params",
                json.dumps(params),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "model.json").read_text())
    model_folder = out / manifest["nnunet_model_folder"]
    assert model_folder.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    plans = json.loads((model_folder / "plans.json").read_text())
    assert plans["experiment_planner_used"] == "ExperimentPlanner"  # planned by nnU-Net, not by us
    assert (model_folder / "fold_all" / "checkpoint_final.pth").is_file()
    assert (work / "nnUNet_preprocessed" / "Dataset001_tiny" / "dataset_fingerprint.json").is_file()
    log = next((model_folder / "fold_all").glob("training_log_*.txt")).read_text()
    assert "Training done." in log and "Epoch 0" in log
    rows, _ = score_store(store, [TaskSpecificMethod(out)], split="test")
    assert set(rows["category"]) == set(CATEGORIES) and (rows["method"] == "nnU-Net").all()


# --- Fig 9 and Table 7 --------------------------------------------------------------------------


def per_case_rows():
    """SegVol beats nnU-Net by 0.2 on the liver tumour and loses by 0.1 on the kidney tumour."""
    rows = []
    for case, base in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        for method, tumour, kidney_tumour, liver in (
            ("SegVol", base + 0.2, base - 0.1, 0.9),
            ("nnU-Net", base, base, 0.95),
            ("3D UX-Net", base - 0.3, base - 0.3, 0.8),
        ):
            for category, value in (("liver tumor", tumour), ("kidney tumor", kidney_tumour), ("liver", liver)):
                rows.append(
                    {"dataset": "ds", "case": case, "category": category, "method": method, "dice": value, "nsd": value}
                )
    return pd.DataFrame(rows)


def test_table7_compares_segvol_and_nnunet_on_lesions_only():
    from segvol.evaluate.table7 import table7

    table = table7(per_case_rows())
    assert list(table["category"][:2]) == ["kidney tumor", "liver tumor"]  # no organ rows
    lesion = table.set_index("category")
    assert lesion.loc["liver tumor", "difference"] == pytest.approx(0.2)
    assert lesion.loc["kidney tumor", "difference"] == pytest.approx(-0.1)
    average = table[table["dataset"] == "Average"].iloc[0]
    assert average["difference"] == pytest.approx(0.05) and average["n"] == 6


def test_fig9_and_table7_commands(tmp_path):
    from segvol.evaluate.cases import write_parquet

    cases = tmp_path / "ds.parquet"
    write_parquet(per_case_rows(), cases)
    png, summary, table = tmp_path / "fig9.png", tmp_path / "fig9.csv", tmp_path / "table7.csv"
    assert main(["evaluate", "fig9", "--cases", str(cases), "--out", str(summary), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    medians = pd.read_csv(summary).set_index("method")["median"]
    assert list(medians.index) == ["SegVol", "nnU-Net", "3D UX-Net"]
    # pooled over (case, category): nnU-Net {0.5, 0.6, 0.7} x 2 tumours + 0.95 x 3 livers
    assert medians["nnU-Net"] == pytest.approx(0.7) and medians["3D UX-Net"] == pytest.approx(0.4)
    assert main(["evaluate", "table7", "--cases", str(cases), "--out", str(table)]) == 0
    assert pd.read_csv(table)["difference"].iloc[-1] == pytest.approx(0.05)


def test_fig9_names_a_missing_per_case_file(tmp_path, capsys):
    missing = tmp_path / "absent.parquet"
    assert (
        main(
            [
                "evaluate",
                "fig9",
                "--cases",
                str(missing),
                "--out",
                str(tmp_path / "f.csv"),
                "--png",
                str(tmp_path / "f.png"),
            ]
        )
        == 2
    )
    assert f"{missing}: per-case scores not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("f*"))
