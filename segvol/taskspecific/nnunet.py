"""nnU-Net v2 per dataset, through the `nnunetv2` package itself (no re-implementation).

Our normalized store's train split is exported to nnU-Net's raw format (`imagesTr/<case>_0000.nii.gz`,
`labelsTr/<case>.nii.gz`, `dataset.json`), then nnU-Net's own Python entry points run what
`nnUNetv2_plan_and_preprocess`, `nnUNetv2_train` and `nnUNetv2_predict` run: fingerprint ->
`ExperimentPlanner` -> `DefaultPreprocessor` -> `nnUNetTrainer.run_training()` -> `nnUNetPredictor`.
The environment variables `nnUNet_raw`/`nnUNet_preprocessed` point inside our `data/` tree and
`nnUNet_results` at the model folder, one dataset per tree (so every dataset is `Dataset001_<name>`).

The trainer is nnU-Net's `nnUNetTrainer`; only its schedule attributes (`num_epochs`,
`num_iterations_per_epoch`, `num_val_iterations_per_epoch`, set in its `__init__`) are changed
for the demo, so the checkpoint still names a trainer class nnU-Net finds at prediction time.
The paper's setting is nnU-Net's default (1000 epochs x 250 iterations, fold `all` here, since the
20 % test split is held out by our store). Images are our [0, 1] normalized volumes with channel
name "CT"; overlapping categories go through `segvol.taskspecific.labels.LabelMap`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from segvol.taskspecific.labels import LabelMap, plan_label_map

log = logging.getLogger(__name__)

DATASET_ID = 1
TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"


def dataset_folder_name(name: str) -> str:
    """nnU-Net's `DatasetXXX_Name` (only letters, digits, '-' and '_' in the name part)."""
    return f"Dataset{DATASET_ID:03d}_{re.sub(r'[^A-Za-z0-9_-]+', '-', name) or 'data'}"


@contextmanager
def nnunet_environment(raw: Path, preprocessed: Path, results: Path, processes: int = 1):
    """nnU-Net's folder variables (read lazily by nnunetv2 >= 2.6) and single-process settings."""
    names = {
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(results),
        "nnUNet_n_proc_DA": "0",
        "nnUNet_compile": "false",
        "nnUNet_def_n_proc": str(processes),
    }
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def export_raw(store_path: str | Path, raw: Path, split: str = "train") -> tuple[Path, LabelMap]:
    """Write `split` of a dataset store as nnU-Net raw data. Returns (dataset folder, label map)."""
    import SimpleITK as sitk

    from segvol.taskspecific.data import training_cases

    store, cases = training_cases(store_path, split)
    label_map = plan_label_map(store.categories, (np.asarray(store.case(case)["labels"][...]) for case in cases))
    folder = raw / dataset_folder_name(store.name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        group = store.case(case)
        # SimpleITK reads a (D, H, W) array as (z, y, x): spacing goes in reversed, nnU-Net reverses it back.
        spacing = [float(s) for s in store.case_attrs(case).get("spacing", (1.0, 1.0, 1.0))][::-1]
        image = sitk.GetImageFromArray(np.asarray(group["image"][...], np.float32))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.GetImageFromArray(label_map.to_label_map(np.asarray(group["labels"][...])))
        label.SetSpacing(spacing)
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case}.nii.gz"))
    categories = store.categories
    labels = {"background": 0, **{name: label_map.values[name] for name in categories}}
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": labels,
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    return folder, label_map


def train(store_path: str | Path, out: Path, work: Path, settings: dict, device) -> dict:
    """Export, plan, preprocess and train nnU-Net on a store's train split; the model lands in `out`.

    settings: the `taskspecific.nnunet` block (configuration, epochs, iterations_per_epoch,
    val_iterations_per_epoch, gpu_memory_gb, processes). Returns the manifest entries of the model.
    """
    import torch

    if work.exists():
        shutil.rmtree(work)  # a stale export or preprocessing from an earlier run must not leak in
    raw, preprocessed = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    configuration = settings["configuration"]
    processes = int(settings["processes"])
    with nnunet_environment(raw, preprocessed, out, processes):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiment_dataset,
            preprocess_dataset,
        )
        from nnunetv2.run.run_training import get_trainer_from_args

        folder, label_map = export_raw(store_path, raw)
        extract_fingerprint_dataset(
            DATASET_ID,
            num_processes=processes,
            check_dataset_integrity=True,
            clean=True,
            verbose=False,
            show_progress_bar=False,
        )
        # The planner sizes its test networks with nnUNet_n_proc_DA threads (0 is refused there);
        # training then reads 0 as "augment in this process" (no worker processes on a small machine).
        os.environ["nnUNet_n_proc_DA"] = str(processes)
        plan_experiment_dataset(DATASET_ID, gpu_memory_target_in_gb=settings["gpu_memory_gb"])
        os.environ["nnUNet_n_proc_DA"] = "0"
        plans_file = preprocessed / folder.name / f"{PLANS}.json"
        plans = load_json(str(plans_file))
        if configuration not in plans["configurations"]:
            raise ValueError(
                f"{plans_file}: nnU-Net planned no '{configuration}' configuration for this dataset"
                f" (planned: {', '.join(plans['configurations'])})"
            )
        preprocess_dataset(DATASET_ID, PLANS, (configuration,), (processes,), verbose=False, show_progress_bar=False)
        trainer = get_trainer_from_args(
            str(DATASET_ID), configuration, "all", TRAINER, PLANS, device=torch.device(device)
        )
        trainer.num_epochs = int(settings["epochs"])
        trainer.num_iterations_per_epoch = int(settings["iterations_per_epoch"])
        trainer.num_val_iterations_per_epoch = int(settings["val_iterations_per_epoch"])
        trainer.run_training()
        model_folder = Path(trainer.output_folder).parent
    return {
        "nnunet_model_folder": str(model_folder.relative_to(out)),
        "nnunet_configuration": configuration,
        "label_map": label_map.to_json(),
        "patch_size": list(plans["configurations"][configuration]["patch_size"]),
    }


class NnUNetSegmenter:
    """A trained nnU-Net folder through `nnUNetPredictor` (sliding window with nnU-Net's Gaussian)."""

    def __init__(
        self,
        model_folder: Path,
        label_map: LabelMap,
        device="cpu",
        tile_step_size: float = 0.5,
        mirroring: bool = False,
    ):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        checkpoint = model_folder / "fold_all" / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: nnU-Net checkpoint not found")
        self.label_map = label_map
        self.predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=False,
            device=torch.device(device),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(
            str(model_folder), use_folds=("all",), checkpoint_name="checkpoint_final.pth"
        )

    def segment(self, volume: np.ndarray, spacing) -> dict[str, np.ndarray]:
        """volume (D, H, W) in [0, 1], spacing (3,) mm -> category -> (D, H, W) bool."""
        label_map = self.predictor.predict_single_npy_array(
            np.asarray(volume, np.float32)[None], {"spacing": [float(s) for s in spacing]}, None, None, False
        )
        return self.label_map.masks(np.asarray(label_map))
