"""Table 6: parameters, MACs per case, seconds per case and Dice of SegVol and every baseline with a checkpoint.

Example:
  segvol evaluate table6 --checkpoint M --zarr data/zarr/ext_organs.zarr --out results/table6.csv \\
      --per-case results/table6_per_case.parquet
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("segvol.evaluate")


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary CSV")
    parser.add_argument("--per-case", required=True, help="tidy per-case parquet")
    parser.add_argument(
        "--equivariant",
        default=None,
        metavar="ADAPTER",
        help="also score SegVol with this equivariant-embedding adapter (segvol finetune-equivariant)",
    )
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def run(args, settings) -> int:
    """SegVol and every baseline with a checkpoint: parameters, MACs of one whole case, s/case, Dice."""
    import pandas as pd

    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.methods import EQUIVARIANT, SegVolMethod, load_segvol, load_segvol_with_adapter
    from segvol.evaluate.tables import write_csv

    methods = [
        SegVolMethod(
            load_segvol(args.checkpoint, device=args.device),
            prompt="box+text",
            mode="zoom",
            overlap=settings["overlap"],
        )
    ]
    if args.equivariant:
        methods.append(
            SegVolMethod(
                load_segvol_with_adapter(args.checkpoint, args.equivariant, device=args.device),
                prompt="box+text",
                mode="zoom",
                name=EQUIVARIANT,
                overlap=settings["overlap"],
            )
        )
    baselines, reasons = build_baselines(settings["methods"], settings["baseline_checkpoints"], device=args.device)
    for column, reason in reasons.items():
        log.info("%s: %s", column, reason)
    rows, frames = [], []
    for method in methods + baselines:
        row, per_case = _complexity(method, args, settings)
        rows.append(row)
        frames.append(per_case)
    table = pd.DataFrame(rows)
    write_parquet(pd.concat(frames, ignore_index=True), args.per_case, {"methods": reasons})
    write_csv(table, args.out)
    log.info("Table 6:\n%s", table.to_string(index=False))
    return 0


def _complexity(method, args, settings):
    """(Table 6 row, per-case scores) of one method: MACs counted on the first case, all its categories."""
    import pandas as pd
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segvol.evaluate.cases import score_store
    from segvol.evaluate.prompts import prompt_from_truth
    from segvol.evaluate.stores import iter_cases

    frames = [
        score_store(
            store,
            [method],
            seed=args.seed,
            split=args.split,
            limit=settings.get("max_cases"),
            tolerance_mm=settings["nsd_tolerance_mm"],
        )[0]
        for store in args.zarr
    ]
    per_case = pd.concat(frames, ignore_index=True)
    case = next(iter_cases(args.zarr[0], split=args.split, limit=1))
    prompts = [
        prompt_from_truth(method.prompt, category, truth, np.random.default_rng(0))
        for category, truth in zip(case.categories, case.labels)
    ]
    prompts = [prompt for prompt in prompts if prompt is not None]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        method.predict_many(case.image, case.spacing, prompts)
    parameters = list(method.model.parameters())
    seconds = per_case.drop_duplicates(["dataset", "case"])["case_seconds"]
    row = {
        "method": method.name,
        "prompt": method.prompt,
        "parameters": sum(p.numel() for p in parameters),
        "parameters_m": sum(p.numel() for p in parameters) / 1e6,
        "trainable_parameters_m": sum(p.numel() for p in parameters if p.requires_grad) / 1e6,
        "gmacs_per_case": counter.get_total_flops() / 2e9,
        "macs_case": f"{case.dataset}/{case.case}",
        "macs_categories": len(prompts),
        "seconds_per_case": float(np.median(seconds)),
        "median_dice": float(np.nanmedian(per_case["dice"])),
        "cases": len(seconds),
        "threads": torch.get_num_threads(),
    }
    return row, per_case
