"""Segment your own CT with text, box and point prompts (zoom-out-zoom-in, docs/method.md#zoom-out-zoom-in-inference).

Inputs: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD files or DICOM series folders; several at once as a
list, a shell glob ("scans/*.nii.gz", quoted or not) or a folder of image files. The model is
loaded once, after the first image and the prompts have been checked.

Outputs per input, next to each other: the label map <stem>.nii.gz on exactly the input's grid
(category i -> value i+1; where categories overlap the most probable wins) and the run manifest
<stem>.json (labels, prompts in voxel and world coordinates, segvol version, checkpoint sha256,
device, timings, the files written). On request: --masks (<stem>_masks/NN_<name>.nii.gz, one
binary mask per category, probability > 0.5, overlaps kept), --probabilities (<stem>_probabilities/NN_<name>.nii.gz, float32),
--dicom-seg (<stem>.seg.dcm, a DICOM Segmentation referencing the series; DICOM input only).
With one input, -o names the label map; with several, -o is a folder.

Safety: an input (image, prompt file, checkpoint) is never written; an existing output is only
replaced when the manifest next to it says segvol wrote it, or with --overwrite; a folder is
never replaced by a file. Everything is checked before the model is loaded. --continue skips
inputs whose manifest says they are finished.

Coordinates (--box, --point, --negative-point and prompt files) are 0-based voxel indices
(i, j, k) of the INPUT as stored: NIfTI array indices; for NRRD/MHA the ITK index (column, row,
slice); for a DICOM series (column, row, slice) where slice 0 is the first slice sorted by
position along the slice normal (as SimpleITK/GDCM order them; NOT by InstanceNumber). Boxes
are inclusive: "--box i0 j0 k0 i1 j1 k1". With --world they are RAS+ mm instead (x to the
right, y to the front, z up; negate x and y of LPS/DICOM viewer coordinates).

Examples:
  segvol predict ct.nii.gz -o liver.nii.gz --checkpoint SegVol_v1.pth \\
      --text liver --box 30 40 10 90 100 60 --point 60 70 35 --negative-point 20 20 35
  segvol predict dicom_folder/ -o organs.nii.gz --checkpoint hf://BAAI/SegVol --prompts organs.yaml
  segvol predict 'scans/*.nii.gz' -o results/ --checkpoint SegVol_v1.pth --text liver --continue

A prompt file (JSON or YAML) lists many categories:
  [{"name": "liver", "text": "liver", "box": [30, 40, 10, 90, 100, 60]},
   {"name": "spleen", "text": "spleen", "points": [[20, 60, 30]], "point_labels": [1]}]
"""

# Only the standard library at module level: `segvol predict --help` must not import torch.
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from segvol.cli_options import PRECISION_HELP, PRECISIONS, QUIET_HELP, THREADS_HELP
from segvol.device import add_device_argument, resolve_device
from segvol.infer.memory import trace

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "segvol-predict-manifest"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _add_common(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """Add a flag the top-level `segvol` parser may already offer to every command.

    SUPPRESS as default: when absent here, a value given before the command survives.
    """
    if not any(flag in parser._option_string_actions for flag in flags):  # no public API for this
        parser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="CT image file(s) (.nii/.nii.gz/.nrrd/.mha/.mhd), DICOM series folder(s), "
                             "a glob, or a folder of image files")
    parser.add_argument("-o", "--output", required=True,
                        help="label map to write (.nii.gz) for one input; a folder for several")
    prompts = parser.add_argument_group("prompts (0-based input voxel indices i j k unless --world)")
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
    prompts.add_argument("--strict", action="store_true", help="refuse a --text outside `segvol categories` (default: warn)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="weights: ours (.safetensors), SegVol_v1.pth, pytorch_model.bin "
                                            "or hf://BAAI/SegVol")
    # Test-only options, hidden from --help.
    model.add_argument("--preset", default="base", help=argparse.SUPPRESS)
    model.add_argument("--text-encoder", default=None, help=argparse.SUPPRESS)
    model.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    run = parser.add_argument_group("inference")
    run.add_argument("--mode", choices=("zoom", "resize", "window"), default="zoom",
                     help="zoom: zoom-out-zoom-in (default); resize: zoom-out only; window: sliding window only")
    run.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    run.add_argument("--sw-batch-size", type=int, default=2, help="windows per image-encoder call")
    run.add_argument("--soft-box", action="store_true",
                     help="treat the box as a hint: allow foreground outside it (default: nothing outside the box)")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    add_device_argument(run)
    _add_common(run, "--threads", type=int, metavar="N", help=THREADS_HELP)
    out = parser.add_argument_group("outputs")
    out.add_argument("--masks", action="store_true", help="also write one binary mask per category")
    out.add_argument("--probabilities", action="store_true",
                     help="also write one float32 probability map per category")
    out.add_argument("--dicom-seg", action="store_true",
                     help="also write a DICOM Segmentation <stem>.seg.dcm (DICOM series input only)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing output files even if segvol did not write them (never an input)")
    out.add_argument("--continue", dest="resume", action="store_true",
                     help="skip inputs whose manifest says they are finished")
    _add_common(out, "-q", "--quiet", action="store_true", help=QUIET_HELP)


# ------------------------------------------------------------------------------- prompts


def prompt_records(args) -> list[dict]:
    """Prompt records from --text/--box/--point/--negative-point/--prompts, coordinates as given."""
    records = []
    if args.prompts:
        from segvol.infer.prompts import read_prompt_records

        records.extend({**r, "_origin": f"prompt file {args.prompts}"} for r in read_prompt_records(args.prompts))
    if args.box is not None or args.point or args.negative_point:
        if len(args.text) > 1:
            raise ValueError("--box/--point describe one category: give at most one --text with them "
                             "(use --prompts FILE for several)")
        record = {"text": args.text[0] if args.text else None, "box": args.box,
                  "_origin": "--box/--point/--negative-point"}
        if args.point or args.negative_point:
            record["points"] = [*args.point, *args.negative_point]
            record["point_labels"] = [1] * len(args.point) + [0] * len(args.negative_point)
        records.append(record)
    else:
        records.extend({"text": text, "_origin": "--text"} for text in args.text)
    if not records:
        raise ValueError("no prompt given: use --text, --box, --point or --prompts FILE")
    from segvol.vocabulary import check_text_prompt

    for record in records:
        if record.get("text"):
            check_text_prompt(record["text"], strict=getattr(args, "strict", False))
    return records


def world_to_voxel_records(records: list[dict], image) -> list[dict]:
    """Replace RAS+ mm coordinates by voxel indices (i, j, k) of the input file.

    A world box is the axis-aligned box between two RAS+ corners; on an oblique grid its image
    in voxel space is a rotated box, so all eight corners are mapped and the voxel box covering
    them is used (two corners alone cut off parts of the object).
    """
    import numpy as np

    from segvol.infer.geometry import VoxelMap

    world_to_file = VoxelMap(np.linalg.inv(np.asarray(image.original_affine, dtype=np.float64)))
    converted = []
    for record in records:
        record = dict(record)
        if record.get("box") is not None:
            box = np.asarray(record["box"], dtype=np.float64)
            if box.shape != (6,) or not np.all(np.isfinite(box)):
                raise ValueError(f"box must be 6 numbers, got {record['box']!r}")
            low, high = np.minimum(box[:3], box[3:]), np.maximum(box[:3], box[3:])
            corners = np.array([[(high if (c >> a) & 1 else low)[a] for a in range(3)] for c in range(8)])
            voxels = world_to_file.apply(corners)
            # Voxels whose centre lies inside the world box: round inwards by less than half a voxel.
            first = np.floor(voxels.min(axis=0) + 0.5).astype(np.int64)
            last = np.floor(voxels.max(axis=0) + 0.5).astype(np.int64)
            record["box"] = np.concatenate([first, last]).tolist()
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


# ------------------------------------------------------------------------------- outputs


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class OutputPlan:
    """Every path `predict` writes for one input; `files` in writing order, manifest last."""

    input: Path
    label_map: Path
    manifest: Path
    masks: list[Path] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    dicom_seg: Path | None = None

    @property
    def files(self) -> list[Path]:
        extra = [self.dicom_seg] if self.dicom_seg else []
        return [*self.masks, *self.probabilities, *extra, self.label_map, self.manifest]


def plan_outputs(input_path: Path, label_map: Path, names: list[str], masks: bool, probabilities: bool,
                 dicom_seg: bool) -> OutputPlan:
    if not label_map.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{label_map}: the label map is written as NIfTI; use a .nii.gz name")
    stem = _stem(label_map)
    per_category = [f"{k + 1:02d}_{_safe_name(name)}.nii.gz" for k, name in enumerate(names)]
    plan = OutputPlan(input_path, label_map, label_map.with_name(stem + ".json"))
    if masks:
        plan.masks = [label_map.with_name(stem + "_masks") / name for name in per_category]
    if probabilities:
        plan.probabilities = [label_map.with_name(stem + "_probabilities") / name for name in per_category]
    if dicom_seg:
        if not input_path.is_dir():
            raise ValueError(f"{input_path}: --dicom-seg needs a DICOM series folder as input")
        plan.dicom_seg = label_map.with_name(stem + ".seg.dcm")
    return plan


def read_manifest(path: Path) -> dict | None:
    """The manifest at ``path`` when it is one that segvol predict wrote, else None."""
    try:
        if path.stat().st_size > 50_000_000:
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def writable_folder_problem(path: Path) -> str | None:
    """None when the folder of `path` exists or can be made and a file can be created in it, else
    why not. Probes the nearest existing folder with a temporary file (removed at once): permission
    bits alone mislead (root, read-only mounts, /proc)."""
    import tempfile

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".segvol-write-check-", dir=folder)
    except OSError as error:
        return f"cannot create files in {folder} ({error.strerror or error})"
    os.close(handle)
    os.unlink(probe)
    return None


def check_outputs(plan: OutputPlan, protected: list[Path], overwrite: bool) -> None:
    """Refuse (ValueError, nothing written) any output that would replace something not ours.

    ``protected``: paths never written (every input image, the prompt file, the checkpoint).
    Without ``overwrite`` an existing file is replaced only when the manifest next to it was
    written by segvol predict and lists it.
    """
    manifest = read_manifest(plan.manifest) if plan.manifest.exists() else None
    ours = set()
    if manifest is not None:
        ours = {plan.manifest.name, *(str(name) for name in manifest.get("outputs", []))}
    probed: dict[Path, str | None] = {}
    for path in plan.files:
        for kept in protected:
            if _same_file(path, kept) or _inside(path, kept):
                raise ValueError(f"{path}: output would overwrite the input {kept}; choose another -o")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"{path}: cannot write there, {parent} is a file, not a folder")
        if path.is_dir() and not path.is_symlink():
            raise ValueError(f"{path}: is an existing folder; refusing to replace it with a file")
        if path.parent not in probed:
            probed[path.parent] = writable_folder_problem(path)
        problem = probed[path.parent]
        if problem:
            raise ValueError(f"{path}: cannot be written: {problem}; choose another -o")
        if (path.exists() or path.is_symlink()) and not overwrite:
            relative = os.path.relpath(path, plan.manifest.parent)
            if relative not in ours:
                raise ValueError(f"{path}: exists and was not written by segvol predict; "
                                 "remove it, choose another -o, or pass --overwrite")


def expand_inputs(specs: list[str]) -> list[Path]:
    """Input paths from files, DICOM folders, folders of image files and globs, in order, once each."""
    found: list[Path] = []
    for spec in specs:
        if any(c in spec for c in "*?[") and not Path(spec).exists():
            matches = sorted(glob.glob(spec))
            if not matches:
                raise FileNotFoundError(f"{spec}: no file matches this pattern")
            found.extend(Path(m) for m in matches)
            continue
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such image file or DICOM folder")
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            found.extend(images or [path])  # no image files: a DICOM series folder
        else:
            found.append(path)
    unique = []
    for path in found:
        if not any(_same_file(path, seen) for seen in unique):
            unique.append(path)
    return unique


def label_paths(inputs: list[Path], output: str) -> list[Path]:
    """The label map path of each input: ``-o`` itself for one input, ``<-o>/<stem>.nii.gz`` for several."""
    target = Path(output)
    if len(inputs) == 1 and target.name.endswith((".nii", ".nii.gz")):
        return [target]
    if target.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{target}: {len(inputs)} inputs need a folder as -o, not a file name")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file; -o must be a folder for several inputs")
    paths = [target / (_stem(path) + ".nii.gz") for path in inputs]
    names = [p.name for p in paths]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"inputs {clash} would write the same output name in {target}; run them separately")
    return paths


# ------------------------------------------------------------------------------- running


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(args, device):
    """The model and a description of its weights (for the manifest)."""
    import torch

    if args.checkpoint and args.random_weights:
        raise ValueError("give either --checkpoint or --random-weights, not both")
    if args.checkpoint:
        from segvol.model.checkpoint import load, resolve

        path = resolve(args.checkpoint)
        weights = {"checkpoint": str(args.checkpoint), "sha256": sha256_of(Path(path))}
        model = load(path)
    elif args.random_weights:
        from segvol.model import build_model, model_config

        overrides = {"text_encoder": args.text_encoder} if args.text_encoder else {}
        torch.manual_seed(0)
        model = build_model(model_config(args.preset, **overrides))
        weights = {"checkpoint": None, "random_weights": args.preset, "sha256": None}
        log.warning("using RANDOM weights (--random-weights): the segmentation is meaningless")
    else:
        raise ValueError("no weights: give --checkpoint PATH|hf://BAAI/SegVol (or --random-weights for tests)")
    precision = getattr(args, "precision", "fp32")
    model.image_encoder.set_precision(precision)
    if precision == "bf16" and device.type == "cpu" and not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)():
        log.warning("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16/AMX); expect it slower than fp32")
    return model.to(device).eval(), weights


class LabelMapBuilder:
    """Builds the label map one category at a time (0 background, k+1 where category k is the
    most probable of those with probability > 0.5; on exact ties the earlier category wins).

    Memory: the label map plus the best logit so far, kept only inside the bounding box of the
    voxels some category has claimed (logit > 0). Elsewhere the best is implicitly 0, the
    threshold a logit must beat, so a full-volume float32 best-logit array (629 MB for
    600x512x512) is never needed: organ-sized boxes cost megabytes.
    """

    SLAB = 16  # slices per step: no full-volume temporaries

    def __init__(self, shape, categories: int) -> None:
        import numpy as np

        self.labels = np.zeros(shape, dtype=np.uint8 if categories < 255 else np.int16)
        self.best = None  # float32 tensor over `best_box` (inclusive, volume voxels)
        self.best_box = None

    def add(self, k: int, logits, region=None) -> None:
        """Category ``k``'s logits ``(D, H, W)`` float32, over the whole volume or the inclusive box ``region``."""
        import numpy as np

        from segvol.infer.geometry import box_slices

        start = np.zeros(3, np.int64) if region is None else np.asarray(region[:3], np.int64)
        claimed = self._positive_box(logits)
        if claimed is None:
            return
        claimed = claimed + np.tile(start, 2)
        self._cover(claimed)
        inner = box_slices(claimed - np.tile(start, 2))
        logits = logits[inner]
        labels = self.labels[box_slices(claimed)]
        best_all = self.best[box_slices(claimed - np.tile(self.best_box[:3], 2))]
        for first in range(0, logits.shape[0], self.SLAB):
            part, best = logits[first:first + self.SLAB], best_all[first:first + self.SLAB]
            wins = part > best
            best[wins] = part[wins]
            labels[first:first + self.SLAB][wins.numpy()] = k + 1

    def _positive_box(self, logits):
        """Inclusive bounding box of ``logits > 0`` (None when empty), slab by slab."""
        import numpy as np
        import torch

        hits = [torch.zeros(n, dtype=torch.bool) for n in logits.shape]
        for first in range(0, logits.shape[0], self.SLAB):
            part = logits[first:first + self.SLAB] > 0
            hits[0][first:first + self.SLAB] = part.flatten(1).any(dim=1)
            hits[1] |= part.any(dim=0).any(dim=1)
            hits[2] |= part.any(dim=0).any(dim=0)
        if not hits[0].any():
            return None
        found = [torch.nonzero(h).flatten() for h in hits]
        return np.array([int(f[0]) for f in found] + [int(f[-1]) for f in found], dtype=np.int64)

    def _cover(self, box) -> None:
        """Grow the best-logit array to cover ``box`` (new voxels start at 0)."""
        import numpy as np
        import torch

        from segvol.infer.geometry import box_slices

        if self.best_box is not None:
            grown = np.concatenate([np.minimum(self.best_box[:3], box[:3]), np.maximum(self.best_box[3:], box[3:])])
            if np.array_equal(grown, self.best_box):
                return
            box = grown
        best = torch.zeros(tuple(int(n) for n in box[3:] - box[:3] + 1), dtype=torch.float32)
        if self.best is not None:
            best[box_slices(self.best_box - np.tile(box[:3], 2))] = self.best
        self.best, self.best_box = best, box


def label_counts(labels, categories: int, slab: int = 16) -> list[int]:
    """Voxels per value 0..categories of a label map, slab by slab (no full-volume temporaries:
    a comparison per category would make a 157 MB mask each for 600x512x512)."""
    import numpy as np

    counts = np.zeros(categories + 1, dtype=np.int64)
    for first in range(0, labels.shape[0], slab):
        counts += np.bincount(labels[first:first + slab].ravel(), minlength=categories + 1)[:categories + 1]
    return [int(n) for n in counts]


def label_map(logits):
    """(K, D, H, W) logits -> (D, H, W) label map, see `LabelMapBuilder`."""
    builder = LabelMapBuilder(logits.shape[1:], logits.shape[0])
    for k in range(logits.shape[0]):
        builder.add(k, logits[k])
    return builder.labels


def run(args) -> int:
    started = time.perf_counter()
    quiet = bool(getattr(args, "quiet", False))
    if quiet:
        logging.getLogger("segvol").setLevel(logging.WARNING)
    # Everything a user can get wrong is checked before the model (seconds, GBs) is loaded.
    records = prompt_records(args)
    from segvol.infer.prompts import prompts_from_records

    checked = prompts_from_records(records if not args.world else _strip_coordinates(records), source="prompts")
    names = [p.label for p in checked]
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: need at least 1")
    inputs = expand_inputs(args.inputs)
    protected = [*inputs, *(Path(p) for p in (args.prompts, args.checkpoint) if p and "://" not in str(p))]
    plans = [plan_outputs(path, label, names, args.masks, args.probabilities, args.dicom_seg)
             for path, label in zip(inputs, label_paths(inputs, args.output))]
    todo = []
    for plan in plans:
        if args.resume and finished(plan):
            log.info("skipping %s: finished (%s)", plan.input, plan.manifest)
            continue
        check_outputs(plan, protected, args.overwrite)
        todo.append(plan)
    if not todo:
        log.info("nothing to do: every input is finished")
        return 0
    log.info("%d input(s) to segment (%d finished before); %d categor%s", len(todo), len(plans) - len(todo),
             len(names), "y" if len(names) == 1 else "ies")
    device = resolve_device(args.device)  # imports torch: after the first line the user sees
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    model = weights = None
    for number, plan in enumerate(todo, 1):
        log.info("[%d/%d] reading %s", number, len(todo), plan.input)
        image, prompts, canonical = prepare(plan.input, records, args.world)
        trace("reading")
        if model is None:
            loading = time.perf_counter()
            model, weights = load_model(args, device)
            log.info("model loaded in %.1f s", time.perf_counter() - loading)
            from segvol.infer.text import release_text_backbone

            release_text_backbone(model, [p.text for p in checked if p.text is not None])
            trace("loading the model")
        predict_image(model, image, prompts, canonical, plan, mode=args.mode, overlap=args.overlap,
                      sw_batch_size=args.sw_batch_size, weights=weights, box_limits=not args.soft_box,
                      world=args.world, progress=not quiet)
    log.info("%d input(s) done in %.1f s", len(todo), time.perf_counter() - started)
    return 0


def _strip_coordinates(records: list[dict]) -> list[dict]:
    """World records checked without their coordinates (those are checked per image)."""
    stripped = []
    for record in records:
        record = dict(record)
        if record.get("box") is not None:
            record["box"] = [0, 0, 0, 0, 0, 0]
        if record.get("points") is not None:
            record["points"] = [[0.0, 0.0, 0.0]] * len(record["points"])
        stripped.append(record)
    return stripped


def finished(plan: OutputPlan) -> bool:
    """Whether a previous run finished this input: its manifest is ours, names this input and
    every output it lists still exists."""
    manifest = read_manifest(plan.manifest) if plan.manifest.exists() else None
    if manifest is None or manifest.get("status") != "finished":
        return False
    if not _same_file(Path(manifest.get("input", "")), plan.input):
        return False
    return all((plan.manifest.parent / name).exists() for name in manifest.get("outputs", []))


def prepare(input_path: Path, records: list[dict], world: bool):
    """Read one image and put the prompts on it: (image, prompts in file voxels, canonical prompts)."""
    from segvol.infer.prompts import prompts_from_records
    from segvol.io import read_image

    image = read_image(input_path)
    if world:
        records = world_to_voxel_records(records, image)
    prompts = prompts_from_records(records, source="prompts")
    return image, prompts, to_canonical_prompts(prompts, image)


def predict_file(model, input_path, output, records: list[dict], world: bool = False, mode: str = "zoom",
                 overlap: float = 0.5, sw_batch_size: int = 2, masks: bool = False, probabilities: bool = False,
                 dicom_seg: bool = False, weights: dict | str | None = None, box_limits: bool = True,
                 overwrite: bool = False) -> dict:
    """Segment one image file for prompt records (input-file coordinates) and write the outputs.

    Writes the label map ``output`` (NIfTI on the input grid), its manifest ``<stem>.json`` and
    the requested extras (see the module docstring); all or nothing. Returns the manifest.
    """
    input_path, output = Path(input_path), Path(output)
    names = [p.label for p in _names_only(records)]
    plan = plan_outputs(input_path, output, names, masks, probabilities, dicom_seg)
    check_outputs(plan, [input_path], overwrite)
    image, prompts, canonical = prepare(input_path, records, world)
    return predict_image(model, image, prompts, canonical, plan, mode=mode, overlap=overlap,
                         sw_batch_size=sw_batch_size, weights=weights, box_limits=box_limits, world=world)


def _names_only(records: list[dict]) -> list:
    from segvol.infer.prompts import prompts_from_records

    return prompts_from_records(_strip_coordinates(records), source="prompts")


def predict_image(model, image, prompts, canonical, plan: OutputPlan, mode="zoom", overlap=0.5, sw_batch_size=2,
                  weights=None, box_limits=True, world=False, progress=True) -> dict:
    import numpy as np
    import torch

    from segvol.infer.geometry import box_slices
    from segvol.infer.session import Session
    from segvol.io import write_like

    timings = {"inference": 0.0, "write": 0.0}
    started = time.perf_counter()
    session = Session(model, image, mode=mode, overlap=overlap, sw_batch_size=sw_batch_size,
                      box_limits=box_limits, progress=progress)
    timings["normalize"] = round(time.perf_counter() - started, 3)
    trace("normalizing")
    device = next(model.parameters()).device
    log.info("segmenting %d categor%s of %s (%s) on %s, mode %s", len(prompts), "y" if len(prompts) == 1 else "ies",
             plan.input, "x".join(map(str, session.volume.shape)), device, mode)
    builder = LabelMapBuilder(session.volume.shape, len(prompts))
    written: list[Path] = []
    folders = {path.parent for path in [*plan.masks, *plan.probabilities] if not path.parent.exists()}
    try:
        # One category at a time (image embeddings cached by the session): peak memory holds one
        # category's logits, not K of them; per-category files are written as they come.
        for k, prompt in enumerate(canonical):
            step = time.perf_counter()
            region, logits = session.segment_region([prompt])
            logits = logits[0]
            timings["inference"] += time.perf_counter() - step
            step = time.perf_counter()
            builder.add(k, logits, region)
            where = box_slices(region)  # outside it the logits are OUTSIDE_LOGIT: probability 0
            if plan.masks:
                mask = np.zeros(builder.labels.shape, np.uint8)
                mask[where] = (logits > 0).numpy()
                write_like(mask, image, plan.masks[k])
                written.append(plan.masks[k])
                del mask
            if plan.probabilities:
                probability = np.zeros(builder.labels.shape, np.float32)
                probability[where] = torch.sigmoid(logits).numpy()
                write_like(probability, image, plan.probabilities[k], dtype=np.float32)
                written.append(plan.probabilities[k])
                del probability
            del logits
            timings["write"] += time.perf_counter() - step
            trace(f"category {k + 1}")
        labels = builder.labels
        del session, builder
        step = time.perf_counter()
        if plan.dicom_seg is not None:
            from segvol.io.dicom_seg import write_dicom_seg

            write_dicom_seg(labels, image, plan.input, [p.label for p in prompts], plan.dicom_seg)
            written.append(plan.dicom_seg)
        write_like(labels, image, plan.label_map)
        written.append(plan.label_map)
        trace("writing the label map")
        timings = {key: round(value, 3) for key, value in timings.items()}
        timings["write"] = round(timings["write"] + time.perf_counter() - step, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        from segvol import provenance

        manifest = {
            "format": MANIFEST_FORMAT,
            "status": "finished",
            "segvol_version": _version(),
            "input": str(plan.input),
            "labels": {"0": "background", **{str(k + 1): p.label for k, p in enumerate(prompts)}},
            "prompts": [_prompt_record(p, image) for p in prompts],
            "coordinates": "0-based input voxel indices (i, j, k)" + (", converted from RAS+ mm" if world else "")
                           + "; 'world': RAS+ mm of the same voxels",
            "mode": mode,
            "overlap": overlap,
            "box_limits": box_limits,
            "weights": weights if isinstance(weights, dict) else {"checkpoint": weights, "sha256": None},
            "device": str(device),
            "precision": getattr(getattr(model, "image_encoder", None), "precision", "fp32"),
            "voxels": dict(zip([p.label for p in prompts], label_counts(labels, len(prompts))[1:])),
            "seconds": timings,
            "outputs": [os.path.relpath(path, plan.manifest.parent) for path in written],
            # what made it (code commit, packages, device, inputs' sha256), as every other output records
            "provenance": provenance.record(plan.label_map, inputs=[plan.input]),
        }
        from segvol.io.atomic import atomic_path

        with atomic_path(plan.manifest) as temporary:
            temporary.write_text(json.dumps(manifest, indent=2) + "\n")
        trace("writing the manifest")
    except BaseException:
        for path in written:  # all or nothing
            path.unlink(missing_ok=True)
        for folder in folders:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    for prompt in prompts:
        log.info("%s: %d voxels", prompt.label, manifest["voxels"][prompt.label])
    log.info("wrote %s (+ %s) in %.1f s", plan.label_map, plan.manifest.name, timings["total"])
    return manifest


def _version() -> str:
    from segvol import __version__

    return __version__


def _prompt_record(prompt, image) -> dict:
    import numpy as np

    affine = np.asarray(image.original_affine, dtype=np.float64)

    def world(points):
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.round(points @ affine[:3, :3].T + affine[:3, 3], 3).tolist()

    record = {"name": prompt.label}
    if prompt.text is not None:
        record["text"] = prompt.text
    if prompt.box is not None:
        record["box"] = [int(v) for v in prompt.box]
        record["box_world"] = [c for corner in world(np.reshape(prompt.box, (2, 3))) for c in corner]
    if prompt.points is not None:
        record["points"] = [[float(c) for c in point] for point in prompt.points]
        record["points_world"] = world(prompt.points)
        record["point_labels"] = [int(v) for v in prompt.point_labels]
    return record
