"""Dice, official Dice and NSD against values computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from segvol.evaluate.metrics import dice, dice_official, normalized_surface_dice, summarize


def masks(shape=(4, 4, 4)):
    return np.zeros(shape, bool), np.zeros(shape, bool)


def test_dice_counts_overlap_by_hand():
    prediction, truth = masks()
    truth[0, 0, :4] = True  # 4 voxels
    prediction[0, 0, 2:4] = True  # 2 voxels, both inside
    prediction[3, 3, 3] = True  # 1 false positive
    # 2 * 2 / (3 + 4)
    assert dice(prediction, truth) == pytest.approx(4 / 7)
    assert dice_official(prediction, truth) == pytest.approx(4 / 8)


def test_empty_ground_truth_policy():
    prediction, truth = masks()
    assert math.isnan(dice(prediction, truth))  # nothing to segment: skipped
    assert dice_official(prediction, truth) == 0.0  # the released helper gives 0
    prediction[1, 1, 1] = True
    assert dice(prediction, truth) == 0.0  # false positive only
    assert dice(truth, prediction) == 0.0  # miss only


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_nsd_single_voxels_with_anisotropic_spacing():
    prediction, truth = masks((8, 8, 8))
    truth[2, 2, 2] = True
    prediction[3, 2, 2] = True  # one voxel away along D
    assert normalized_surface_dice(prediction, truth, (2.0, 1.0, 1.0), 1.0) == 0.0  # 2 mm apart
    assert normalized_surface_dice(prediction, truth, (2.0, 1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(prediction, truth, (0.5, 1.0, 1.0), 1.0) == 1.0  # 0.5 mm apart
    shifted_h = np.zeros_like(truth)
    shifted_h[2, 3, 2] = True  # along H the spacing is 1 mm
    assert normalized_surface_dice(shifted_h, truth, (2.0, 1.0, 1.0), 1.0) == 1.0


def test_nsd_counts_both_directions():
    prediction, truth = masks((8, 8, 8))
    truth[2, 2, 2] = truth[2, 2, 6] = True
    prediction[2, 2, 2] = True
    # pred->truth: 1 of 1 within 1 mm; truth->pred: 1 of 2 (the other is 4 mm away): (1 + 1) / (1 + 2)
    assert normalized_surface_dice(prediction, truth, (1.0, 1.0, 1.0), 1.0) == pytest.approx(2 / 3)


def test_nsd_empty_policy():
    prediction, truth = masks()
    assert math.isnan(normalized_surface_dice(prediction, truth, (1, 1, 1)))
    prediction[0, 0, 0] = True
    assert normalized_surface_dice(prediction, truth, (1, 1, 1)) == 0.0


def test_summarize_medians_skip_nan():
    scores = pd.DataFrame(
        {
            "category": ["a", "a", "a", "b"],
            "dice": [0.2, 0.9, np.nan, 0.5],
        }
    )
    summary = summarize(scores, ["category"]).set_index("category")
    assert summary.loc["a", "median"] == pytest.approx(0.55)
    assert summary.loc["a", "n"] == 2
    assert summary.loc["b", "mean"] == pytest.approx(0.5)


def test_nsd_and_dice_on_a_real_liver_shifted_by_one_slice(shared_data):
    """A TotalSegmentator liver (3 mm voxels) moved by one voxel: every surface voxel moves 3 mm."""
    import nibabel

    labels = np.asarray(nibabel.load(shared_data / "totalsegmentator/abdomen_ct_3mm_small/example_seg.nii.gz").dataobj)
    liver = np.pad(labels == 5, 2)  # id 5 = liver (labels_total.json); padding keeps the shift inside
    assert liver.sum() > 1000
    shifted = np.roll(liver, 1, axis=0)
    overlap = np.count_nonzero(liver[1:] & liver[:-1])
    assert dice(shifted, liver) == pytest.approx(overlap / liver.sum())
    assert normalized_surface_dice(shifted, liver, (3.0, 3.0, 3.0), 3.0) == 1.0
    assert normalized_surface_dice(shifted, liver, (3.0, 3.0, 3.0), 1.0) < 1.0
    # the same shift along an axis with 1 mm voxels is within a 1 mm tolerance
    assert normalized_surface_dice(shifted, liver, (1.0, 3.0, 3.0), 1.0) == 1.0


def _whole_volume_nsd(prediction, truth, spacing, tolerance):
    """MONAI on the whole volume: the reference the cropped computation must equal."""
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask):
        foreground = torch.from_numpy(mask)
        return torch.stack([~foreground, foreground])[None].float()

    return float(
        compute_surface_dice(
            one_hot(prediction),
            one_hot(truth),
            class_thresholds=[tolerance],
            include_background=False,
            spacing=list(spacing),
        ).reshape(-1)[0]
    )


@pytest.mark.parametrize("seed", range(6))
def test_nsd_on_the_bounding_box_equals_the_whole_volume(seed):
    """Random blobs, some touching the volume's faces, with anisotropic spacing and two tolerances."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (24, 40, 36)
    truth = ndimage.gaussian_filter(rng.random(shape), 3) > 0.52
    prediction = ndimage.binary_dilation(truth, iterations=int(rng.integers(1, 4)))
    prediction ^= ndimage.gaussian_filter(rng.random(shape), 2) > 0.6
    if seed % 2:  # masks that touch the faces of the volume
        truth[0] = truth[0] | (rng.random(shape[1:]) > 0.7)
        prediction[:, -1] = True
    spacing = (2.5, 0.8, 0.8) if seed % 3 else (1.0, 1.0, 1.0)
    values = []
    for tolerance in (1.0, 2.0):
        expected = _whole_volume_nsd(prediction, truth, spacing, tolerance)
        assert normalized_surface_dice(prediction, truth, spacing, tolerance) == pytest.approx(expected, abs=1e-12)
        values.append(expected)
    assert 0.0 < values[0] < 1.0  # a case where surfaces really differ
