"""The interactive protocol of today's 3D foundation-model comparisons: a box, then 5 corrective clicks.

This follows the official evaluation of the CVPR 2025 challenge "Foundation Models for Interactive 3D
Biomedical Image Segmentation" (the protocol nnInteractive, SAM-Med3D and VISTA3D report), per
category of a case:

1. **Box step.** The challenge's box is a 2-D box on the object's middle slice plus its z-range. The
   middle slice is the median of the object's voxels along z (`z[len(z) // 2]` of the sorted
   indices); the 2-D box is grown by a random 0-5 px margin (scaled by size / 256) drawn from a
   seeded generator. As a 3-D box for a 3-D model: `(z_min, y_min, x_min, z_max, y_max, x_max)`.
   Vessels get no box (their box says nothing): that step scores 0 and takes no time.
2. **Click steps (5).** The error of the current prediction (`prediction != truth`) is split into
   26-connected components; the largest one gets a click at the maximum of its Euclidean distance
   transform (the volume's outside counts as background); ties are broken by `RandomState(42)`, as
   the official script does. The click is foreground when the truth is foreground there, else
   background (`segvol.infer.clicks.corrective_click`, which corrective-click training shares). The
   model sees the box, all clicks so far and its previous prediction.
3. **Scores after every step:** DSC and NSD at 2 mm. Like the official script, NSD is only computed
   when DSC > 0.2 and is 0 otherwise.
4. **Summaries:** `DSC_AUC` / `NSD_AUC` = trapezoid over the 5 click steps (x = 0..4, so the
   maximum is 4; the box step is optional and not in the AUC), final DSC/NSD, seconds per step.
   A category over the 90 s budget stops there: the remaining steps keep its last prediction and the
   row says `over_time_cap`.

Any method takes part through a `StepPredictor` (see `segvol_step_predictor` for SegVol); the
harness owns prompts, clicks and scores, so every method is measured identically.

Example:
  segvol evaluate interactive --checkpoint M --zarr data/zarr/ext_organs.zarr --out results/interactive.csv \\
      --per-step results/interactive_steps.parquet --png results/figures/interactive.png
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from segvol.evaluate.metrics import dice, normalized_surface_dice
from segvol.infer.clicks import corrective_click as challenge_click

log = logging.getLogger("segvol.evaluate")

CLICKS = 5
NSD_TOLERANCE_MM = 2.0
NSD_MIN_DICE = 0.2
TIME_CAP_SECONDS = 90.0
BOX_SEED = 2025

# Categories for which the protocol gives no box (tubular structures a box does not describe).
VESSELS = frozenset(
    {
        "aorta",
        "inferior vena cava",
        "portal vein and splenic vein",
        "hepatic vessel",
        "pulmonary artery",
        "left common carotid artery",
        "right common carotid artery",
        "brachiocephalic trunk",
        "renal artery",
        "renal vein",
        "iliac artery",
        "iliac vena",
        "left iliac artery",
        "right iliac artery",
        "left iliac vena",
        "right iliac vena",
        "vessel",
    }
)

# predict(box | None, points (N, 3) int, labels (N,) in {0, 1}, previous mask | None) -> mask (D, H, W) bool
StepPredictor = Callable[["tuple[int, ...] | None", np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def challenge_box(truth: np.ndarray, rng: np.random.RandomState) -> tuple[int, ...]:
    """The protocol's box of a non-empty (D, H, W) mask as (d0, h0, w0, d1, h1, w1), inclusive."""
    z, _, _ = np.nonzero(truth)
    if z.size == 0:
        raise ValueError("challenge_box needs a non-empty mask")
    z_mid = int(z[len(z) // 2])
    rows, cols = np.nonzero(truth[z_mid])
    height, width = truth.shape[1:]
    shift = int(rng.randint(0, 6, 1)[0])
    shift_y, shift_x = int(shift * height / 256), int(shift * width / 256)
    return (
        int(z.min()),
        max(0, int(rows.min()) - shift_y),
        max(0, int(cols.min()) - shift_x),
        int(z.max()),
        min(height - 1, int(rows.max()) + shift_y),
        min(width - 1, int(cols.max()) + shift_x),
    )


def click_auc(values: Sequence[float], clicks: int = CLICKS) -> float:
    """Trapezoid of the last `clicks` per-step values over x = 0 .. clicks - 1."""
    values = np.asarray(values, dtype=float)[-clicks:]
    return float(np.trapezoid(values, dx=1.0)) if values.size > 1 else math.nan


@dataclass
class ProtocolResult:
    """Scores of one (case, category) under the protocol; step 0 is the box, steps 1..5 the clicks."""

    dsc: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    clicks: list[tuple[tuple[int, ...], int]] = field(default_factory=list)
    used_box: bool = True
    over_time_cap: bool = False

    @property
    def dsc_auc(self) -> float:
        return click_auc(self.dsc)

    @property
    def nsd_auc(self) -> float:
        return click_auc(self.nsd)


def _scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    score = dice(prediction, truth)
    score = 0.0 if math.isnan(score) else score
    if score <= NSD_MIN_DICE:
        return score, 0.0
    return score, normalized_surface_dice(prediction, truth, spacing, NSD_TOLERANCE_MM)


def run_protocol(
    predict: StepPredictor,
    truth: np.ndarray,
    spacing: Sequence[float],
    category: str,
    clicks: int = CLICKS,
    time_cap: float = TIME_CAP_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> ProtocolResult:
    """Run the box step and `clicks` click steps of one category; see the module docstring."""
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 3 or not truth.any():
        raise ValueError(f"the interactive protocol needs a non-empty 3-D mask for {category!r}")
    result = ProtocolResult(used_box=category not in VESSELS and getattr(predict, "takes_box", True))
    box = challenge_box(truth, np.random.RandomState(BOX_SEED)) if result.used_box else None
    points: list[np.ndarray] = []
    labels: list[int] = []
    prediction = np.zeros_like(truth)
    predicted = False
    spent = 0.0

    def step() -> np.ndarray:
        nonlocal spent, predicted
        previous = prediction if predicted else None
        predicted = True
        start = clock()
        mask = np.asarray(
            predict(box, np.array(points, dtype=np.int64).reshape(-1, 3), np.array(labels, dtype=np.int64), previous),
            dtype=bool,
        )
        elapsed = clock() - start
        spent += elapsed
        result.seconds.append(elapsed)
        if mask.shape != truth.shape:
            raise ValueError(f"a step returned a mask of shape {mask.shape}, expected {truth.shape}")
        return mask

    if box is not None:
        prediction = step()
        dsc_value, nsd_value = _scores(prediction, truth, spacing)
    else:
        result.seconds.append(0.0)
        dsc_value, nsd_value = 0.0, 0.0
    result.dsc.append(dsc_value)
    result.nsd.append(nsd_value)
    for _ in range(clicks):
        if spent > time_cap:
            result.over_time_cap = True
        click = None if result.over_time_cap else challenge_click(prediction, truth)
        if click is not None:
            points.append(click[0])
            labels.append(click[1])
            result.clicks.append((tuple(int(v) for v in click[0]), click[1]))
            prediction = step()
            dsc_value, nsd_value = _scores(prediction, truth, spacing)
        else:
            result.seconds.append(0.0)
        result.dsc.append(dsc_value)
        result.nsd.append(nsd_value)
    return result


def segvol_step_predictor(
    model, volume: np.ndarray, text: str | None = None, mode: str = "zoom", overlap: float = 0.5
) -> StepPredictor:
    """SegVol as a `StepPredictor`: box and all clicks so far (and `text` if given) as one prompt.

    A model with a trained mask-prompt branch (`segvol.model.mask_prompt`, trained by corrective-click
    fine-tuning) also gets its previous step's logits as mask prompt, as `Session` prompts a refinement;
    without one (the released model) clicks alone carry the correction. The image embedding is
    recomputed per step (the same cost a user pays per edit).
    """
    import torch

    from segvol.infer import Prompt, segment
    from segvol.infer.geometry import box_slices
    from segvol.infer.mask_prompts import MaskPrompt
    from segvol.infer.zoom import OUTSIDE_LOGIT, segment_region
    from segvol.model.mask_prompt import mask_prompt_is_trained

    uses_mask = mask_prompt_is_trained(model)
    kept: dict = {}

    def predict(box, points, labels, previous):
        prompt = Prompt(
            text=text,
            box=None if box is None else list(box),
            points=points.tolist() if len(points) else None,
            point_labels=labels.tolist() if len(points) else None,
        )
        if not uses_mask:  # the released model: exactly the one-shot segmentation of these prompts
            with torch.inference_mode():
                logits = segment(model, volume, [prompt], mode=mode, overlap=overlap)
            logits = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
            return logits[0] > 0
        mask = kept.get("mask") if previous is not None else None
        with torch.inference_mode():
            region, part = segment_region(model, volume, [prompt], mode=mode, overlap=overlap, masks=[mask])
        kept["mask"] = MaskPrompt(region, part[0])
        logits = torch.full(tuple(volume.shape), OUTSIDE_LOGIT, dtype=torch.float32)
        logits[box_slices(region)] = part[0]
        return logits.numpy() > 0

    return predict


def method_step_predictor(method, volume: np.ndarray, spacing: Sequence[float], truth: np.ndarray):
    """The `StepPredictor` of an evaluated method (`segvol.evaluate.methods.Method`), or None.

    SegVol methods run through `segvol_step_predictor`; a baseline takes part when it implements
    `step_predictor(volume, spacing, truth)` (a predictor whose `takes_box = False` gets no box step).
    """
    from segvol.evaluate.methods import SegVolMethod

    if isinstance(method, SegVolMethod):
        return segvol_step_predictor(method.model, volume, mode=method.mode, overlap=method.overlap)
    factory = getattr(method, "step_predictor", None)
    return None if factory is None else factory(volume, spacing, truth)


def result_rows(result: ProtocolResult, **keys) -> tuple[dict, list[dict]]:
    """(summary row, one row per step) for the protocol's tables."""
    summary = {
        **keys,
        "dsc_auc": result.dsc_auc,
        "nsd_auc": result.nsd_auc,
        "dsc_final": result.dsc[-1],
        "nsd_final": result.nsd[-1],
        "seconds_per_step": float(np.mean(result.seconds)),
        "seconds_total": float(np.sum(result.seconds)),
        "used_box": result.used_box,
        "over_time_cap": result.over_time_cap,
        "clicks": len(result.clicks),
    }
    steps = [
        {**keys, "step": index, "dsc": d, "nsd": n, "seconds": s}
        for index, (d, n, s) in enumerate(zip(result.dsc, result.nsd, result.seconds))
    ]
    return summary, steps


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary CSV: per dataset, category and method")
    parser.add_argument("--per-step", required=True, help="tidy parquet: one row per case, category, method and step")
    parser.add_argument("--png", required=True, help="per-step curve")
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.cases import write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.stores import iter_cases
    from segvol.evaluate.tables import write_csv

    model = load_segvol(args.checkpoint, device=args.device)
    methods = [SegVolMethod(model, prompt="box+point", mode="zoom", overlap=settings["overlap"])]
    baselines, reasons = build_baselines(settings["methods"], settings["baseline_checkpoints"], device=args.device)
    methods += [m for m in baselines if hasattr(m, "step_predictor")]
    for name, reason in reasons.items():
        log.info("%s: %s", name, reason)
    summaries, steps = [], []
    for store in args.zarr:
        for case in iter_cases(store, split=args.split, limit=settings.get("max_cases")):
            for index, category in enumerate(case.categories):
                truth = np.asarray(case.labels[index], dtype=bool)
                if not truth.any():
                    continue
                for method in methods:
                    predictor = method_step_predictor(method, case.image, case.spacing, truth)
                    result = run_protocol(predictor, truth, case.spacing, category)
                    summary, per_step = result_rows(
                        result, dataset=case.dataset, case=case.case, category=category, method=method.name
                    )
                    summaries.append(summary)
                    steps += per_step
                    log.info(
                        "%s %s %s %s: DSC per step %s",
                        case.dataset,
                        case.case,
                        category,
                        method.name,
                        " ".join(f"{v:.2f}" for v in result.dsc),
                    )
    per_case = pd.DataFrame(summaries)
    per_step = pd.DataFrame(steps, columns=["dataset", "case", "category", "method", "step", "dsc", "nsd", "seconds"])
    metrics = ["dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds_per_step"]
    keys = ["dataset", "category", "method"]
    table = (
        (
            per_case.groupby(keys, sort=False)[metrics]
            .median()
            .join(per_case.groupby(keys, sort=False).size().rename("n"))
            .reset_index()
        )
        if len(per_case)
        else pd.DataFrame(columns=[*keys, *metrics, "n"])
    )
    write_parquet(
        per_step,
        args.per_step,
        {"protocol": __doc__.split("\n\n")[0], "methods": reasons, "cases": per_case.to_dict("records")},
    )
    write_csv(table, args.out)
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
        "Interactive protocol: box (step 0), then corrective clicks",
        "step (0 = box)",
        "DSC (mean, interquartile band)",
        group="method",
        low="q25",
        high="q75",
    )
    return 0
