"""Figures of the evaluation: one look for all of them (fonts, fixed method colours)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# A method keeps its colour in every figure.
METHOD_COLOURS = {
    "SegVol": "#c0392b",
    "SAM (point)": "#7f8c8d",
    "SAM (box)": "#34495e",
    "MedSAM": "#2980b9",
    "SAM-Med2D": "#27ae60",
    "SAM-Med3D": "#8e44ad",
}
PROMPT_COLOURS = {
    "text": "#f39c12",
    "point": "#16a085",
    "box": "#2c3e50",
    "point+text": "#8e44ad",
    "box+text": "#c0392b",
}
FALLBACK = ["#e67e22", "#1abc9c", "#9b59b6", "#95a5a6", "#d35400", "#2ecc71"]


def colour(name: str, palette: dict | None = None, index: int = 0) -> str:
    palette = METHOD_COLOURS if palette is None else palette
    return palette.get(name, FALLBACK[index % len(FALLBACK)])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 12,
            "axes.titlesize": 13,
            "axes.labelsize": 12,
            "legend.fontsize": 10,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "figure.dpi": 110,
        }
    )
    return plt


def save(figure, path: str | Path) -> None:
    from segvol.io.atomic import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", bbox_inches="tight", dpi=110)
    pyplot().close(figure)
    from segvol.provenance import write_sidecar

    write_sidecar(path)


def empty_figure(path, title: str, message: str) -> None:
    """A figure that says why there is nothing to show (never a silently blank plot)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 2.5))
    axis.axis("off")
    axis.set_title(title)
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save(figure, path)


def violins(per_case, methods: Sequence[str], path, title: str) -> None:
    """Fig 2: per-case Dice distributions, one panel per (dataset, category), one violin per method."""
    plt = pyplot()
    scored = per_case.dropna(subset=["dice"])
    tasks = list(scored[["dataset", "category"]].drop_duplicates().itertuples(index=False, name=None))
    if not tasks:
        return empty_figure(path, title, "no per-case scores")
    columns = min(4, len(tasks))
    rows = int(np.ceil(len(tasks) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), squeeze=False, sharey=True)
    for axis, (dataset, category) in zip(axes.flat, tasks):
        block = scored[(scored.dataset == dataset) & (scored.category == category)]
        positions, data, names = [], [], []
        for index, method in enumerate(methods):
            values = block.loc[block.method == method, "dice"].to_numpy()
            if len(values):
                positions.append(index)
                data.append(values)
                names.append(method)
        for position, values, method in zip(positions, data, names):
            if len(values) > 1 and np.ptp(values) > 0:
                parts = axis.violinplot([values], positions=[position], widths=0.6, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(colour(method, index=position))
                    body.set_alpha(0.6)
                for line in ("cbars", "cmins", "cmaxes", "cmedians"):
                    parts[line].set_color("black")
                    parts[line].set_linewidth(1.6 if line == "cmedians" else 0.8)
            axis.scatter(np.full(len(values), position), values, s=10, color=colour(method, index=position), zorder=3)
        axis.set_xticks(range(len(methods)))
        axis.set_xlim(-0.6, len(methods) - 0.4)
        axis.set_xticklabels(methods, rotation=30, ha="right")
        axis.set_title(f"{dataset}: {category}", fontsize=11)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("Dice per case")
    for axis in list(axes.flat)[len(tasks) :]:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    save(figure, path)


def lines(
    summary,
    x: str,
    y: str,
    path,
    title: str,
    xlabel: str,
    ylabel: str,
    group: str | None = None,
    low: str | None = None,
    high: str | None = None,
    label: str | None = None,
) -> None:
    """Fig 3a: a metric over an ordered x (e.g. number of training datasets)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    groups = [(None, summary)] if group is None else list(summary.groupby(group, sort=False))
    for index, (name, block) in enumerate(groups):
        axis.plot(
            block[x],
            block[y],
            marker="o",
            lw=2,
            color=FALLBACK[index % len(FALLBACK)] if name else "#c0392b",
            label=name,
        )
        if low and high:
            axis.fill_between(
                block[x],
                block[low],
                block[high],
                alpha=0.15,
                color=FALLBACK[index % len(FALLBACK)] if name else "#c0392b",
            )
    if label:
        for _, row in summary.iterrows():
            axis.annotate(
                str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=10
            )
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if group is not None:
        axis.legend()
    figure.tight_layout()
    save(figure, path)


def grouped_bars(
    summary,
    category: str,
    series: str,
    value: str,
    path,
    title: str,
    ylabel: str,
    palette: dict | None = None,
    series_order: Sequence[str] | None = None,
    error: str | None = None,
) -> None:
    """Fig 3b / rotation / MRI: bars per category, one colour per series."""
    plt = pyplot()
    categories = list(dict.fromkeys(summary[category]))
    order = list(series_order or dict.fromkeys(summary[series]))
    if not categories:
        return empty_figure(path, title, "no scores")
    width = 0.8 / max(1, len(order))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) + 0.22 * len(categories) * len(order)), 4.2))
    for index, name in enumerate(order):
        block = summary[summary[series] == name].set_index(category).reindex(categories)
        offsets = np.arange(len(categories)) + (index - (len(order) - 1) / 2) * width
        axis.bar(
            offsets,
            block[value],
            width,
            label=name,
            color=colour(name, palette or {}, index),
            yerr=None if error is None else block[error],
            capsize=2,
        )
    axis.set_xticks(range(len(categories)))
    axis.set_xticklabels(categories, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.axhline(0, color="black", lw=0.8)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    save(figure, path)


def identification_bars(examples, path, title: str, top: int = 5) -> None:
    """Fig 5: per example (case, true category), the top category probabilities; truth highlighted."""
    plt = pyplot()
    if not examples:
        return empty_figure(path, title, "no identification examples")
    columns = min(3, len(examples))
    rows = int(np.ceil(len(examples) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 2.8 * rows), squeeze=False)
    for axis, example in zip(axes.flat, examples):
        ranked = sorted(example["probabilities"].items(), key=lambda item: -item[1])[:top][::-1]
        names = [name for name, _ in ranked]
        colours = ["#c0392b" if name == example["category"] else "#95a5a6" for name in names]
        axis.barh(names, [p for _, p in ranked], color=colours)
        axis.set_xlim(0, 1)
        axis.set_xlabel("probability")
        rank = (
            sorted(example["probabilities"], key=lambda n: -example["probabilities"][n]).index(example["category"])
            if example["category"] in example["probabilities"]
            else None
        )
        note = "" if rank is None or rank < top else f" (truth ranked {rank + 1})"
        where = f"{example['dataset']}/{example['case']}" if "dataset" in example else example["case"]
        axis.set_title(f"{where}: {example['category']}{note}", fontsize=11)
    for axis in list(axes.flat)[len(examples) :]:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    save(figure, path)
