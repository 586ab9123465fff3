"""A trained task-specific model folder: `model.json` (manifest) plus its weights.

- nnunet: nnU-Net's own results tree (`Dataset001_<name>/nnUNetTrainer__nnUNetPlans__<conf>/fold_all/`);
- swinunetr, uxnet: `model.safetensors` (read with safetensors, never unpickled).
`load_segmenter(folder)` returns an object with `segment(volume, spacing) -> {category: mask}`.
"""

from __future__ import annotations

import json
from pathlib import Path

METHODS = {"nnunet": "nnU-Net", "swinunetr": "SwinUNETR", "uxnet": "3D UX-Net"}
MANIFEST = "model.json"


def display_name(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown task-specific method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a task-specific model folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: corrupt manifest ({error})") from error
    for key in ("method", "dataset", "label_map"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest lacks '{key}'")
    display_name(manifest["method"])
    return manifest


def load_segmenter(folder: str | Path, device="cpu", overlap: float = 0.5):
    """The segmenter of a trained model folder, on `device`."""
    from segvol.taskspecific.labels import LabelMap

    folder = Path(folder)
    manifest = read_manifest(folder)
    label_map = LabelMap.from_json(manifest["label_map"])
    if manifest["method"] == "nnunet":
        from segvol.taskspecific.nnunet import NnUNetSegmenter

        model_folder = (folder / manifest["nnunet_model_folder"]).resolve()
        if folder.resolve() not in model_folder.parents:
            raise ValueError(f"{folder / MANIFEST}: nnunet_model_folder points outside the model folder")
        return NnUNetSegmenter(model_folder, label_map, device=device, tile_step_size=1.0 - overlap)
    from safetensors.torch import load_file

    from segvol.taskspecific.supervised import SlidingWindowSegmenter, build_network

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights not found")
    network = build_network(manifest["method"], len(label_map.categories) + 1, manifest["architecture"])
    try:
        network.load_state_dict(load_file(str(weights)))
    except RuntimeError as error:
        raise ValueError(f"{weights}: does not match the architecture in {MANIFEST} ({str(error)[:200]})") from error
    return SlidingWindowSegmenter(network, label_map, manifest["patch_size"], overlap=overlap, device=device)
