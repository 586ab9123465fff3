"""Segment your own CT with text, box and point prompts (zoom-out-zoom-in, facts §7).

Input: a NIfTI (.nii/.nii.gz), NRRD, MHA/MHD file or a DICOM series folder. Output: one NIfTI
label map on exactly the input's grid (shape and affine), category i -> value i+1 (where
categories overlap, the most probable wins), plus a JSON sidecar naming the values.

Coordinates (--box, --point, --negative-point and prompt files) are voxel indices (i, j, k) of
the INPUT as stored: NIfTI array indices, for NRRD/MHA/DICOM the ITK index (column, row,
slice). Boxes are inclusive: "--box i0 j0 k0 i1 j1 k1". With --world they are RAS+ mm instead
(x to the right, y to the front, z up; negate x and y of LPS/DICOM viewer coordinates).

Examples:
  segvol predict ct.nii.gz -o liver.nii.gz --checkpoint SegVol_v1.pth \\
      --text liver --box 30 40 10 90 100 60 --point 60 70 35 --negative-point 20 20 35
  segvol predict dicom_folder/ -o organs.nii.gz --checkpoint hf://BAAI/SegVol --prompts organs.yaml

A prompt file (JSON or YAML) lists many categories:
  [{"name": "liver", "text": "liver", "box": [30, 40, 10, 90, 100, 60]},
   {"name": "spleen", "text": "spleen", "points": [[20, 60, 30]], "point_labels": [1]}]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from segvol.device import add_device_argument, resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CT image file (.nii/.nii.gz/.nrrd/.mha/.mhd) or DICOM series folder")
    parser.add_argument("-o", "--output", required=True, help="label map to write (.nii.gz)")
    prompts = parser.add_argument_group("prompts (input voxel indices i j k unless --world)")
    prompts.add_argument("--text", action="append", default=[], metavar="NAME",
                         help="category name, e.g. liver; repeat for several text-only categories")
    prompts.add_argument("--box", nargs=6, type=float, metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
                         help="inclusive bounding box around the object")
    prompts.add_argument("--point", nargs=3, type=float, action="append", default=[], metavar=("I", "J", "K"),
                         help="a voxel inside the object (repeatable)")
    prompts.add_argument("--negative-point", nargs=3, type=float, action="append", default=[],
                         metavar=("I", "J", "K"), help="a voxel outside the object (repeatable)")
    prompts.add_argument("--prompts", metavar="FILE", help="JSON/YAML list of prompts for many categories")
    prompts.add_argument("--world", action="store_true", help="coordinates are RAS+ mm, not voxel indices")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="weights: ours (.safetensors), SegVol_v1.pth, pytorch_model.bin "
                                            "or hf://BAAI/SegVol")
    model.add_argument("--preset", default="base", help="model size when --random-weights (default: base)")
    model.add_argument("--text-encoder", default=None, help="text encoder for --random-weights (clip, minilm)")
    model.add_argument("--random-weights", action="store_true",
                       help="no checkpoint: random weights (for timing and memory tests only)")
    run = parser.add_argument_group("inference")
    run.add_argument("--mode", choices=("zoom", "resize", "window"), default="zoom",
                     help="zoom: zoom-out-zoom-in (default); resize: zoom-out only; window: sliding window only")
    run.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    run.add_argument("--sw-batch-size", type=int, default=2, help="windows per image-encoder call")
    run.add_argument("--soft-box", action="store_true",
                     help="treat the box as a hint: allow foreground outside it (default: nothing outside the box)")
    add_device_argument(run)
    parser.add_argument("--probabilities", metavar="DIR",
                        help="also write one float32 probability NIfTI per category into DIR")


def prompt_records(args) -> list[dict]:
    """Prompt records from --text/--box/--point/--negative-point/--prompts, coordinates as given."""
    records = []
    if args.prompts:
        from segvol.infer.prompts import read_prompt_records

        records.extend(read_prompt_records(args.prompts))
    if args.box is not None or args.point or args.negative_point:
        if len(args.text) > 1:
            raise ValueError("--box/--point describe one category: give at most one --text with them "
                             "(use --prompts FILE for several)")
        record = {"text": args.text[0] if args.text else None, "box": args.box}
        if args.point or args.negative_point:
            record["points"] = [*args.point, *args.negative_point]
            record["point_labels"] = [1] * len(args.point) + [0] * len(args.negative_point)
        records.append(record)
    else:
        records.extend({"text": text} for text in args.text)
    if not records:
        raise ValueError("no prompt given: use --text, --box, --point or --prompts FILE")
    return records


def world_to_voxel_records(records: list[dict], image) -> list[dict]:
    """Replace RAS+ mm coordinates by voxel indices (i, j, k) of the input file."""
    import numpy as np

    from segvol.infer.geometry import VoxelMap

    world_to_file = VoxelMap(np.linalg.inv(np.asarray(image.original_affine, dtype=np.float64)))
    converted = []
    for record in records:
        record = dict(record)
        if record.get("box") is not None:
            corners = np.asarray(record["box"], dtype=np.float64)
            if corners.shape != (6,):
                raise ValueError(f"box must be 6 numbers, got {record['box']!r}")
            corners = np.floor(world_to_file.apply(corners.reshape(2, 3)) + 0.5).astype(np.int64)
            record["box"] = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).tolist()
        if record.get("points") is not None:
            points = np.asarray(record["points"], dtype=np.float64).reshape(-1, 3)
            record["points"] = world_to_file.apply(points).tolist()
        converted.append(record)
    return converted


def to_canonical_prompts(prompts: list, image) -> list:
    """Prompts in input-file voxels -> prompts in the canonical (D, H, W) voxels of `image`.

    The file-to-canonical map is the reorientation the reader applied, derived from the two
    affines (a pure axis permutation/flip), so a voxel index lands on the same physical voxel.
    """
    from segvol.infer.geometry import VoxelMap

    file_to_canonical = VoxelMap.from_affines(image.original_affine, image.affine)
    canonical = []
    for prompt in prompts:
        prompt.check_inside(image.original_shape, where=f"the image {image.source}")
        canonical.append(prompt.mapped(file_to_canonical, image.shape))
    return canonical


def load_model(args, device):
    import torch

    if args.checkpoint and args.random_weights:
        raise ValueError("give either --checkpoint or --random-weights, not both")
    if args.checkpoint:
        from segvol.model.checkpoint import load

        model = load(args.checkpoint)
    elif args.random_weights:
        from segvol.model import build_model, model_config

        overrides = {"text_encoder": args.text_encoder} if args.text_encoder else {}
        torch.manual_seed(0)
        model = build_model(model_config(args.preset, **overrides))
        log.warning("using RANDOM weights (--random-weights): the segmentation is meaningless")
    else:
        raise ValueError("no weights: give --checkpoint PATH|hf://BAAI/SegVol (or --random-weights for tests)")
    return model.to(device).eval()


def label_map(logits):
    """(K, D, H, W) logits -> (D, H, W) int: 0 background, k+1 where category k is the most probable
    of those with probability > 0.5. Slab by slab, so no (K, D, H, W) temporary."""
    import numpy as np
    import torch

    K = logits.shape[0]
    dtype = np.uint8 if K < 255 else np.int16
    labels = np.zeros(logits.shape[1:], dtype=dtype)
    for first in range(0, logits.shape[1], 16):
        best, index = logits[:, first:first + 16].max(dim=0)
        slab = torch.where(best > 0, index + 1, torch.zeros_like(index))
        labels[first:first + 16] = slab.numpy().astype(dtype)
    return labels


def run(args) -> int:
    records = prompt_records(args)
    if not args.world:  # bad prompts fail before anything heavy is loaded
        from segvol.infer.prompts import prompts_from_records

        prompts_from_records(records, source="prompts")
    device = resolve_device(args.device)
    model = load_model(args, device)
    predict_file(model, args.input, args.output, records, world=args.world, mode=args.mode,
                 overlap=args.overlap, sw_batch_size=args.sw_batch_size, probabilities=args.probabilities,
                 weights=args.checkpoint or f"random weights ({args.preset})", box_limits=not args.soft_box)
    return 0


def predict_file(model, input_path, output, records: list[dict], world: bool = False, mode: str = "zoom",
                 overlap: float = 0.5, sw_batch_size: int = 2, probabilities=None, weights: str = "",
                 box_limits: bool = True) -> dict:
    """Segment one image file for prompt records (input-file coordinates) and write the outputs.

    Writes the label map ``output`` (NIfTI on the input grid), its JSON sidecar and, with
    ``probabilities`` (a folder), one float32 probability map per category; all or nothing.
    Returns the sidecar's content.
    """
    import numpy as np
    import torch

    from segvol.infer.prompts import prompts_from_records
    from segvol.infer.zoom import segment
    from segvol.io import read_image, write_like
    from segvol.io.atomic import atomic_path
    from segvol.normalize.intensity import foreground_normalize

    output = Path(output)
    if not output.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{output}: the label map is written as NIfTI; use a .nii.gz name")
    started = time.perf_counter()
    image = read_image(input_path)
    if world:
        records = world_to_voxel_records(records, image)
    prompts = prompts_from_records(records, source="prompts")
    canonical_prompts = to_canonical_prompts(prompts, image)
    try:
        volume = torch.from_numpy(foreground_normalize(image.array))
    except ValueError as error:
        raise ValueError(f"{input_path}: {error}") from None
    # The raw HU are not needed any more: free them before inference but keep the shape that
    # write_like checks (a zero-strided view costs no memory).
    image.array = np.broadcast_to(np.zeros((), image.array.dtype), image.array.shape)
    device = next(model.parameters()).device
    log.info("segmenting %d categor%s of %s (%s) on %s, mode %s", len(prompts), "y" if len(prompts) == 1 else "ies",
             input_path, "x".join(map(str, volume.shape)), device, mode)
    logits = segment(model, volume, canonical_prompts, mode=mode, overlap=overlap, sw_batch_size=sw_batch_size,
                     progress=True, box_limits=box_limits)
    del volume

    written: list[Path] = []
    stem = output.name[: -len(".nii.gz")] if output.name.endswith(".nii.gz") else output.name[: -len(".nii")]
    sidecar = output.with_name(stem + ".json")
    try:
        if probabilities:
            from tqdm import tqdm

            folder = Path(probabilities)
            for k, prompt in enumerate(tqdm(prompts, desc="probabilities", unit="category", leave=False)):
                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in prompt.label)
                path = folder / f"{k + 1:02d}_{name}.nii.gz"
                write_like(torch.sigmoid(logits[k]).numpy(), image, path, dtype=np.float32)
                written.append(path)
        labels = label_map(logits)
        write_like(labels, image, output)
        written.append(output)
        from segvol.provenance import write_sidecar

        written.append(write_sidecar(output))
        description = {
            "labels": {"0": "background", **{str(k + 1): p.label for k, p in enumerate(prompts)}},
            "prompts": [_prompt_record(p) for p in prompts],
            "coordinates": "input voxel indices (i, j, k)" + (", converted from RAS+ mm" if world else ""),
            "input": str(input_path),
            "mode": mode,
            "overlap": overlap,
            "box_limits": box_limits,
            "weights": weights,
            "voxels": {p.label: int((labels == k + 1).sum()) for k, p in enumerate(prompts)},
            "seconds": round(time.perf_counter() - started, 2),
        }
        with atomic_path(sidecar) as temporary:
            temporary.write_text(json.dumps(description, indent=2) + "\n")
        written.append(sidecar)
    except BaseException:
        for path in written:  # all or nothing
            path.unlink(missing_ok=True)
        raise
    for prompt in prompts:
        log.info("%s: %d voxels", prompt.label, description["voxels"][prompt.label])
    log.info("wrote %s (+ %s) in %.1f s", output, sidecar.name, description["seconds"])
    return description


def _prompt_record(prompt) -> dict:
    record = {"name": prompt.label}
    if prompt.text is not None:
        record["text"] = prompt.text
    if prompt.box is not None:
        record["box"] = [int(v) for v in prompt.box]
    if prompt.points is not None:
        record["points"] = [[float(c) for c in point] for point in prompt.points]
        record["point_labels"] = [int(v) for v in prompt.point_labels]
    return record
