"""Fig 5: category identification from a spatial prompt (a softmax over the category set).

Example:
  segvol evaluate fig5 --checkpoint M --zarr data/zarr/abdomen_a.zarr --out results/fig5.csv \\
      --per-case results/fig5_per_case.parquet --png results/figures/fig5.png
"""

from __future__ import annotations

import numpy as np


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary CSV")
    parser.add_argument("--per-case", required=True, help="tidy per-case parquet")
    parser.add_argument("--png", required=True)
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def identify_case(model, case, candidates, seed, mode="resize"):
    """Rows of Fig 5 for one case: per present category, a softmax over every candidate name.

    The spatial prompt (tight box) alone gives a mask. Each candidate's name is then decoded as a
    text prompt alone and scores its mean logit inside that mask: the category whose text claims
    what the box outlines wins. Decoding the names without the box matters: with it, the box
    dictates every candidate's mask (on the demo model: top-1 3 % with the box, 18 % without).
    """
    from segvol.evaluate.prompts import category_seed
    from segvol.infer import Prompt, segment
    from segvol.pseudo.sampling import segment_box

    rows = []
    for category, truth in zip(case.categories, case.labels):
        box = segment_box(np.asarray(truth) > 0)
        if box[0] < 0:
            continue
        spatial = np.asarray(segment(model, case.image, [Prompt(box=box.tolist())], mode=mode)[0]) > 0
        region = spatial if spatial.any() else truth
        logits = np.asarray(segment(model, case.image, [Prompt(text=name) for name in candidates], mode=mode))
        scores = np.array([float(channel[region].mean()) for channel in logits])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        rank = int((probabilities > probabilities[candidates.index(category)]).sum()) if category in candidates else -1
        rows.append(
            {
                "dataset": case.dataset,
                "case": case.case,
                "category": category,
                "predicted": candidates[int(np.argmax(probabilities))],
                "rank": rank,
                "probability_true": float(probabilities[candidates.index(category)]) if rank >= 0 else np.nan,
                "probabilities": dict(zip(candidates, probabilities.round(5).tolist())),
                "seed": category_seed(seed, case.case, category),
            }
        )
    return rows


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.methods import load_segvol
    from segvol.evaluate.stores import iter_cases, open_store
    from segvol.evaluate.tables import write_csv

    candidates = sorted({c for store in args.zarr for c in open_store(store).attrs["categories"]})
    model = load_segvol(args.checkpoint, device=args.device)
    rows = []
    for store in args.zarr:
        for case in iter_cases(store, split=args.split, limit=settings.get("max_cases")):
            rows += identify_case(model, case, candidates, args.seed)
    frame = pd.DataFrame(rows)
    summary = pd.DataFrame(
        [
            {
                "top_k": k,
                "accuracy": float((frame["rank"].between(0, k - 1)).mean()) if len(frame) else np.nan,
                "examples": len(frame),
                "candidates": len(candidates),
            }
            for k in settings["identify_top_k"]
        ]
    )
    per_case = (
        frame.assign(probabilities=frame["probabilities"].map(lambda p: __import__("json").dumps(p)))
        if len(frame)
        else frame
    )
    write_parquet(per_case, args.per_case, {"candidates": candidates})
    write_csv(summary, args.out)
    accuracy = ", ".join(f"top-{r.top_k} {r.accuracy:.0%}" for r in summary.itertuples())
    plots.identification_bars(rows[:6], args.png, f"Category identification (Fig 5): {accuracy}")
    return 0
