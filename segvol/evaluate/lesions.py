"""Lesion-wise detection: how many lesions a mask finds, not only how well it overlaps them.

Dice over a whole case hides the failures that matter for lesions: a large tumour segmented well and
three small ones missed still scores high. Lesion benchmarks therefore also count lesions (the LiTS
report's detection analysis: lesion-wise recall and precision). This module does that for one binary
prediction and its ground truth of one category.

Convention (one place, used everywhere):

1. Lesions are the connected components of each mask with **26-connectivity** (voxels that share a
   face, an edge or a corner belong to one lesion), by `skimage.measure.label(connectivity=3)`. Two
   lesions that touch at a corner are one lesion; a gap of one background voxel separates two.
   (The LiTS evaluation script labels with scipy's default face connectivity instead, after an
   in-plane dilation of the reference that joins its nearby fragments; 26-connectivity gives the same
   joining without a dilation radius to choose.)
2. Reference lesions and predicted components that overlap by at least one voxel are linked; the
   connected groups of that overlap graph are the **clusters**. A prediction split into pieces over
   one lesion, or one prediction covering two lesions, is one cluster, as in the LiTS evaluation,
   which merges the reference lesions spanned by one prediction and the predictions spanned by one
   lesion before it matches them (there only along each lesion's largest overlap; the whole connected
   group used here needs no tie rule and does not depend on label order).
3. A cluster is a **hit** when the IoU of its reference voxels and its predicted voxels is above
   `min_iou`: `min_iou=0.5` is the LiTS script's criterion, `min_iou=0` means "any overlap" (the
   LiTS script counts detections at both). The reference lesions of a hit are **detected**, the others **missed**;
   the predicted components of a hit are true positives, every other component a **false positive**.
4. `sensitivity` = detected / reference lesions, `precision` = true-positive components / predicted
   components, `f1` = 2 detected / (2 detected + false positives + missed). A split prediction thus
   costs nothing in precision (each piece lies on the lesion), and a merge costs nothing in
   sensitivity; both are counted (`split`, `merged`) so that they stay visible.
5. Empty masks follow `segvol.evaluate.metrics`: no reference lesion -> sensitivity NaN; no predicted
   component -> precision NaN; F1 is NaN only when both masks are empty (nothing to find, nothing
   found) and 0 when exactly one is.

Rates over many cases pool the counts first (`pool`), so that a case with ten lesions weighs ten times
a case with one, as lesion-wise scores do.

Why scikit-image: `skimage.measure.label` is the field's standard N-d connected-component labelling,
with connectivity named by neighbourhood order (1 = faces, 3 = faces + edges + corners in 3-D) rather
than a structuring element to build; on boolean masks it runs scipy's `ndimage.label` underneath, so
it costs nothing over calling scipy directly. The overlap matching after it is a sparse count of label
pairs (numpy) and a graph-components call (scipy), linear in the voxels of the masks' bounding box.

In the evaluation: `segvol evaluate cases` adds the counts of each lesion category (`is_lesion`) to its
per-case rows (`case_columns`, at `MIN_IOU`), and `segvol evaluate table2` pools them into Table 2's
lesion rows, lesion-wise (`lesion_table`, written next to the table as `table2_lesions.csv`; the Dice
table itself is unchanged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("segvol.evaluate")

CONNECTIVITY = 3  # skimage's neighbourhood order: 3 = 26-connected in 3-D
COUNT_FIELDS = ("reference", "predicted", "detected", "missed", "true_positives", "false_positives", "split", "merged")
# Category names that are lesions (Table 2's lesion rows, Table 7's rows): tumours, cancers, nodules, cysts,
# metastases.
LESION = re.compile(r"tumou?r|lesion|cancer|nodule|cyst|metasta|neoplasm|carcinoma", re.IGNORECASE)
MIN_IOU = 0.5  # the evaluation's hit criterion: the LiTS script's IoU > 0.5
# the per-case rows' lesion columns (`segvol evaluate cases`), NaN on the rows of other categories
LESION_COLUMNS = tuple(f"lesion_{name}" for name in COUNT_FIELDS)
# `lesion_table`'s columns; the rates are computed on the pooled counts
TABLE_COLUMNS = ("dataset", "category", "method", "cases", *COUNT_FIELDS, "sensitivity", "precision", "f1")
ALL_LESIONS = "All lesions"  # the row pooling every lesion category of a dataset


@dataclass(frozen=True)
class LesionCounts:
    """Lesion counts of one (case, category), or of many pooled.

    reference / predicted: connected components of the ground truth / the prediction.
    detected / missed: reference lesions inside / outside a hit cluster (detected + missed = reference).
    true_positives / false_positives: predicted components inside / outside a hit cluster.
    split: hit clusters with more than one predicted component; merged: with more than one reference lesion.
    """

    reference: int = 0
    predicted: int = 0
    detected: int = 0
    missed: int = 0
    true_positives: int = 0
    false_positives: int = 0
    split: int = 0
    merged: int = 0

    @property
    def sensitivity(self) -> float:
        return self.detected / self.reference if self.reference else float("nan")

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else float("nan")

    @property
    def f1(self) -> float:
        denominator = 2 * self.detected + self.false_positives + self.missed
        return 2 * self.detected / denominator if denominator else float("nan")

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(**{name: getattr(self, name) + getattr(other, name) for name in COUNT_FIELDS})

    def row(self, prefix: str = "lesion_") -> dict:
        """Counts and rates as one flat dict (a table row): `<prefix>sensitivity`, `<prefix>reference`, ..."""
        values = {**asdict(self), "sensitivity": self.sensitivity, "precision": self.precision, "f1": self.f1}
        return {f"{prefix}{name}": value for name, value in values.items()}


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, count): the 26-connected components of a binary mask, numbered 1..count."""
    from skimage.measure import label  # imported here: `segvol evaluate --help` stays quick

    mask = np.asarray(mask).astype(bool, copy=False)
    labels, count = label(mask, connectivity=min(CONNECTIVITY, mask.ndim), return_num=True)
    return labels, int(count)


def lesion_counts(prediction: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> LesionCounts:
    """Lesion-wise counts of one binary prediction against its ground truth (module docstring).

    prediction, truth: binary masks of the same shape (any dimension; 3-D (D, H, W) in practice).
    min_iou: a cluster is a hit when IoU(its reference voxels, its predicted voxels) > min_iou, in [0, 1).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    prediction = np.asarray(prediction).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} does not match ground truth shape {truth.shape}")
    if not 0.0 <= float(min_iou) < 1.0:
        raise ValueError(f"min_iou must lie in [0, 1), got {min_iou!r}")
    window = _bounding_box(prediction | truth)
    if window is None:
        return LesionCounts()
    truth_labels, n_truth = components(truth[window])
    prediction_labels, n_prediction = components(prediction[window])
    if n_truth == 0 or n_prediction == 0:
        return LesionCounts(reference=n_truth, predicted=n_prediction, missed=n_truth, false_positives=n_prediction)

    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:]
    prediction_sizes = np.bincount(prediction_labels.ravel(), minlength=n_prediction + 1)[1:]
    both = (truth_labels > 0) & (prediction_labels > 0)
    pairs, overlaps = np.unique(
        truth_labels[both].astype(np.int64) * (n_prediction + 1) + prediction_labels[both], return_counts=True
    )
    truth_of_pair, prediction_of_pair = pairs // (n_prediction + 1) - 1, pairs % (n_prediction + 1) - 1

    # Nodes 0..n_truth-1 are reference lesions, n_truth.. the predicted components; edges = overlaps.
    nodes = n_truth + n_prediction
    graph = coo_matrix((np.ones(len(pairs)), (truth_of_pair, n_truth + prediction_of_pair)), shape=(nodes, nodes))
    _, cluster = connected_components(graph, directed=False)
    truth_cluster, prediction_cluster = cluster[:n_truth], cluster[n_truth:]

    # Components are disjoint within each mask, so a cluster's intersection is the sum of its overlaps.
    n_clusters = int(cluster.max()) + 1
    intersection = np.bincount(truth_cluster[truth_of_pair], weights=overlaps, minlength=n_clusters)
    truth_voxels = np.bincount(truth_cluster, weights=truth_sizes, minlength=n_clusters)
    prediction_voxels = np.bincount(prediction_cluster, weights=prediction_sizes, minlength=n_clusters)
    union = truth_voxels + prediction_voxels - intersection
    iou = np.divide(intersection, union, out=np.zeros(n_clusters), where=union > 0)
    hit = (intersection > 0) & (iou > min_iou)

    truth_per_cluster = np.bincount(truth_cluster, minlength=n_clusters)
    prediction_per_cluster = np.bincount(prediction_cluster, minlength=n_clusters)
    detected = int(hit[truth_cluster].sum())
    true_positives = int(hit[prediction_cluster].sum())
    return LesionCounts(
        reference=n_truth,
        predicted=n_prediction,
        detected=detected,
        missed=n_truth - detected,
        true_positives=true_positives,
        false_positives=n_prediction - true_positives,
        split=int((hit & (prediction_per_cluster > 1)).sum()),
        merged=int((hit & (truth_per_cluster > 1)).sum()),
    )


def pool(counts: Iterable[LesionCounts]) -> LesionCounts:
    """The sum of many cases' counts (rates computed on the sum: lesion-wise, not case-averaged)."""
    total = LesionCounts()
    for item in counts:
        total = total + item
    return total


def is_lesion(category: str) -> bool:
    """Whether a category name is a lesion (`LESION`): tumours, cancers, nodules, cysts, metastases."""
    return bool(LESION.search(str(category)))


def case_columns(prediction: np.ndarray, truth: np.ndarray, category: str) -> dict:
    """The lesion columns of one per-case row (`LESION_COLUMNS`): the counts at `MIN_IOU` for a lesion
    category, NaN for any other; rates belong to pooled counts (`lesion_table`)."""
    if not is_lesion(category):
        return dict.fromkeys(LESION_COLUMNS, float("nan"))
    counts = asdict(lesion_counts(prediction, truth, MIN_IOU))
    return {column: counts[name] for column, name in zip(LESION_COLUMNS, COUNT_FIELDS)}


def lesion_table(per_case: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Table 2's lesion rows, lesion-wise: one row per (dataset, lesion category, method) in `methods`.

    Each row pools the counts of the category's per-case rows (`cases` of them; module docstring, "Rates
    over many cases"); a dataset with more than one lesion category gets an `All lesions` row per method
    pooling them all (`cases` counts each case once). Rows are in the order of Table 2 (datasets and
    categories as they come, methods as given). Per-case rows without lesion counts (written before they
    existed) are left out.
    """
    import pandas as pd

    if not _has_counts(per_case):
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    scored = per_case[per_case["category"].map(is_lesion) & per_case["method"].isin(list(methods))]
    scored = scored.dropna(subset=list(LESION_COLUMNS))
    rows = []
    for dataset, block in scored.groupby("dataset", sort=False):
        categories = list(dict.fromkeys(block["category"]))
        groups = [(category, block[block["category"] == category]) for category in categories]
        if len(categories) > 1:
            groups.append((ALL_LESIONS, block))
        for category, group in groups:
            for method in methods:
                mine = group[group["method"] == method]
                if len(mine):
                    total = mine[list(LESION_COLUMNS)].sum()
                    counts = LesionCounts(**{name: int(total[f"lesion_{name}"]) for name in COUNT_FIELDS})
                    rows.append(
                        {
                            "dataset": dataset,
                            "category": category,
                            "method": method,
                            "cases": mine["case"].nunique(),
                            **counts.row(prefix=""),
                        }
                    )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def write_lesion_table(per_case: pd.DataFrame, methods: Sequence[str], path) -> pd.DataFrame:
    """Write `lesion_table` as CSV (atomic, with its provenance sidecar); warn about lesion rows it cannot count."""
    from segvol.evaluate.tables import write_csv

    table = lesion_table(per_case, methods)
    uncounted = 0
    if {"category", "method"} <= set(per_case.columns):
        rows = per_case[per_case["category"].map(is_lesion) & per_case["method"].isin(list(methods))]
        uncounted = len(rows) if not _has_counts(per_case) else int(rows[LESION_COLUMNS[0]].isna().sum())
    if uncounted:
        log.warning(
            "%d per-case rows of lesion categories have no lesion-wise counts (written by a"
            " `segvol evaluate cases` before it counted lesions) and are not in %s; rerun it for them",
            uncounted,
            path,
        )
    write_csv(table, path)
    return table


def _has_counts(per_case: pd.DataFrame) -> bool:
    return {"dataset", "category", "method", *LESION_COLUMNS} <= set(per_case.columns)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest window holding every True voxel (so every component lies whole inside it)."""
    if not mask.any():
        return None
    window = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        window.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(window)
