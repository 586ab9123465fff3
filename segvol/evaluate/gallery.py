"""Gallery (Figs 10-13): the best, median and worst case per task by SegVol's Dice, three orthogonal views per
case, SegVol and every baseline that runs next to the ground truth.

Example:
  segvol evaluate gallery --checkpoint M --zarr data/zarr/ext_organs.zarr \\
      --per-case results/table2_per_case.parquet --png results/figures/gallery.png
"""

from __future__ import annotations

import numpy as np


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True, help="the stores Table 2 scored")
    parser.add_argument("--per-case", required=True, help="Table 2's per-case rows (to rank the cases)")
    parser.add_argument("--png", required=True)
    evaluation_flags(parser)


def _segvol_masks(method, case, categories, seed):
    """SegVol's masks of `categories` in `case`, with the prompts Table 2 gave (same seeds)."""
    from segvol.evaluate.prompts import category_seed, prompt_from_truth

    prompts = [
        prompt_from_truth(
            method.prompt,
            c,
            case.labels[case.categories.index(c)],
            np.random.default_rng(category_seed(seed, case.case, c)),
        )
        for c in categories
    ]
    return dict(zip(categories, method.predict_many(case.image, case.spacing, prompts)))


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import pictures
    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.stores import dataset_name, open_store, read_case

    picks = pictures.pick_cases(pd.read_parquet(args.per_case))
    stores = {dataset_name(open_store(path), path): path for path in args.zarr}
    methods = [
        SegVolMethod(
            load_segvol(args.checkpoint, device=args.device),
            prompt=settings["prompt"],
            mode="zoom",
            overlap=settings["overlap"],
        )
    ]
    methods += build_baselines(settings["methods"], settings["baseline_checkpoints"], device=args.device)[0]
    rows = []
    for pick in picks.itertuples():
        if pick.dataset not in stores:
            continue
        path = stores[pick.dataset]
        case = read_case(open_store(path), pick.case, path)
        truth = case.labels[case.categories.index(pick.category)]
        masks = {m.name: _segvol_masks(m, case, [pick.category], args.seed)[pick.category] for m in methods}
        label = f"{pick.dataset}\n{pick.category}\n{pick.rank} ({pick.case})\nSegVol Dice {pick.dice:.2f}"
        rows.append({"image": case.image, "truth": truth, "masks": masks, "spacing": case.spacing, "label": label})
    pictures.gallery(rows, args.png, "Best, median and worst case per task (SegVol's Dice)")
    return 0
