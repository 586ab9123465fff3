"""Lesion-wise detection (segvol.evaluate.lesions): components, clusters, hits, rates, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from segvol.evaluate.lesions import LesionCounts, components, lesion_counts, pool

SHAPE = (16, 20, 20)


def cube(mask: np.ndarray, corner, size) -> np.ndarray:
    window = tuple(slice(c, c + s) for c, s in zip(corner, (size,) * 3 if np.isscalar(size) else size))
    mask[window] = True
    return mask


def empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=bool)


def test_lesions_touching_at_a_corner_are_one_and_a_one_voxel_gap_makes_two():
    touching = cube(cube(empty(), (2, 2, 2), 3), (5, 5, 5), 3)  # cubes meet at one corner voxel pair
    assert components(touching)[1] == 1
    assert ndimage.label(touching)[1] == 2  # face connectivity would have split them
    edge = cube(cube(empty(), (2, 2, 2), 3), (5, 5, 2), 3)  # they share an edge, not a face
    assert components(edge)[1] == 1
    apart = cube(cube(empty(), (2, 2, 2), 3), (6, 2, 2), 3)  # one background slice between them
    assert components(apart)[1] == 2

    counts = lesion_counts(touching, touching)
    assert (counts.reference, counts.predicted, counts.detected, counts.merged) == (1, 1, 1, 0)
    counts = lesion_counts(apart, apart)
    assert (counts.reference, counts.predicted, counts.detected, counts.true_positives) == (2, 2, 2, 2)


def test_a_split_prediction_detects_its_lesion_without_false_positives():
    truth = cube(empty(), (3, 3, 3), (8, 6, 6))
    prediction = truth.copy()
    prediction[7] = False  # one slice missing: two predicted pieces on one lesion
    counts = lesion_counts(prediction, truth)
    assert counts == LesionCounts(
        reference=1, predicted=2, detected=1, missed=0, true_positives=2, false_positives=0, split=1, merged=0
    )
    assert (counts.sensitivity, counts.precision, counts.f1) == (1.0, 1.0, 1.0)


def test_one_prediction_over_two_lesions_detects_both_as_a_merge():
    truth = cube(cube(empty(), (3, 3, 3), 4), (3, 3, 9), 4)
    prediction = cube(empty(), (3, 3, 3), (4, 4, 10))  # also fills the 2-voxel gap between them
    counts = lesion_counts(prediction, truth)
    assert (counts.reference, counts.predicted, counts.detected, counts.true_positives) == (2, 1, 2, 1)
    assert (counts.merged, counts.split, counts.false_positives) == (1, 0, 0)


def test_a_missed_lesion_and_false_positives():
    truth = cube(cube(empty(), (2, 2, 2), 4), (9, 12, 12), 4)
    prediction = cube(empty(), (2, 2, 2), 4)  # finds the first lesion only
    cube(prediction, (10, 2, 14), 2)  # and two blobs where there is nothing
    cube(prediction, (2, 15, 3), 3)
    counts = lesion_counts(prediction, truth)
    assert counts == LesionCounts(
        reference=2, predicted=3, detected=1, missed=1, true_positives=1, false_positives=2, split=0, merged=0
    )
    assert counts.sensitivity == 0.5
    assert counts.precision == pytest.approx(1 / 3)
    assert counts.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))


def test_the_iou_threshold_decides_a_poor_overlap():
    truth = cube(empty(), (4, 4, 4), 6)  # 216 voxels
    prediction = cube(empty(), (8, 8, 8), 6)  # overlaps 2x2x2 = 8 voxels: IoU 8 / 424
    loose = lesion_counts(prediction, truth, min_iou=0.0)
    assert (loose.detected, loose.true_positives, loose.false_positives) == (1, 1, 0)
    strict = lesion_counts(prediction, truth, min_iou=0.5)
    assert (strict.detected, strict.missed, strict.true_positives, strict.false_positives) == (0, 1, 0, 1)
    # IoU just above and just below the default threshold
    good = truth.copy()
    good[4:7] = False  # 108 of 216 voxels: IoU 0.5 exactly, which is not above 0.5
    assert lesion_counts(good, truth).detected == 0
    good[6, 4, 4] = True  # 109 / 216 > 0.5
    assert lesion_counts(good, truth).detected == 1


def test_empty_masks_follow_the_metrics_policy():
    lesion = cube(empty(), (3, 3, 3), 3)
    nothing = lesion_counts(empty(), empty())
    assert nothing == LesionCounts()
    assert math.isnan(nothing.sensitivity) and math.isnan(nothing.precision) and math.isnan(nothing.f1)

    only_false = lesion_counts(lesion, empty())
    assert (only_false.reference, only_false.predicted, only_false.false_positives) == (0, 1, 1)
    assert math.isnan(only_false.sensitivity) and only_false.precision == 0.0 and only_false.f1 == 0.0

    only_missed = lesion_counts(empty(), lesion)
    assert (only_missed.reference, only_missed.missed, only_missed.predicted) == (1, 1, 0)
    assert only_missed.sensitivity == 0.0 and math.isnan(only_missed.precision) and only_missed.f1 == 0.0


def test_pooling_weighs_lesions_not_cases():
    three = cube(cube(cube(empty(), (1, 1, 1), 2), (6, 6, 6), 2), (12, 12, 12), 2)
    many = lesion_counts(three, three)
    none_found = lesion_counts(empty(), cube(empty(), (4, 4, 4), 3))
    pooled = pool([many, none_found])
    assert (pooled.reference, pooled.detected, pooled.missed) == (4, 3, 1)
    assert pooled.sensitivity == 0.75  # a mean of the per-case rates would say 0.5
    row = pooled.row()
    assert row["lesion_sensitivity"] == 0.75 and row["lesion_reference"] == 4
    assert row["lesion_f1"] == pytest.approx(6 / 7)


def test_input_errors():
    with pytest.raises(ValueError, match="does not match"):
        lesion_counts(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="min_iou"):
        lesion_counts(empty(), empty(), min_iou=1.0)


def _brute_force(prediction, truth, min_iou):
    """The convention written out plainly: scipy labels, clusters grown by repeated overlap, voxel sets."""
    structure = np.ones((3, 3, 3), dtype=bool)
    truth_labels, n_truth = ndimage.label(truth, structure)
    prediction_labels, n_prediction = ndimage.label(prediction, structure)
    unassigned_truth, unassigned_prediction = set(range(1, n_truth + 1)), set(range(1, n_prediction + 1))
    counts = {
        "reference": n_truth,
        "predicted": n_prediction,
        "detected": 0,
        "true_positives": 0,
        "split": 0,
        "merged": 0,
    }
    while unassigned_truth:
        group_truth, group_prediction = {unassigned_truth.pop()}, set()
        grew = True
        while grew:
            truth_voxels = np.isin(truth_labels, list(group_truth))
            touching_prediction = set(np.unique(prediction_labels[truth_voxels])) - {0}
            prediction_voxels = np.isin(prediction_labels, list(group_prediction | touching_prediction))
            touching_truth = set(np.unique(truth_labels[prediction_voxels])) - {0}
            grew = not (touching_prediction <= group_prediction and touching_truth <= group_truth)
            group_prediction |= touching_prediction
            group_truth |= touching_truth
        unassigned_truth -= group_truth
        unassigned_prediction -= group_prediction
        truth_voxels = np.isin(truth_labels, list(group_truth))
        prediction_voxels = np.isin(prediction_labels, list(group_prediction))
        intersection = np.count_nonzero(truth_voxels & prediction_voxels)
        if intersection and intersection / np.count_nonzero(truth_voxels | prediction_voxels) > min_iou:
            counts["detected"] += len(group_truth)
            counts["true_positives"] += len(group_prediction)
            counts["split"] += len(group_prediction) > 1
            counts["merged"] += len(group_truth) > 1
    counts["missed"] = n_truth - counts["detected"]
    counts["false_positives"] = n_prediction - counts["true_positives"]
    return LesionCounts(**counts)


def test_counts_equal_a_plain_implementation_of_the_convention():
    """Random lesion fields against the brute-force version; together they hold every kind of outcome."""
    outcomes = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        shape = (14, 18, 18)
        field = ndimage.gaussian_filter(rng.random(shape), 1.2)
        truth = field > 0.56
        # a noisy, slightly thresholded-off copy: lesions found, missed, split, merged and invented
        prediction = ndimage.gaussian_filter(field + 0.04 * rng.standard_normal(shape), 0.7) > 0.55 + 0.01 * (seed % 3)
        min_iou = (0.0, 0.3, 0.5)[seed % 3]
        expected = _brute_force(prediction, truth, min_iou)
        assert lesion_counts(prediction, truth, min_iou=min_iou) == expected, seed
        outcomes.append(expected)
    total = pool(outcomes)
    assert min(total.detected, total.missed, total.false_positives, total.split, total.merged) > 0, total


def test_real_kidneys_of_a_totalsegmentator_case(shared_data):
    """Kidneys of a real CT as 'lesions': the two kidneys are two components; dropping one is a miss."""
    import nibabel

    labels = np.asarray(nibabel.load(shared_data / "totalsegmentator/abdomen_ct_3mm_small/example_seg.nii.gz").dataobj)
    kidneys = (labels == 2) | (labels == 3)  # ids 2, 3 = right and left kidney (labels_total.json)
    assert components(kidneys)[1] == 2
    right_only = labels == 2
    counts = lesion_counts(right_only, kidneys)
    assert (counts.reference, counts.detected, counts.missed, counts.false_positives) == (2, 1, 1, 0)
