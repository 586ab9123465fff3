"""Ablation of corrective-click training: does training on corrective clicks make clicks help?

The same interactive protocol (`segvol.evaluate.interactive`: a box, none for vessels, then 5 corrective
clicks at the deepest voxel of the largest error region) and Table 2's box+text Dice
(`segvol.evaluate.cases.score_store`, the same seeded prompts) for several fine-tuned models trained on
the same data for the same steps: released-style prompts (`finetune.corrective_clicks: 0`), corrective
clicks without and with the 3-D mask-prompt branch (`segvol.finetune.corrective`). A model whose branch is
trained gets its previous step's logits as mask prompt.

Per (category, model): the number of (case, category) pairs, medians with percentile bootstrap 95 %
intervals (`segvol.evaluate.statistics.median_interval`) of DSC AUC, NSD AUC, final DSC and box+text
Dice, and the mean DSC of the box step and after click 5. Two summary rows per model follow: ``boxed
categories`` (every non-vessel category: mean DSC after click 5 minus box-only DSC, ``click_gain``) and
``vessels`` (clicks only: median final DSC). ``clicks_help`` says whether the model meets the goal:
gain >= 0.10 over the boxed categories, vessels' median final DSC >= 0.5 (when there are vessels), and
box+text medians not below the first model's by more than 0.01.

Example:
  segvol evaluate interactive_training --checkpoints released=models/finetune/segvol/model.safetensors \\
      corrective=models/finetune/corrective/model.safetensors --zarr data/zarr/ext_organs.zarr \\
      --out results/interactive_training.csv --per-case results/interactive_training_per_case.parquet \\
      --png results/figures/interactive_training.png
"""

from __future__ import annotations

import logging
import math

import numpy as np

from segvol.evaluate.interactive import VESSELS, result_rows, run_protocol, segvol_step_predictor

log = logging.getLogger("segvol.evaluate")

GOAL_GAIN = 0.10  # mean DSC after click 5 minus box-only, over the boxed categories
GOAL_VESSELS = 0.5  # median final DSC of vessels (clicks only)
BOX_TEXT_TOLERANCE = 0.01  # box+text median may be this much below the first model's
BOXED, VESSEL_GROUP = "boxed categories", "vessels"


def parse_models(items: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` items -> [(name, path)], names unique."""
    models = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoints {item!r}: expected NAME=PATH")
        if name in dict(models):
            raise ValueError(f"--checkpoints {item!r}: the name {name!r} is given twice")
        models.append((name, path))
    return models


def protocol_rows(model, name: str, stores, split: str, overlap: float, limit=None) -> tuple[list, list]:
    """Protocol summaries and per-step rows of one model over the stores' cases."""
    from segvol.evaluate.stores import iter_cases

    summaries, steps = [], []
    for store in stores:
        for case in iter_cases(store, split=split, limit=limit):
            for index, category in enumerate(case.categories):
                truth = np.asarray(case.labels[index], dtype=bool)
                if not truth.any():
                    continue
                predictor = segvol_step_predictor(model, case.image, mode="zoom", overlap=overlap)
                result = run_protocol(predictor, truth, case.spacing, category)
                summary, per_step = result_rows(
                    result, dataset=case.dataset, case=case.case, category=category, method=name
                )
                summary["dsc_box"] = result.dsc[0]
                summaries.append(summary)
                steps += per_step
                log.info(
                    "%s %s %s %s: DSC per step %s",
                    name,
                    case.dataset,
                    case.case,
                    category,
                    " ".join(f"{v:.2f}" for v in result.dsc),
                )
    return summaries, steps


def summarise(per_case, box_text):
    """The table of the module docstring from the per-case protocol rows and the box+text Dice rows."""
    import pandas as pd

    from segvol.evaluate.statistics import median_interval

    methods = list(dict.fromkeys(per_case["method"]))
    rows = []

    def interval_columns(values, prefix):
        interval = median_interval(np.asarray(values, dtype=float))
        return {prefix: interval.median, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}

    def row(method, category, block, dice):
        return {
            "method": method,
            "category": category,
            "n": len(block),
            **interval_columns(block["dsc_auc"], "dsc_auc"),
            **interval_columns(block["nsd_auc"], "nsd_auc"),
            **interval_columns(block["dsc_final"], "dsc_final"),
            **interval_columns(dice, "box_text_dice"),
            "mean_dsc_box": float(block["dsc_box"].mean()) if len(block) else math.nan,
            "mean_dsc_click5": float(block["dsc_final"].mean()) if len(block) else math.nan,
        }

    for method in methods:
        mine = per_case[per_case["method"] == method]
        dice = box_text[box_text["method"] == method]
        for category in dict.fromkeys(mine["category"]):
            rows.append(
                row(
                    method, category, mine[mine["category"] == category], dice.loc[dice["category"] == category, "dice"]
                )
            )
        vessel = mine["category"].isin(VESSELS)
        rows.append(row(method, BOXED, mine[~vessel], dice.loc[~dice["category"].isin(VESSELS), "dice"]))
        rows.append(row(method, VESSEL_GROUP, mine[vessel], dice.loc[dice["category"].isin(VESSELS), "dice"]))
    table = pd.DataFrame(rows)
    table["click_gain"] = table["mean_dsc_click5"] - table["mean_dsc_box"]
    reference = table[(table["method"] == methods[0]) & (table["category"] == BOXED)]["box_text_dice"].iloc[0]
    verdicts = {}
    for method in methods:
        boxed = table[(table["method"] == method) & (table["category"] == BOXED)].iloc[0]
        vessels = table[(table["method"] == method) & (table["category"] == VESSEL_GROUP)].iloc[0]
        holds = bool(boxed["n"] > 0 and boxed["click_gain"] >= GOAL_GAIN)
        if vessels["n"] > 0:
            holds = holds and bool(vessels["dsc_final"] >= GOAL_VESSELS)
        if not (math.isnan(reference) or math.isnan(boxed["box_text_dice"])):
            holds = holds and bool(boxed["box_text_dice"] >= reference - BOX_TEXT_TOLERANCE)
        verdicts[method] = holds
    table["clicks_help"] = table["method"].map(verdicts)
    return table


def verdict_line(table) -> str:
    """One line per model: gain over the boxed categories, vessels' final DSC, box+text, verdict."""
    parts = []
    for method in dict.fromkeys(table["method"]):
        boxed = table[(table["method"] == method) & (table["category"] == BOXED)].iloc[0]
        vessels = table[(table["method"] == method) & (table["category"] == VESSEL_GROUP)].iloc[0]
        parts.append(
            f"{method}: box {boxed['mean_dsc_box']:.2f} -> click 5 {boxed['mean_dsc_click5']:.2f}"
            f" ({boxed['click_gain']:+.2f}), vessels {vessels['dsc_final']:.2f}, box+text {boxed['box_text_dice']:.2f}"
            f" -> clicks help: {'yes' if boxed['clicks_help'] else 'no'}"
        )
    return "\n".join(parts)


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="fine-tuned models to compare; the first is the reference of the box+text check",
    )
    parser.add_argument("--zarr", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary CSV: per category and model, with bootstrap CIs")
    parser.add_argument("--per-case", required=True, help="tidy parquet: one row per case, category and model")
    parser.add_argument("--png", required=True, help="click curves of the models")
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.tables import write_csv

    models = parse_models(args.checkpoints)
    summaries, steps, dice = [], [], []
    for name, path in models:
        model = load_segvol(path, device=args.device)
        rows, per_step = protocol_rows(
            model, name, args.zarr, args.split, settings["overlap"], settings.get("max_cases")
        )
        summaries += rows
        steps += per_step
        method = SegVolMethod(model, prompt="box+text", mode="zoom", name=name, overlap=settings["overlap"])
        for store in args.zarr:
            frame, _ = score_store(store, [method], seed=args.seed, split=args.split, limit=settings.get("max_cases"))
            dice.append(frame)
    per_case = pd.DataFrame(summaries)
    box_text = pd.concat(dice, ignore_index=True)
    table = summarise(per_case, box_text)
    verdict = verdict_line(table)
    log.info("clicks help?\n%s", verdict)
    write_parquet(per_case, args.per_case, {"models": dict(models), "verdict": verdict})
    write_csv(table, args.out)
    per_step = pd.DataFrame(steps)
    per_step["group"] = np.where(per_step["category"].isin(VESSELS), VESSEL_GROUP, BOXED)
    curve = (
        per_step.groupby(["method", "step"], sort=False)["dsc"]
        .agg(mean_dsc="mean", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75))
        .reset_index()
    )
    plots.lines(
        curve,
        "step",
        "mean_dsc",
        args.png,
        "Corrective-click training: " + verdict.replace("\n", "; "),
        "step (0 = box)",
        "DSC (mean, interquartile band)",
        group="method",
        low="q25",
        high="q75",
    )
    return 0
