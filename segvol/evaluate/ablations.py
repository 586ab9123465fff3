"""The paper's ablations and figures (docs/architecture.md#paper--rule--module), one subcommand each.

  fig2      violin plots of per-case Dice per task and method (from Table 2's per-case rows)
  fig3a     data scaling: Dice of the `first<N>` fine-tuning runs and `segvol` (all datasets)
  fig3b     prompt combinations: text, point, box, point+text, box+text
  fig5      category identification from a spatial prompt (softmax over the category set)
  table6    parameters, MACs per case, seconds per case and Dice
  rotation  Dice drop when the volume is rotated 45 deg about z and ~5.7 deg about x and y
  mri       generalization to MR (a labelled MR store, or the demo's MR-like stand-in)
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import numpy as np

log = logging.getLogger("segvol.evaluate")


def add_subcommands(commands, common) -> None:
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter

    def command(name, summary, example):
        parser = commands.add_parser(name, help=summary, formatter_class=fmt,
                                     description=f"{summary}.\n\nExample:\n  {example}")
        return parser

    p = command("fig2", "Fig 2: violin plots of per-case Dice per task and method",
                "segvol evaluate fig2 --per-case results/table2_per_case.parquet --png results/figures/fig2_violin.png")
    p.add_argument("--per-case", required=True)
    p.add_argument("--png", required=True)
    common(p, model=False)

    p = command("fig3a", "Fig 3a: Dice against the number of training datasets",
                "segvol evaluate fig3a --cases results/scaling/first1.parquet results/scaling/segvol.parquet"
                " --total 3 --out results/fig3a_scaling.csv --png results/figures/fig3a_scaling.png")
    p.add_argument("--cases", nargs="+", required=True, help="`cases --label <run>` outputs, one per run")
    p.add_argument("--total", type=int, required=True, help="number of training datasets of the `segvol` run")
    p.add_argument("--out", required=True)
    p.add_argument("--png", required=True)
    common(p, model=False)

    p = command("fig3b", "Fig 3b: Dice of each prompt combination",
                "segvol evaluate fig3b --cases results/prompts/abdomen_a.parquet --out results/fig3b_prompts.csv"
                " --png results/figures/fig3b_prompts.png")
    p.add_argument("--cases", nargs="+", required=True, help="`cases --prompts ...` outputs")
    p.add_argument("--out", required=True)
    p.add_argument("--png", required=True)
    common(p, model=False)

    p = command("statistics", "Table 2 statistics: bootstrap confidence intervals of the medians, paired Wilcoxon vs SegVol",
                "segvol evaluate statistics --per-case results/table2_per_case.parquet"
                " --out results/table2_statistics.csv")
    p.add_argument("--per-case", required=True, help="Table 2's per-case rows")
    p.add_argument("--out", required=True)
    common(p, model=False)

    p = command("gallery", "Gallery: best, median and worst case per task, three orthogonal views per case",
                "segvol evaluate gallery --checkpoint M --zarr data/zarr/ext_organs.zarr"
                " --per-case results/table2_per_case.parquet --png results/figures/gallery.png")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--zarr", nargs="+", required=True, help="the stores Table 2 scored")
    p.add_argument("--per-case", required=True, help="Table 2's per-case rows (to rank the cases)")
    p.add_argument("--png", required=True)
    common(p)

    p = command("fig4", "Fig 4: one point, several text prompts, different masks",
                "segvol evaluate fig4 --checkpoint M --zarr data/zarr/lesions_c.zarr --out results/fig4.csv"
                " --png results/figures/fig4.png")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--zarr", nargs="+", required=True, help="stores to search for a structure nested in another")
    p.add_argument("--out", required=True, help="CSV: Dice of each prompt's mask against each category")
    p.add_argument("--png", required=True)
    common(p)

    p = command("overlap", "Overlap audit: no external test case may be a training case",
                "segvol evaluate overlap --external data/zarr/ext_organs.zarr --train data/zarr/abdomen_a.zarr"
                " --out results/overlap_audit.csv")
    p.add_argument("--external", nargs="+", required=True, help="external test-set stores (all cases)")
    p.add_argument("--train", nargs="*", default=[], help="training stores (their train split)")
    p.add_argument("--out", required=True, help="CSV of flagged pairs (identical pairs make it an error)")
    p.add_argument("--threshold", type=float, default=0.99,
                   help="fingerprint correlation above which a pair is a near-duplicate (default 0.99)")
    common(p, model=False)

    p = command("interactive", "Interactive protocol: a box, then 5 corrective clicks; DSC/NSD per step and AUCs",
                "segvol evaluate interactive --checkpoint M --zarr data/zarr/ext_organs.zarr"
                " --out results/interactive.csv --per-step results/interactive_steps.parquet"
                " --png results/figures/interactive.png")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--zarr", nargs="+", required=True)
    p.add_argument("--out", required=True, help="summary CSV: per dataset, category and method")
    p.add_argument("--per-step", required=True, help="tidy parquet: one row per case, category, method and step")
    p.add_argument("--png", required=True, help="per-step curve")
    p.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    common(p)

    for name, summary, example in (
        ("fig5", "Fig 5: category identification from a spatial prompt",
         "segvol evaluate fig5 --checkpoint M --zarr data/zarr/abdomen_a.zarr --out results/fig5.csv"
         " --per-case results/fig5_per_case.parquet --png results/figures/fig5.png"),
        ("table6", "Table 6: parameters, MACs per case, seconds per case and Dice",
         "segvol evaluate table6 --checkpoint M --zarr data/zarr/ext_organs.zarr --out results/table6.csv"
         " --per-case results/table6_per_case.parquet"),
        ("rotation", "Rotation robustness: Dice per organ before and after rotating the volume",
         "segvol evaluate rotation --checkpoint M --zarr data/zarr/ext_organs.zarr --out results/rotation.csv"
         " --per-case results/rotation_per_case.parquet --png results/figures/rotation.png"),
        ("mri", "MRI generalization: Dice on MR (or the MR-like stand-in) next to CT",
         "segvol evaluate mri --checkpoint M --zarr data/zarr/ext_organs.zarr --stand-in --out results/mri.csv"
         " --per-case results/mri_per_case.parquet --png results/figures/mri.png"),
    ):
        p = command(name, summary, example)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--zarr", nargs="+", required=True)
        p.add_argument("--out", required=True, help="summary CSV")
        p.add_argument("--per-case", required=True, help="tidy per-case parquet")
        if name != "table6":
            p.add_argument("--png", required=True)
        if name in ("table6", "rotation"):
            p.add_argument("--equivariant", default=None, metavar="ADAPTER",
                           help="also score SegVol with this equivariant-embedding adapter (segvol finetune-equivariant)")
        if name == "mri":
            p.add_argument("--stand-in", action="store_true",
                           help="the stores are CT: score them as CT and through the MR-like intensity map")
        p.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
        common(p)


# ------------------------------------------------------------------------------------------


def run_fig2(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.tables import table_columns

    per_case = pd.read_parquet(args.per_case)
    present = set(per_case["method"]) if len(per_case) else set()
    methods = [m for m in table_columns(settings["methods"]) if m in present]
    plots.violins(per_case, methods, args.png, "Per-case Dice on the external test sets (Fig 2)")
    return 0


def run_number(run: str, total: int) -> int:
    if run == "segvol":
        return total
    match = re.fullmatch(r"first(\d+)", run)
    if not match:
        raise ValueError(f"run name {run!r} is neither 'segvol' nor 'first<N>'")
    return int(match.group(1))


def run_fig3a(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate.statistics import median_interval

    from segvol.evaluate import plots
    from segvol.evaluate.tables import write_csv

    rows = []
    for path in args.cases:
        frame = pd.read_parquet(path).dropna(subset=["dice"])
        for run, block in frame.groupby("method"):
            dice = block["dice"].to_numpy()
            interval = median_interval(dice)
            rows.append({"run": run, "n_datasets": run_number(run, args.total), "median_dice": np.median(dice),
                         "ci_low": interval.low, "ci_high": interval.high,
                         "q25": np.quantile(dice, 0.25), "q75": np.quantile(dice, 0.75),
                         "mean_dice": dice.mean(), "scores": len(dice)})
    summary = pd.DataFrame(rows, columns=["run", "n_datasets", "median_dice", "ci_low", "ci_high", "q25", "q75",
                                          "mean_dice", "scores"])
    summary = summary.sort_values("n_datasets", kind="stable").reset_index(drop=True)
    from segvol.evaluate.tables import scaling_claim

    claim = scaling_claim(summary)
    summary["paper_claim"] = claim
    log.info("Fig 3a: %s", claim)
    write_csv(summary, args.out)
    plots.lines(summary, "n_datasets", "median_dice", args.png,
                f"Data scaling (Fig 3a): more training datasets\n{claim}", "training datasets",
                "median Dice (interquartile band)", low="q25", high="q75", label="run")
    return 0


def run_fig3b(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.prompts import PROMPT_KINDS
    from segvol.evaluate.tables import write_csv

    frame = pd.concat([pd.read_parquet(p) for p in args.cases], ignore_index=True).dropna(subset=["dice"])
    summary = (frame.groupby(["category", "prompt"], sort=False)["dice"]
               .agg(median_dice="median", mean_dice="mean", scores="count").reset_index())
    overall = frame.groupby("prompt", sort=False)["dice"].agg(median_dice="median", mean_dice="mean",
                                                             scores="count").reset_index()
    overall.insert(0, "category", "All")
    from segvol.evaluate.statistics import grouped_intervals

    summary = summary.merge(grouped_intervals(frame, ["category", "prompt"]), how="left")
    overall = overall.merge(grouped_intervals(frame, ["prompt"]), how="left")
    summary = pd.concat([summary, overall], ignore_index=True)
    order = [k for k in PROMPT_KINDS if k in set(summary["prompt"])]
    write_csv(summary, args.out)
    plots.grouped_bars(summary, "category", "prompt", "median_dice", args.png,
                       "Prompt combinations (Fig 3b), internal test splits", "median Dice",
                       palette=plots.PROMPT_COLOURS, series_order=order)
    return 0


# ------------------------------------------------------------------------------------------


def _model(args):
    from segvol.evaluate.methods import load_segvol

    return load_segvol(args.checkpoint, device=args.device)


def _limit(settings):
    return settings.get("max_cases")


def identify_case(model, case, candidates, seed, mode="resize"):
    """Rows of Fig 5 for one case: per present category, a softmax over every candidate name.

    The spatial prompt (tight box) alone gives a mask. Each candidate's name is then decoded as a
    text prompt alone and scores its mean logit inside that mask: the category whose text claims
    what the box outlines wins. Decoding the names without the box matters: with it, the box
    dictates every candidate's mask (on the demo model: top-1 3 % with the box, 18 % without).
    """
    from segvol.evaluate.prompts import category_seed, tight_box
    from segvol.infer import Prompt, segment

    rows = []
    for category, truth in zip(case.categories, case.labels):
        box = tight_box(truth)
        if box is None:
            continue
        spatial = np.asarray(segment(model, case.image, [Prompt(box=list(box))], mode=mode)[0]) > 0
        region = spatial if spatial.any() else truth
        logits = np.asarray(segment(model, case.image, [Prompt(text=name) for name in candidates], mode=mode))
        scores = np.array([float(channel[region].mean()) for channel in logits])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        rank = int((probabilities > probabilities[candidates.index(category)]).sum()) if category in candidates else -1
        rows.append({"dataset": case.dataset, "case": case.case, "category": category,
                     "predicted": candidates[int(np.argmax(probabilities))], "rank": rank,
                     "probability_true": float(probabilities[candidates.index(category)]) if rank >= 0 else np.nan,
                     "probabilities": dict(zip(candidates, probabilities.round(5).tolist())),
                     "seed": category_seed(seed, case.case, category)})
    return rows


def run_fig5(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.stores import iter_cases, open_store
    from segvol.evaluate.tables import write_csv

    candidates = sorted({c for store in args.zarr for c in open_store(store).attrs["categories"]})
    model = _model(args)
    rows = []
    for store in args.zarr:
        for case in iter_cases(store, split=args.split, limit=_limit(settings)):
            rows += identify_case(model, case, candidates, args.seed)
    frame = pd.DataFrame(rows)
    summary = pd.DataFrame([
        {"top_k": k, "accuracy": float((frame["rank"].between(0, k - 1)).mean()) if len(frame) else np.nan,
         "examples": len(frame), "candidates": len(candidates)}
        for k in settings["identify_top_k"]
    ])
    per_case = frame.assign(probabilities=frame["probabilities"].map(lambda p: __import__("json").dumps(p))) \
        if len(frame) else frame
    write_parquet(per_case, args.per_case, {"candidates": candidates})
    write_csv(summary, args.out)
    accuracy = ", ".join(f"top-{r.top_k} {r.accuracy:.0%}" for r in summary.itertuples())
    plots.identification_bars(rows[:6], args.png, f"Category identification (Fig 5): {accuracy}")
    return 0


def run_table6(args, settings) -> int:
    """SegVol and every baseline with a checkpoint: parameters, MACs of one whole case, s/case, Dice."""
    import pandas as pd

    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.methods import SegVolMethod
    from segvol.evaluate.tables import write_csv

    methods = [SegVolMethod(_model(args), prompt="box+text", mode="zoom", overlap=settings["overlap"])]
    if args.equivariant:
        methods.append(SegVolMethod(_equivariant_model(args), prompt="box+text", mode="zoom", name=EQUIVARIANT,
                                    overlap=settings["overlap"]))
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

    frames = [score_store(store, [method], seed=args.seed, split=args.split, limit=_limit(settings),
                          tolerance_mm=settings["nsd_tolerance_mm"])[0] for store in args.zarr]
    per_case = pd.concat(frames, ignore_index=True)
    case = next(iter_cases(args.zarr[0], split=args.split, limit=1))
    prompts = [prompt_from_truth(method.prompt, category, truth, np.random.default_rng(0))
               for category, truth in zip(case.categories, case.labels)]
    prompts = [prompt for prompt in prompts if prompt is not None]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        method.predict_many(case.image, case.spacing, prompts)
    parameters = list(method.model.parameters())
    seconds = per_case.drop_duplicates(["dataset", "case"])["case_seconds"]
    row = {
        "method": method.name, "prompt": method.prompt, "parameters": sum(p.numel() for p in parameters),
        "parameters_m": sum(p.numel() for p in parameters) / 1e6,
        "trainable_parameters_m": sum(p.numel() for p in parameters if p.requires_grad) / 1e6,
        "gmacs_per_case": counter.get_total_flops() / 2e9, "macs_case": f"{case.dataset}/{case.case}",
        "macs_categories": len(prompts), "seconds_per_case": float(np.median(seconds)),
        "median_dice": float(np.nanmedian(per_case["dice"])), "cases": len(seconds),
        "threads": torch.get_num_threads(),
    }
    return row, per_case


def rotate_case(case, degrees_z: float, degrees_x: float, degrees_y: float):
    """The case rotated in voxel index space: about z (the H-W plane), then x (D-H), then y (D-W).

    Intensities are linearly interpolated, labels by nearest neighbour; outside is 0 (air after
    normalization). Rotations happen in index space, so on anisotropic grids the physical tilt
    about x/y differs from the nominal angle; the per-case rows record the spacing.
    """
    from scipy import ndimage

    image, labels = case.image, case.labels.astype(np.uint8)
    for angle, axes in ((degrees_z, (1, 2)), (degrees_x, (0, 1)), (degrees_y, (0, 2))):
        if angle:
            image = ndimage.rotate(image, angle, axes=axes, reshape=False, order=1, mode="constant", cval=0.0)
            labels = ndimage.rotate(labels, angle, axes=(axes[0] + 1, axes[1] + 1), reshape=False, order=0,
                                    mode="constant", cval=0)
    return replace(case, image=np.clip(image, 0, 1).astype(np.float32), labels=labels > 0)


EQUIVARIANT = "SegVol + equivariant embedding"


def _equivariant_model(args):
    """A second copy of the evaluated SegVol with the adapter of `--equivariant` attached."""
    from segvol.model.embedding_adapter import load_adapter

    model = _model(args)
    device = next(model.parameters()).device
    load_adapter(model, args.equivariant)
    return model.to(device).eval()  # the adapter's new parameters follow the model


def rotation_effect(per_case, seed: int):
    """Per category (and "all"): paired Dice difference equivariant - SegVol on the same cases,
    unrotated and rotated, with the median's bootstrap CI and the paired Wilcoxon test."""
    import pandas as pd

    from segvol.evaluate.statistics import median_interval, paired_wilcoxon

    wide = per_case.pivot_table(index=["dataset", "case", "category", "variant"], columns="method",
                                values="dice", aggfunc="first").reset_index()
    rows = []
    for category, group in [*wide.groupby("category", sort=True), ("all", wide)]:
        row = {"category": category}
        for variant in ("original", "rotated"):
            block = group[group["variant"] == variant]
            ours, theirs = block[EQUIVARIANT].to_numpy(float), block["SegVol"].to_numpy(float)
            interval = median_interval(ours - theirs, seed=seed)
            test = paired_wilcoxon(ours, theirs)
            row.update({f"{variant}_difference": interval.median, f"{variant}_ci_low": interval.low,
                        f"{variant}_ci_high": interval.high, f"{variant}_p_value": test.p_value,
                        f"{variant}_pairs": test.n})
        rows.append(row)
    return pd.DataFrame(rows)


def effect_verdict(low: float, high: float) -> str:
    """Plain words for a paired difference's confidence interval (ours - SegVol)."""
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "made no measurable difference"


def run_rotation(args, settings) -> int:
    """Median Dice per category, unrotated and rotated; with `--equivariant`, for both models and
    with the paired effect of the equivariant embedding (columns `equivariant_*`, `*_difference`)."""
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod
    from segvol.evaluate.tables import write_csv

    angles = settings["rotation_degrees"]
    methods = [SegVolMethod(_model(args), prompt=settings["prompt"], mode="zoom", overlap=settings["overlap"])]
    if args.equivariant:
        methods.append(SegVolMethod(_equivariant_model(args), prompt=settings["prompt"], mode="zoom",
                                    name=EQUIVARIANT, overlap=settings["overlap"]))
    frames = []
    for store in args.zarr:
        for variant, transform in (("original", None),
                                   ("rotated", lambda c: rotate_case(c, angles["z"], angles["x"], angles["y"]))):
            rows, _ = score_store(store, methods, seed=args.seed, split=args.split, limit=_limit(settings),
                                  tolerance_mm=settings["nsd_tolerance_mm"], transform=transform)
            frames.append(rows.assign(variant=variant))
    per_case = pd.concat(frames, ignore_index=True)
    medians = per_case.groupby(["method", "category", "variant"])["dice"].median().unstack("variant")
    medians = medians.reindex(columns=["original", "rotated"])
    summary = medians.loc["SegVol"].reset_index()
    summary["dice_drop"] = summary["original"] - summary["rotated"]
    title = f"Rotation robustness: {angles['z']} deg about z, {angles['x']}/{angles['y']} deg about x/y"
    series = {"original": "SegVol", "rotated": "SegVol"}
    if args.equivariant:
        ours = medians.loc[EQUIVARIANT].add_prefix("equivariant_").reset_index()
        summary = summary.merge(ours, on="category", how="outer")
        pooled = per_case.groupby(["method", "variant"])["dice"].median()
        summary = pd.concat([summary, pd.DataFrame([{
            "category": "all", "original": pooled["SegVol", "original"], "rotated": pooled["SegVol", "rotated"],
            "equivariant_original": pooled[EQUIVARIANT, "original"],
            "equivariant_rotated": pooled[EQUIVARIANT, "rotated"]}])], ignore_index=True)
        summary["dice_drop"] = summary["original"] - summary["rotated"]
        summary["equivariant_dice_drop"] = summary["equivariant_original"] - summary["equivariant_rotated"]
        summary = summary.merge(rotation_effect(per_case, args.seed), on="category", how="left")
        total = summary.set_index("category").loc["all"]
        title += (f"\nequivariant embedding {effect_verdict(total.rotated_ci_low, total.rotated_ci_high)}"
                  f" on rotated cases: median dDice {total.rotated_difference:+.3f}"
                  f" (95% CI {total.rotated_ci_low:+.3f} to {total.rotated_ci_high:+.3f}, p={total.rotated_p_value:.2g},"
                  f" n={int(total.rotated_pairs)}); unrotated {total.original_difference:+.3f}")
        series.update({"equivariant_original": "equivariant", "equivariant_rotated": "equivariant"})
    write_parquet(per_case, args.per_case, {"rotation_degrees": angles})
    write_csv(summary, args.out)
    bars = summary[summary["category"] != "all"]
    long = bars.melt(id_vars="category", value_vars=list(series), var_name="variant", value_name="median_dice")
    long["variant"] = long["variant"].map(lambda v: f"{series[v]}, {v.removeprefix('equivariant_')}")
    plots.grouped_bars(long, "category", "variant", "median_dice", args.png, title, "median Dice",
                       palette={"SegVol, original": "#c0392b", "SegVol, rotated": "#2c3e50",
                                "equivariant, original": "#e67e22", "equivariant, rotated": "#2980b9"})
    return 0


def mr_like(image: np.ndarray) -> np.ndarray:
    """The demo's MR stand-in: a non-monotonic intensity map plus a smooth bias field.

    CT intensities are reordered (sin maps mid-grey tissue brightest and dense tissue darker,
    as T2-weighted MR reorders water, fat and bone) and multiplied by a 30 % linear coil-bias
    ramp along the rows; air stays 0. It tests robustness to a new contrast, not real MR.
    """
    remapped = np.sin(np.pi * np.clip(image, 0, 1)) * 0.8 + 0.2 * image**2
    ramp = np.linspace(0.85, 1.15, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(remapped * ramp, 0, 1).astype(np.float32)


def run_mri(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod
    from segvol.evaluate.tables import write_csv

    model = _model(args)
    method = SegVolMethod(model, prompt=settings["prompt"], mode="zoom", overlap=settings["overlap"])
    variants = ([("CT", None), ("MR-like stand-in", lambda c: replace(c, image=mr_like(c.image)))]
                if args.stand_in else [("MR", None)])
    frames = []
    for store in args.zarr:
        for variant, transform in variants:
            rows, _ = score_store(store, [method], seed=args.seed, split=args.split, limit=_limit(settings),
                                  tolerance_mm=settings["nsd_tolerance_mm"], transform=transform)
            frames.append(rows.assign(modality=variant))
    per_case = pd.concat(frames, ignore_index=True)
    summary = (per_case.groupby(["category", "modality"], sort=False)["dice"]
               .agg(median_dice="median", mean_dice="mean", scores="count").reset_index())
    write_parquet(per_case, args.per_case, {"stand_in": bool(args.stand_in)})
    write_csv(summary, args.out)
    plots.grouped_bars(summary, "category", "modality", "median_dice", args.png,
                       "MRI generalization" + (" (demo: MR-like intensity stand-in)" if args.stand_in else ""),
                       "median Dice", palette={"CT": "#c0392b", "MR-like stand-in": "#2980b9", "MR": "#2980b9"})
    return 0


def run_statistics(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate.tables import table2_statistics, write_csv

    per_case = pd.read_parquet(args.per_case)
    write_csv(table2_statistics(per_case), args.out)
    return 0


def _segvol_masks(method, case, categories, seed):
    """SegVol's masks of `categories` in `case`, with the prompts Table 2 gave (same seeds)."""
    from segvol.evaluate.prompts import category_seed, prompt_from_truth

    prompts = [prompt_from_truth(method.prompt, c, case.labels[case.categories.index(c)],
                                 np.random.default_rng(category_seed(seed, case.case, c))) for c in categories]
    return dict(zip(categories, method.predict_many(case.image, case.spacing, prompts)))


def run_gallery(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import pictures
    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.methods import SegVolMethod
    from segvol.evaluate.stores import dataset_name, open_store, read_case

    picks = pictures.pick_cases(pd.read_parquet(args.per_case))
    stores = {dataset_name(open_store(path), path): path for path in args.zarr}
    methods = [SegVolMethod(_model(args), prompt=settings["prompt"], mode="zoom", overlap=settings["overlap"])]
    methods += build_baselines(settings["methods"], settings["baseline_checkpoints"], device=args.device)[0]
    rows = []
    for pick in picks.itertuples():
        if pick.dataset not in stores:
            continue
        path = stores[pick.dataset]
        case = read_case(open_store(path), pick.case, path)
        truth = case.labels[case.categories.index(pick.category)]
        masks = {m.name: _segvol_masks(m, case, [pick.category], args.seed)[pick.category] for m in methods}
        rows.append({"image": case.image, "truth": truth, "masks": masks, "spacing": case.spacing,
                     "label": f"{pick.dataset}\n{pick.category}\n{pick.rank} ({pick.case})\nSegVol Dice {pick.dice:.2f}"})
    pictures.gallery(rows, args.png, "Best, median and worst case per task (SegVol's Dice)")
    return 0


def run_fig4(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import pictures
    from segvol.evaluate.metrics import dice
    from segvol.evaluate.stores import iter_cases
    from segvol.evaluate.tables import write_csv
    from segvol.infer import Prompt, segment

    found = None
    for path in args.zarr:
        for case in iter_cases(path, limit=_limit(settings)):
            pair = pictures.nested_pair(case.categories, case.labels)
            if pair is not None:
                found = (case, pair)
                break
        if found:
            break
    if found is None:
        from segvol.evaluate import plots

        write_csv(pd.DataFrame(columns=["prompt", "category", "dice"]), args.out)
        plots.empty_figure(args.png, "Fig 4: semantic prompts disambiguate a point",
                           "no case has one category nested inside another")
        return 0
    case, (inner, outer) = found
    names = [case.categories[inner], case.categories[outer]]
    point = pictures.ambiguous_point(case.labels[inner])
    model = _model(args)
    prompts = [Prompt(points=[point.tolist()], point_labels=[1])]
    prompts += [Prompt(text=name, points=[point.tolist()], point_labels=[1]) for name in names]
    logits = np.asarray(segment(model, case.image, prompts, mode="zoom", overlap=settings["overlap"]))
    labels = ["point only", *[f"point + '{name}'" for name in names]]
    masks = dict(zip(labels, logits > 0))
    truths = {f"point + '{name}'": case.labels[case.categories.index(name)] for name in names}
    rows = [{"dataset": case.dataset, "case": case.case, "prompt": label, "category": name,
             "dice": dice(mask, case.labels[case.categories.index(name)]), "point": point.tolist()}
            for label, mask in masks.items() for name in names]
    write_csv(pd.DataFrame(rows), args.out)
    pictures.figure4(case.image, case.spacing, point, masks, truths, args.png,
                     f"Fig 4: one point inside '{names[0]}' (within '{names[1]}'), {case.dataset} {case.case}")
    return 0


def run_overlap(args, settings) -> int:
    from segvol.evaluate.overlap import run_audit

    return run_audit(args.external, args.train, args.out, threshold=args.threshold)


def run_interactive(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import interactive, plots
    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.methods import SegVolMethod
    from segvol.evaluate.stores import iter_cases
    from segvol.evaluate.tables import write_csv

    methods = [SegVolMethod(_model(args), prompt="box+point", mode="zoom", overlap=settings["overlap"])]
    baselines, reasons = build_baselines(settings["methods"], settings["baseline_checkpoints"], device=args.device)
    methods += [m for m in baselines if hasattr(m, "step_predictor")]
    for name, reason in reasons.items():
        log.info("%s: %s", name, reason)
    summaries, steps = [], []
    for store in args.zarr:
        for case in iter_cases(store, split=args.split, limit=_limit(settings)):
            for index, category in enumerate(case.categories):
                truth = np.asarray(case.labels[index], dtype=bool)
                if not truth.any():
                    continue
                for method in methods:
                    predictor = interactive.method_step_predictor(method, case.image, case.spacing, truth)
                    result = interactive.run_protocol(predictor, truth, case.spacing, category)
                    summary, per_step = interactive.result_rows(
                        result, dataset=case.dataset, case=case.case, category=category, method=method.name)
                    summaries.append(summary)
                    steps += per_step
                    log.info("%s %s %s %s: DSC per step %s", case.dataset, case.case, category, method.name,
                             " ".join(f"{v:.2f}" for v in result.dsc))
    per_case = pd.DataFrame(summaries)
    per_step = pd.DataFrame(steps, columns=["dataset", "case", "category", "method", "step", "dsc", "nsd", "seconds"])
    metrics = ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds_per_step"]
    table = (per_case.groupby(["dataset", "category", "method"], sort=False)[metrics].median()
             .join(per_case.groupby(["dataset", "category", "method"], sort=False).size().rename("n"))
             .reset_index()) if len(per_case) else pd.DataFrame(columns=["dataset", "category", "method", *metrics, "n"])
    write_parquet(per_step, args.per_step, {"protocol": interactive.__doc__.split("\n\n")[0],
                                            "methods": reasons, "cases": per_case.to_dict("records")})
    write_csv(table, args.out)
    curve = per_step.groupby(["method", "step"], sort=False)["dsc"].agg(
        mean_dsc="mean", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75)).reset_index()
    plots.lines(curve, "step", "mean_dsc", args.png,
                "Interactive protocol: box (step 0), then corrective clicks", "step (0 = box)",
                "DSC (mean, interquartile band)", group="method", low="q25", high="q75")
    return 0


HANDLERS = {"fig2": run_fig2, "fig3a": run_fig3a, "fig3b": run_fig3b, "fig5": run_fig5, "table6": run_table6,
            "rotation": run_rotation, "mri": run_mri, "statistics": run_statistics, "interactive": run_interactive,
            "overlap": run_overlap, "gallery": run_gallery, "fig4": run_fig4}
