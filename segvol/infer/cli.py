"""Segment your own CT with text, box and point prompts (zoom-out-zoom-in, docs/method.md#zoom-out-zoom-in-inference).

Inputs: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD files or DICOM series folders; several at once as a
list, a shell glob ("scans/*.nii.gz", quoted or not) or a folder of image files. The model is
loaded once, after the first image and the prompts have been checked.

Outputs per input, next to each other: the label map <stem>.nii.gz on exactly the input's grid
(category i -> value i+1; where categories overlap the most probable wins) and the run manifest
<stem>.json (labels, prompts in voxel and world coordinates, segvol version, checkpoint sha256,
device, timings, the files written). On request: --masks (<stem>_masks/NN_<name>.nii.gz, one
binary mask per category, probability > 0.5, overlaps kept),
--probabilities (<stem>_probabilities/NN_<name>.nii.gz, float32),
--mesh (<stem>_meshes/NN_<name>.stl, one surface per category, see below),
--dicom-seg (<stem>.seg.dcm, a DICOM Segmentation referencing the series; DICOM input only).
With one input, -o names the label map; with several, -o is a folder.

Meshes: --mesh stl writes binary STL, --mesh obj Wavefront OBJ, --mesh stl,obj both. Each is the closed
surface (marching cubes, scikit-image) of the category's --masks voxels, i.e. of its label-map voxels
where categories do not overlap, in world millimetres: LPS (x and y of RAS+ negated) and tagged
SPACE=LPS, as 3D Slicer (4.11 and later) reads model files, so dragging the CT and the meshes into
Slicer shows them aligned; normals point outwards. A category with an empty mask gets no file. The
manifest lists every mesh with its triangles, area (mm2) and volume (ml).

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
  segvol predict ct.nii.gz -o seg/ct.nii.gz --checkpoint SegVol_v1.pth --prompts organs.yaml --mesh stl
      (then in 3D Slicer: drag ct.nii.gz and seg/ct_meshes/*.stl in)

Starting from an existing mask (a TotalSegmentator output, a colleague's contour): --init-mask LABELS:ID
starts the category from label ID of the label file LABELS, which must lie on the input's grid (one input
only). Alone, the output is that label exactly; with --point/--negative-point (and --box/--text) the
prompts refine it, as clicks edit an imported label in `segvol serve` (docs/interactive.md):
  segvol predict ct.nii.gz -o liver.nii.gz --checkpoint SegVol_v1.pth \\
      --init-mask totalseg.nii.gz:5 --point 60 70 35 --negative-point 80 75 30

A prompt file (JSON or YAML) lists many categories:
  [{"name": "liver", "text": "liver", "box": [30, 40, 10, 90, 100, 60]},
   {"name": "spleen", "text": "spleen", "points": [[20, 60, 30]], "point_labels": [1]}]
"""

# Only the standard library at module level: `segvol predict --help` must not import torch.
from __future__ import annotations

import argparse
from pathlib import Path

from segvol.cli_options import PRECISION_HELP, PRECISIONS, add_common_arguments
from segvol.infer.outputs import mesh_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CT image file(s) (.nii/.nii.gz/.nrrd/.mha/.mhd), DICOM series folder(s), "
        "a glob, or a folder of image files",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="label map to write (.nii.gz) for one input; a folder for several"
    )
    prompts = parser.add_argument_group("prompts (0-based input voxel indices i j k unless --world)")
    prompts.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="NAME",
        help="category name, e.g. liver; repeat for several text-only categories",
    )
    prompts.add_argument(
        "--box",
        nargs=6,
        type=float,
        metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
        help="inclusive bounding box around the object",
    )
    prompts.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("I", "J", "K"),
        help="a voxel inside the object (repeatable)",
    )
    prompts.add_argument(
        "--negative-point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("I", "J", "K"),
        help="a voxel outside the object (repeatable)",
    )
    prompts.add_argument("--prompts", metavar="FILE", help="JSON/YAML list of prompts for many categories")
    prompts.add_argument(
        "--init-mask",
        metavar="LABELS:ID",
        help="start the category from label ID of this label file (on the input's grid); the other prompts "
        "refine it, none keep it as it is",
    )
    prompts.add_argument("--world", action="store_true", help="coordinates are RAS+ mm, not voxel indices")
    prompts.add_argument(
        "--strict", action="store_true", help="refuse a --text outside `segvol categories` (default: warn)"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--checkpoint", help="weights: ours (.safetensors), SegVol_v1.pth, pytorch_model.bin or hf://BAAI/SegVol"
    )
    run = parser.add_argument_group("inference")
    run.add_argument(
        "--mode",
        choices=("zoom", "resize", "window"),
        default="zoom",
        help="zoom: zoom-out-zoom-in (default); resize: zoom-out only; window: sliding window only",
    )
    run.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    run.add_argument("--sw-batch-size", type=int, default=2, help="windows per image-encoder call")
    run.add_argument(
        "--soft-box",
        action="store_true",
        help="treat the box as a hint: allow foreground outside it (default: nothing outside the box)",
    )
    run.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    add_common_arguments(run, device=True, threads=True, quiet=False)
    out = parser.add_argument_group("outputs")
    out.add_argument("--masks", action="store_true", help="also write one binary mask per category")
    out.add_argument("--probabilities", action="store_true", help="also write one float32 probability map per category")
    out.add_argument(
        "--mesh",
        type=mesh_option,
        default=(),
        metavar="FORMATS",
        help="also write one surface mesh per category in world coordinates (LPS, as 3D Slicer "
        "reads them): stl, obj or stl,obj",
    )
    out.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write a DICOM Segmentation <stem>.seg.dcm (DICOM series input only)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files even if segvol did not write them (never an input)",
    )
    out.add_argument(
        "--continue", dest="resume", action="store_true", help="skip inputs whose manifest says they are finished"
    )
    add_common_arguments(out, quiet=True)


def run(args) -> int:
    """The command line -> `segvol.infer.predict.predict_files`."""
    from segvol.infer.predict import predict_files
    from segvol.infer.prompts import command_line_records

    records = command_line_records(
        args.text,
        args.box,
        args.point,
        args.negative_point,
        args.prompts,
        args.strict,
        checkpoint=args.checkpoint,
        init_mask=args.init_mask,
    )
    never_written = [Path(args.prompts)] if args.prompts and "://" not in args.prompts else []
    predict_files(
        args.inputs,
        args.output,
        records,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        world=args.world,
        mode=args.mode,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        box_limits=not args.soft_box,
        masks=args.masks,
        probabilities=args.probabilities,
        dicom_seg=args.dicom_seg,
        meshes=args.mesh,
        overwrite=args.overwrite,
        resume=args.resume,
        protected=never_written,
        progress=not getattr(args, "quiet", False),
    )
    return 0
