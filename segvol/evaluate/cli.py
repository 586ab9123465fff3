"""Paper evaluations: per-case scores, the tables and the figures, one subcommand each.

Each subcommand is one module of `segvol.evaluate` (listed in `EVALUATIONS`) with `add_arguments(parser)` and
`run(args, settings) -> int`; every output is written atomically, per-case scores as tidy parquet files.
`segvol evaluate <name> --help` explains one.

Example:
  segvol evaluate cases --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/ext_organs.zarr --out results/cases/ext_organs.parquet
  segvol evaluate table2 --cases results/cases/*.parquet --out results/table2.csv \\
      --per-case results/table2_per_case.parquet --methods results/table2_methods.json \\
      --lesions results/table2_lesions.csv
"""

from __future__ import annotations

import argparse
import importlib
import logging

from segvol.cli_options import add_common_arguments

log = logging.getLogger("segvol.evaluate")

# subcommand -> (module, summary); the paper's artefacts in the order of docs/architecture.md#paper--rule--module
EVALUATIONS = {
    "cases": ("segvol.evaluate.cases", "per-case Dice/NSD of every method on one store"),
    "table2": ("segvol.evaluate.table2", "Table 2: median Dice per category and method"),
    "table3": ("segvol.evaluate.table3", "Table 3: resize vs sliding window vs zoom-out-zoom-in"),
    "fig2": ("segvol.evaluate.fig2", "Fig 2: violin plots of per-case Dice per task and method"),
    "fig3a": ("segvol.evaluate.fig3a", "Fig 3a: Dice against the number of training datasets"),
    "fig3b": ("segvol.evaluate.fig3b", "Fig 3b: Dice of each prompt combination"),
    "fig5": ("segvol.evaluate.fig5", "Fig 5: category identification from a spatial prompt"),
    "table6": ("segvol.evaluate.table6", "Table 6: parameters, MACs per case, seconds per case and Dice"),
    "rotation": (
        "segvol.evaluate.rotation",
        "Rotation robustness: Dice per organ before and after rotating the volume",
    ),
    "mri": ("segvol.evaluate.mri", "MRI generalization: Dice on MR (or the MR-like stand-in) next to CT"),
    "fig4": ("segvol.evaluate.fig4", "Fig 4: one point, several text prompts, different masks"),
    "gallery": (
        "segvol.evaluate.gallery",
        "Gallery: best, median and worst case per task, three orthogonal views per case",
    ),
    "interactive": (
        "segvol.evaluate.interactive",
        "Interactive protocol: a box, then 5 corrective clicks; DSC/NSD per step and AUCs",
    ),
    "interactive_training": (
        "segvol.evaluate.interactive_training",
        "Corrective-click training vs released-style: the interactive protocol and box+text Dice per model",
    ),
    "statistics": (
        "segvol.evaluate.table2_statistics",
        "Table 2 statistics: bootstrap confidence intervals of the medians, paired Wilcoxon vs SegVol",
    ),
    "overlap": ("segvol.evaluate.overlap", "Overlap audit: no external test case may be a training case"),
    "taskspecific": ("segvol.evaluate.taskspecific", "Dice/NSD of SegVol and task-specific models on a test split"),
    "fig9": ("segvol.evaluate.fig9", "Fig 9: per-dataset Dice violins, SegVol vs task-specific models"),
    "table7": ("segvol.evaluate.table7", "Table 7: SegVol vs nnU-Net on lesion categories"),
    "meshes": (
        "segvol.evaluate.meshes",
        "3-D rendering: surface meshes of SegVol's masks and the ground truth of one case",
    ),
}


def evaluation_flags(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """The shared flags of an evaluation; one that runs a model also gets --device/--threads/--seed/--quiet."""
    add_common_arguments(
        parser,
        params="evaluate",
        model=model,
        device=model,
        threads=model,
        quiet=model,
        seed="seed of the ground-truth point prompts" if model else None,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    for name, (module_name, summary) in EVALUATIONS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)


def run(args) -> int:
    from segvol.settings import stage_settings

    settings = stage_settings("evaluate", args.params)
    if getattr(args, "model", None) is not None:
        stage_settings("model", args.model, flag="--model")  # validates; the checkpoint carries the architecture
    if getattr(args, "device", None) is not None:
        from segvol.device import resolve_device

        args.device = resolve_device(args.device)  # a missing device fails here, before any store is read
    return importlib.import_module(EVALUATIONS[args.evaluation][0]).run(args, settings)
