"""Fig 4: a semantic prompt disambiguates a spatial one: one point inside a structure nested in another, alone
and with each structure's name, gives different masks.

Example:
  segvol evaluate fig4 --checkpoint M --zarr data/zarr/lesions_c.zarr --out results/fig4.csv \\
      --png results/figures/fig4.png
"""

from __future__ import annotations

import numpy as np


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True, help="stores to search for a structure nested in another")
    parser.add_argument("--out", required=True, help="CSV: Dice of each prompt's mask against each category")
    parser.add_argument("--png", required=True)
    evaluation_flags(parser)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import pictures
    from segvol.evaluate.methods import load_segvol
    from segvol.evaluate.metrics import dice
    from segvol.evaluate.stores import iter_cases
    from segvol.evaluate.tables import write_csv
    from segvol.infer import Prompt, segment

    found = None
    for path in args.zarr:
        for case in iter_cases(path, limit=settings.get("max_cases")):
            pair = pictures.nested_pair(case.categories, case.labels)
            if pair is not None:
                found = (case, pair)
                break
        if found:
            break
    if found is None:
        from segvol.evaluate import plots

        write_csv(pd.DataFrame(columns=["prompt", "category", "dice"]), args.out)
        plots.empty_figure(
            args.png, "Fig 4: semantic prompts disambiguate a point", "no case has one category nested inside another"
        )
        return 0
    case, (inner, outer) = found
    names = [case.categories[inner], case.categories[outer]]
    point = pictures.ambiguous_point(case.labels[inner])
    model = load_segvol(args.checkpoint, device=args.device)
    prompts = [Prompt(points=[point.tolist()], point_labels=[1])]
    prompts += [Prompt(text=name, points=[point.tolist()], point_labels=[1]) for name in names]
    logits = np.asarray(segment(model, case.image, prompts, mode="zoom", overlap=settings["overlap"]))
    labels = ["point only", *[f"point + '{name}'" for name in names]]
    masks = dict(zip(labels, logits > 0))
    truths = {f"point + '{name}'": case.labels[case.categories.index(name)] for name in names}
    rows = [
        {
            "dataset": case.dataset,
            "case": case.case,
            "prompt": label,
            "category": name,
            "dice": dice(mask, case.labels[case.categories.index(name)]),
            "point": point.tolist(),
        }
        for label, mask in masks.items()
        for name in names
    ]
    write_csv(pd.DataFrame(rows), args.out)
    pictures.figure4(
        case.image,
        case.spacing,
        point,
        masks,
        truths,
        args.png,
        f"Fig 4: one point inside '{names[0]}' (within '{names[1]}'), {case.dataset} {case.case}",
    )
    return 0
