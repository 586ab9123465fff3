"""Train one task-specific model (nnU-Net, SwinUNETR or 3D UX-Net) on one dataset's train split.

The model folder (written atomically) holds `model.json` and the weights; `segvol evaluate
taskspecific` scores it on the store's test split next to SegVol (Fig 9, Table 7).

Example:
  segvol taskspecific --method uxnet --zarr data/zarr/abdomen_a.zarr \\
      --out models/taskspecific/uxnet/abdomen_a --params '{"supervised": {"steps": 40}}'
  segvol taskspecific --method nnunet --zarr data/zarr/abdomen_a.zarr \\
      --out models/taskspecific/nnunet/abdomen_a --work data/taskspecific/nnunet/abdomen_a
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("segvol.taskspecific")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segvol.cli_options import add_common_arguments

    parser.add_argument("--method", required=True, choices=["nnunet", "swinunetr", "uxnet"])
    parser.add_argument("--zarr", required=True, help="dataset store; its train split is used")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument(
        "--work", default=None, help="nnU-Net only: folder for nnUNet_raw and nnUNet_preprocessed (default: <out>.work)"
    )
    add_common_arguments(
        parser,
        params="taskspecific",
        device=True,
        threads=True,
        seed="seed of patches, augmentation and initialisation",
        quiet=True,
    )


def run(args) -> int:
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    import torch

    from segvol.device import resolve_device
    from segvol.io.atomic import atomic_path
    from segvol.settings import stage_settings
    from segvol.taskspecific.data import load_cases, training_cases
    from segvol.taskspecific.models import MANIFEST, display_name

    settings = stage_settings("taskspecific", args.params)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    store, cases = training_cases(args.zarr)  # fail early on a bad store
    manifest = {
        "method": args.method,
        "name": display_name(args.method),
        "dataset": store.name,
        "store": str(args.zarr),
        "train_cases": cases,
        "seed": args.seed,
    }
    with atomic_path(args.out) as folder:
        folder.mkdir(parents=True)
        if args.method == "nnunet":
            from segvol.taskspecific import nnunet

            work = Path(args.work) if args.work else Path(f"{args.out}.work")
            manifest.update(nnunet.train(args.zarr, folder, work, settings["nnunet"], device))
            manifest["settings"] = settings["nnunet"]
        else:
            from safetensors.torch import save_file

            from segvol.taskspecific.labels import plan_label_map
            from segvol.taskspecific.supervised import build_network, patch_size, train_supervised

            store, loaded = load_cases(args.zarr)
            label_map = plan_label_map(store.categories, (labels for _, labels, _ in loaded))
            samples = [(image, label_map.to_label_map(labels)) for image, labels, _ in loaded]
            architecture = settings[args.method]
            supervised = {**settings["supervised"], "patch_size": patch_size(args.method, settings)}
            torch.manual_seed(args.seed)
            network = build_network(args.method, len(store.categories) + 1, architecture)
            losses = train_supervised(network, samples, supervised, seed=args.seed, device=device)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()},
                str(folder / "model.safetensors"),
            )
            tail = max(1, len(losses) // 5)
            manifest.update(
                label_map=label_map.to_json(),
                architecture=architecture,
                patch_size=supervised["patch_size"],
                settings=supervised,
                loss_first=float(np.mean(losses[:tail])) if losses else None,
                loss_last=float(np.mean(losses[-tail:])) if losses else None,
            )
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if args.method == "nnunet" and not args.work:
        shutil.rmtree(f"{args.out}.work", ignore_errors=True)
    log.info("wrote %s", args.out)
    return 0
