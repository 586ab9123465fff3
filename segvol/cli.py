"""`segvol` console command: one subcommand per stage, plus `predict` for anyone's CT.

Each subcommand lives in `segvol/<package>/cli.py` as `add_arguments(parser)` and `run(args)`.
Only the module of the subcommand being run is imported, so every command starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from segvol.cli_options import COMMON_FLAGS, apply_common_arguments

SUBCOMMANDS = {
    "synth": ("segvol.synth.cli", "write procedural abdominal CT phantoms as NIfTI (the demo's data)"),
    "download": ("segvol.download.cli", "fetch a registered dataset: resumable, checksummed, license-gated"),
    "normalize": ("segvol.normalize.cli", "convert a raw dataset into one normalized Zarr store"),
    "pseudo": ("segvol.pseudo.cli", "Felzenszwalb-Huttenlocher pseudo labels for every case of a store"),
    "pretrain": ("segvol.pretrain.cli", "SimMIM pretraining of the 3D ViT image encoder"),
    "finetune": ("segvol.finetune.cli", "supervised fine-tuning with text, point and box prompts"),
    "taskspecific": (
        "segvol.taskspecific.cli",
        "train a task-specific baseline (nnU-Net, SwinUNETR, 3D UX-Net) on one dataset",
    ),
    "finetune-equivariant": (
        "segvol.finetune.equivariant",
        "train an SO(3)-equivariant patch embedding beside the frozen SegVol",
    ),
    "evaluate": ("segvol.evaluate.cli", "paper evaluations: per-case scores, tables and figures"),
    "own-data": (
        "segvol.own_data.cli",
        "fine-tune SegVol on your own labelled CTs (nnU-Net v2 raw dataset), scored before and after",
    ),
    "predict": ("segvol.infer.cli", "segment your own CT (NIfTI/NRRD/MHA/DICOM) with text, box and point prompts"),
    "serve": ("segvol.serve.cli", "interactive segmentation in the browser: points, boxes, text, three views"),
    "categories": (
        "segvol.normalize.categories",
        "list the category names (text prompts) SegVol knows, with synonyms and datasets",
    ),
    "provenance": ("segvol.provenance", "tables of what made each result and of each job's runtime and memory"),
}


def _version() -> str:
    from segvol import __version__

    return __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (none for `segvol --help`)."""
    parser = argparse.ArgumentParser(
        prog="segvol",
        description="SegVol: universal, promptable 3D CT segmentation (NeurIPS 2024), reproducible.",
        epilog="flags with one meaning in every command that takes them:\n"
        + COMMON_FLAGS
        + "\n\n`segvol COMMAND --help` lists a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"segvol {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        if name != command:
            commands.add_parser(name, help=summary)
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((word for word in argv if word in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    from segvol import provenance

    provenance.set_command(["segvol", *argv])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        apply_common_arguments(args)
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Bad input gets one clear line naming the file and the problem, not a traceback.
        logging.getLogger("segvol").debug("traceback", exc_info=True)
        print(f"segvol {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
