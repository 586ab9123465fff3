"""The interactive protocol (box + 5 corrective clicks): prompts, clicks, scores, AUC, time cap."""

import numpy as np
import pytest
from scipy import integrate, ndimage

from segvol.evaluate.interactive import (
    challenge_box,
    challenge_click,
    click_auc,
    run_protocol,
)


def test_box_is_the_middle_slice_box_with_the_objects_z_range():
    truth = np.zeros((20, 256, 256), dtype=bool)
    truth[2:18, 100:120, 100:120] = True  # the bulk of the object
    truth[2:4, 40:200, 100:102] = True  # a long thin part on two slices only
    box = challenge_box(truth, np.random.RandomState(2025))
    z, _, _ = np.nonzero(truth)
    assert z[len(z) // 2] >= 5  # the middle slice is a narrow one
    assert (box[0], box[3]) == (2, 17)  # z-range of the whole object
    margin = 100 - box[1]
    assert 0 <= margin <= 5  # a 0-5 px margin at 256 px, the same on every side
    assert box[1:3] == (100 - margin, 100 - margin) and box[4:] == (119 + margin, 119 + margin)
    assert challenge_box(truth, np.random.RandomState(2025)) == box  # seeded


def _depth_with_outside_as_background(mask):
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]


def test_click_goes_to_the_deepest_voxel_of_the_largest_error():
    truth = np.zeros((24, 24, 24), dtype=bool)
    truth[5:15, 5:15, 5:15] = True
    prediction = truth.copy()
    prediction[5:15, 5:15, 5:8] = False  # missed slab: 300 voxels
    prediction[18:22, 18:22, 18:22] = True  # false positive: 64 voxels
    voxel, label = challenge_click(prediction, truth)
    missed = truth & ~prediction
    assert label == 1 and missed[tuple(voxel)]
    depth = _depth_with_outside_as_background(missed)
    assert depth[tuple(voxel)] == depth.max() and voxel[2] == 6
    assert np.array_equal(challenge_click(prediction, truth)[0], voxel)  # ties broken by a fixed seed

    prediction[16:23, 16:23, 16:23] = True  # now the false positive is the largest error (343)
    voxel, label = challenge_click(prediction, truth)
    assert label == 0 and tuple(voxel) == (19, 19, 19)
    assert challenge_click(truth, truth) is None


def test_click_treats_the_volumes_outside_as_background():
    truth = np.zeros((9, 9, 9), dtype=bool)
    truth[:, :, 0:3] = True  # touches the w = 0 face
    voxel, label = challenge_click(np.zeros_like(truth), truth)
    # Without the outside counted as background the deepest voxel would be on the face (w = 0).
    assert label == 1 and voxel[2] == 1


def test_error_components_are_26_connected():
    truth = np.zeros((12, 12, 12), dtype=bool)
    truth[2:4, 2:4, 2:4] = True  # 8 voxels
    truth[4:6, 4:6, 4:6] = True  # 8 more, touching the first only at a corner
    truth[8:11, 8:10, 8:10] = True  # 12 voxels: the largest under 6-connectivity
    voxel, label = challenge_click(np.zeros_like(truth), truth)
    assert label == 1 and voxel[0] < 6  # the joined 16-voxel component wins


def test_auc_is_the_trapezoid_over_the_click_steps():
    steps = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]  # box step, then 5 clicks
    assert click_auc(steps) == pytest.approx(2.8)
    assert click_auc(steps) == pytest.approx(integrate.cumulative_trapezoid(steps[-5:], np.arange(5))[-1])


def _two_object_case():
    truth = np.zeros((24, 24, 24), dtype=bool)
    truth[4:12, 4:12, 4:12] = True  # A: 512 voxels
    truth[16:19, 16:19, 16:19] = True  # B: 27 voxels, outside the middle slice's box
    return truth


def _oracle(truth, calls):
    """Box -> the truth inside the box; a click adds or removes the component it lands in."""
    components, _ = ndimage.label(truth)

    def predict(box, points, labels, previous):
        calls.append((box, points.copy(), labels.copy(), None if previous is None else previous.copy()))
        mask = np.zeros_like(truth) if previous is None else previous.copy()
        if box is not None and previous is None:
            d0, h0, w0, d1, h1, w1 = box
            mask[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = truth[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1]
        for point, label in zip(points, labels):
            if label == 1 and components[tuple(point)]:
                mask |= components == components[tuple(point)]
        return mask

    return predict


def test_protocol_with_an_oracle_model():
    truth = _two_object_case()
    calls = []
    result = run_protocol(_oracle(truth, calls), truth, (1.0, 1.0, 1.0), "liver")
    assert result.used_box and calls[0][0] == (4, 4, 4, 18, 11, 11)
    assert result.dsc[0] == pytest.approx(2 * 512 / (512 + 539))
    assert result.clicks == [((17, 17, 17), 1)]  # the centre of the missed object
    assert result.dsc[1:] == [1.0] * 5 and result.nsd[1:] == [1.0] * 5
    assert len(calls) == 2  # a perfect mask gets no more clicks
    assert calls[1][3] is not None and calls[1][3].sum() == 512  # the previous prediction is carried
    assert result.dsc_auc == pytest.approx(4.0) and result.nsd_auc == pytest.approx(4.0)


def test_vessels_get_no_box_and_start_from_a_click():
    truth = _two_object_case()
    calls = []
    result = run_protocol(_oracle(truth, calls), truth, (1.0, 1.0, 1.0), "aorta")
    assert not result.used_box and result.dsc[0] == 0.0 and result.seconds[0] == 0.0
    assert calls[0][0] is None and calls[0][2].tolist() == [1]
    assert result.clicks[0][0] == (7, 7, 7) or truth[result.clicks[0][0]]  # inside the larger object
    assert result.clicks[1] == ((17, 17, 17), 1)
    assert result.dsc[-1] == 1.0 and result.dsc_auc < 4.0


def test_a_category_over_the_time_cap_stops_clicking():
    truth = _two_object_case()
    truth[4:12, 4:12, 4:12] = False
    truth[2:14, 2:14, 2:14] = True
    ticks = iter(np.arange(0, 1000, 50.0))
    calls = []

    def slow_and_wrong(box, points, labels, previous):
        calls.append(len(points))
        return np.zeros_like(truth)

    result = run_protocol(slow_and_wrong, truth, (1.0, 1.0, 1.0), "liver", clock=lambda: next(ticks))
    assert result.over_time_cap
    assert len(calls) == 2 and len(result.dsc) == 6 and result.seconds[2:] == [0.0] * 4


def test_nsd_is_zero_below_the_dice_threshold():
    truth = np.zeros((16, 16, 16), dtype=bool)
    truth[2:14, 2:14, 2:14] = True

    def tiny(box, points, labels, previous):
        mask = np.zeros_like(truth)
        mask[7:9, 7:9, 7:9] = True
        return mask

    result = run_protocol(tiny, truth, (1.0, 1.0, 1.0), "liver")
    assert 0 < result.dsc[0] < 0.2 and result.nsd[0] == 0.0
