"""Pictures of segmentations: a per-task gallery (the paper's Figs 10-13) and a Fig-4-style figure.

- **Gallery.** For each (dataset, category) of Table 2, the best, median and worst case by SegVol's
  Dice; each row shows three orthogonal slices through the object's centre (axial, coronal,
  sagittal) with the ground truth (white outline) and each method's mask (its colour).
- **Fig 4 (semantic prompts disambiguate spatial ones).** One point inside a structure nested in
  another (a tumour inside its organ): the same point with no text and with each category's name
  gives different masks.

Images are shown as stored: normalized intensity in [0, 1] (the foreground-percentile
normalization of the paper's Sec. 3.1 maps the 0.5-99.5 % HU range of the body onto it), so the
"window" is that full range; it is stated in each figure's title.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WINDOW_NOTE = "window: normalized intensity 0-1 (0.5-99.5 % of the body's HU)"


def pick_cases(per_case, method: str = "SegVol"):
    """(dataset, category, rank, case, dice) rows: the best, median and worst case per task."""
    import pandas as pd

    rows = []
    scored = per_case[per_case["method"] == method].dropna(subset=["dice"])
    for (dataset, category), block in scored.groupby(["dataset", "category"], sort=False):
        ordered = block.sort_values(["dice", "case"], ascending=[False, True]).reset_index(drop=True)
        picks = {"best": 0, "median": (len(ordered) - 1) // 2, "worst": len(ordered) - 1}
        seen = set()
        for rank, index in picks.items():
            if index in seen:
                continue
            seen.add(index)
            rows.append(
                {
                    "dataset": dataset,
                    "category": category,
                    "rank": rank,
                    "case": ordered.loc[index, "case"],
                    "dice": float(ordered.loc[index, "dice"]),
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "category", "rank", "case", "dice"])


def centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel at the object's centre of mass (rounded), the slices a person would look at."""
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def orthogonal_slices(array: np.ndarray, at: Sequence[int]) -> list[np.ndarray]:
    """Axial (D), coronal (H) and sagittal (W) slices of a (D, H, W) array through voxel `at`.

    Coronal and sagittal slices are flipped so that superior is up.
    """
    d, h, w = at
    return [array[d], np.flipud(array[:, h, :]), np.flipud(array[:, :, w])]


def draw_row(axes, image, truth, masks: dict, colours: dict, spacing) -> None:
    """One row of three views: image, ground-truth outline, each method's outline."""
    at = centre(truth)
    aspects = [spacing[1] / spacing[2], spacing[0] / spacing[2], spacing[0] / spacing[1]]
    views = zip(
        orthogonal_slices(image, at),
        orthogonal_slices(truth, at),
        *[orthogonal_slices(m, at) for m in masks.values()],
        aspects,
    )
    for axis, (picture, gt, *predictions, aspect) in zip(axes, views):
        axis.imshow(picture, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if gt.any():
            axis.contour(gt.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        for name, prediction in zip(masks, predictions):
            if prediction.any():
                axis.contour(prediction.astype(float), levels=[0.5], colors=colours[name], linewidths=1.2)
        axis.set_xticks([])
        axis.set_yticks([])


def gallery(rows: list[dict], path, title: str) -> None:
    """rows: dicts with image, truth, masks {method: mask}, spacing, label; one figure row each."""
    from segvol.evaluate import plots

    if not rows:
        plots.empty_figure(path, title, "no scored case to show")
        return
    plt = plots.pyplot()
    methods = list(dict.fromkeys(name for row in rows for name in row["masks"]))
    colours = {name: plots.colour(name, index=i) for i, name in enumerate(methods)}
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 2.8 * len(rows)), squeeze=False)
    for axis_row, row in zip(axes, rows):
        draw_row(axis_row, row["image"], row["truth"], row["masks"], colours, row["spacing"])
        axis_row[0].set_ylabel(row["label"], fontsize=9)
    for axis, view in zip(axes[0], ("axial", "coronal", "sagittal")):
        axis.set_title(view)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="white", label="ground truth", lw=2)]
    handles += [Line2D([], [], color=colours[name], label=name, lw=2) for name in methods]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), facecolor="#555555", labelcolor="white")
    figure.suptitle(f"{title}\n{WINDOW_NOTE}", fontsize=11)
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    plots.save(figure, path)


def nested_pair(categories: Sequence[str], labels: np.ndarray, minimum: int = 20):
    """(inner index, outer index) of two present categories where most of the inner lies in the outer.

    A point inside the inner object also lies inside the outer one: only text can say which is meant.
    """
    from scipy import ndimage

    present = [i for i, mask in enumerate(labels) if mask.sum() >= minimum]
    best = None
    for outer in present:
        # A label map may cut the tumour out of its organ: the organ's closed, filled shape holds it.
        region = ndimage.binary_fill_holes(ndimage.binary_closing(labels[outer] > 0, iterations=2))
        for inner in present:
            if inner == outer or labels[inner].sum() >= labels[outer].sum():
                continue
            inside = float(np.logical_and(labels[inner], region).sum()) / float(labels[inner].sum())
            if inside >= 0.9 and (best is None or labels[inner].sum() > labels[best[0]].sum()):
                best = (inner, outer)
    return best


def ambiguous_point(inner: np.ndarray) -> np.ndarray:
    """The inner object's deepest voxel: unambiguous in space, ambiguous in meaning."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(inner, 1))[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), inner.shape))


def figure4(image, spacing, point, masks: dict, truths: dict, path, title: str) -> None:
    """One panel per text prompt (plus none) on the axial slice through the point."""
    from segvol.evaluate import plots

    plt = plots.pyplot()
    figure, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.6), squeeze=False)
    d, h, w = (int(v) for v in point)
    for axis, (label, mask) in zip(axes[0], masks.items()):
        axis.imshow(image[d], cmap="gray", vmin=0, vmax=1, aspect=spacing[1] / spacing[2])
        if mask[d].any():
            axis.imshow(
                np.ma.masked_where(~mask[d], mask[d]), cmap="autumn", alpha=0.55, aspect=spacing[1] / spacing[2]
            )
        truth = truths.get(label)
        if truth is not None and truth[d].any():
            axis.contour(truth[d].astype(float), levels=[0.5], colors="white", linewidths=1.0)
        axis.plot([w], [h], marker="*", color="#00e5ff", markersize=14, markeredgecolor="black")
        axis.set_title(label, fontsize=11)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{title}\n{WINDOW_NOTE}; star: the point, white: ground truth of the text's category", fontsize=10)
    figure.tight_layout()
    plots.save(figure, path)
