"""Before vs after: the starting weights and the fine-tuned model on the held-out (test) split of your store.

`results/own/before_after.csv` holds one row per (prompt kind, category), plus an "all categories" row per
prompt kind: the cases scored, the median Dice and NSD before and after with their percentile bootstrap 95 %
confidence intervals, the median paired change and the paired Wilcoxon p-value
(`segvol.evaluate.statistics`, as for Table 2). `before_after_cases.csv` has every (case, category, prompt,
model) score; the figure shows the medians with their intervals and every case.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segvol.evaluate.statistics import median_interval, paired_wilcoxon
from segvol.own_data.scoring import score_split

log = logging.getLogger(__name__)

ALL = "all categories"
MODELS = ("before", "after")
METRICS = ("dice", "nsd")
COLUMNS = (
    ["prompt", "category", "cases"]
    + [f"{metric}_{model}{part}" for metric in METRICS for model in MODELS for part in ("", "_ci_low", "_ci_high")]
    + [f"{metric}_change" for metric in METRICS]
    + [f"{metric}_p_value" for metric in METRICS]
)
CASE_COLUMNS = ["case", "category", "prompt", "model", "dice", "nsd", "voxels_truth", "voxels_pred"]


def score_models(store: str, before, after, settings: dict, seed: int):
    """Per-case scores of both models on the test split (a DataFrame of CASE_COLUMNS)."""
    import pandas as pd

    rows = []
    for name, model in (("before", before), ("after", after)):
        scored = score_split(model, store, "test", settings["prompts"], seed, settings["nsd_tolerance_mm"])
        rows += [{**row, "model": name} for row in scored]
        log.info("%s: %d (case, category, prompt) scores on the test split", name, len(scored))
    if not rows:
        raise ValueError(f"{store}: no labelled category in the test split to score")
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def summarize(cases, seed: int = 0):
    """One row per (prompt, category) and per prompt over all categories (COLUMNS)."""
    import pandas as pd

    rows = []
    for prompt in dict.fromkeys(cases["prompt"]):
        block = cases[cases.prompt == prompt]
        groups = [(category, block[block.category == category]) for category in dict.fromkeys(block["category"])]
        for category, part in [*groups, (ALL, block)]:
            paired = part.pivot(index=["case", "category"], columns="model", values=list(METRICS))
            row = {"prompt": prompt, "category": category, "cases": int(part["case"].nunique())}
            for metric in METRICS:
                for model in MODELS:
                    values = paired[(metric, model)].to_numpy(dtype=float)
                    interval = median_interval(values, seed=seed)
                    row.update(
                        {
                            f"{metric}_{model}": interval.median,
                            f"{metric}_{model}_ci_low": interval.low,
                            f"{metric}_{model}_ci_high": interval.high,
                        }
                    )
                test = paired_wilcoxon(
                    paired[(metric, "after")].to_numpy(float), paired[(metric, "before")].to_numpy(float)
                )
                row[f"{metric}_change"], row[f"{metric}_p_value"] = test.median_difference, test.p_value
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_csv(frame, path: str | Path) -> Path:
    from segvol.io.atomic import atomic_path
    from segvol.provenance import write_sidecar

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, float_format="%.4f")
    write_sidecar(path)
    return path


def figure(summary, cases, path: str | Path, title: str) -> Path:
    """Median Dice and NSD before/after per category (bars, 95 % CI whiskers) with every case as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segvol.io.atomic import atomic_path
    from segvol.provenance import write_sidecar

    several = summary["prompt"].nunique() > 1
    labels = [f"{row.category}\n({row.prompt})" if several else row.category for row in summary.itertuples()]
    x = np.arange(len(summary))
    colours = {"before": "#95a5a6", "after": "#c0392b"}
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(summary) + 2), 4.2), sharey=True)
    for axis, metric in zip(axes, METRICS):
        for offset, model in ((-0.2, "before"), (0.2, "after")):
            median = summary[f"{metric}_{model}"].to_numpy(float)
            low = np.nan_to_num(median - summary[f"{metric}_{model}_ci_low"].to_numpy(float))
            high = np.nan_to_num(summary[f"{metric}_{model}_ci_high"].to_numpy(float) - median)
            axis.bar(
                x + offset,
                median,
                width=0.38,
                color=colours[model],
                label=model,
                yerr=[low, high],
                capsize=3,
                error_kw={"elinewidth": 1},
            )
            for index, row in enumerate(summary.itertuples()):
                block = cases[(cases.model == model) & (cases.prompt == row.prompt)]
                if row.category != ALL:
                    block = block[block.category == row.category]
                values = block[metric].dropna().to_numpy(float)
                axis.scatter(np.full(len(values), index + offset), values, s=9, color="black", zorder=3)
        axis.set_xticks(x, labels, rotation=30, ha="right")
        axis.set_ylim(0, 1.02)
        axis.set_title({"dice": "Dice", "nsd": "NSD"}[metric])
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("median over held-out cases (95 % CI)")
    axes[0].legend(loc="lower left")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    write_sidecar(path)
    return path


def before_after(
    store: str,
    weights: str,
    model_path: str,
    out: str | Path,
    figure_path: str | Path,
    settings: dict,
    model_settings: dict,
    seed: int = 2023,
    device: str | None = None,
) -> Path:
    """Score `weights` (before) and `model_path` (after) on the test split; write the CSVs and the figure."""
    from segvol.device import resolve_device
    from segvol.model import checkpoint
    from segvol.own_data.train import starting_model

    chosen = resolve_device(device)
    before, _ = starting_model(weights, model_settings)
    after = checkpoint.load(model_path)
    cases = score_models(store, before.to(chosen), after.to(chosen), settings, seed)
    summary = summarize(cases, seed=seed)
    out = Path(out)
    write_csv(cases, out.with_name(out.stem + "_cases.csv"))
    figure(summary, cases, figure_path, f"Fine-tuning on {Path(store).stem}: before vs after (held-out cases)")
    write_csv(summary, out)
    for row in summary[summary.category == ALL].itertuples():
        log.info(
            "%s: median Dice %.3f -> %.3f, NSD %.3f -> %.3f",
            row.prompt,
            row.dice_before,
            row.dice_after,
            row.nsd_before,
            row.nsd_after,
        )
    return out
