"""segvol.infer.segment: zoom-out-zoom-in geometry with stub models, batching equivalence, errors."""

import logging

import numpy as np
import pytest
import torch

from segvol.infer import OUTSIDE_LOGIT, Prompt, segment
from segvol.infer.geometry import VoxelMap
from segvol.infer.windows import window_lattice
from segvol.infer.zoom import _window_job, foreground_box, roi_windows
from tests.stand_in_models import BoxModel, MixingModel

torch.set_num_threads(1)
SIZE = (8, 32, 32)


def phantom(shape=(30, 70, 90), seed=0) -> torch.Tensor:
    """Air frame around a noisy body, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float32)
    volume[3:-2, 5:-4, 6:-7] = rng.uniform(0.05, 1.0, (shape[0] - 5, shape[1] - 9, shape[2] - 13))
    return torch.from_numpy(volume)


def box_mask(shape, box) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
    return mask


@pytest.mark.parametrize("mode", ["zoom", "window"])
def test_box_prompt_result_is_the_box(mode):
    # without the box limit, so the windows alone must bring the coarse result back to the box
    volume = phantom()
    box = (6, 20, 30, 17, 41, 62)
    model = BoxModel(SIZE)
    logits = segment(model, volume, [Prompt(box=box)], mode=mode, box_limits=False)
    assert logits.shape == (1, *volume.shape) and logits.dtype == torch.float32
    np.testing.assert_array_equal(logits[0].numpy() > 0, box_mask(volume.shape, box))


def test_windows_visited_per_mode():
    volume = phantom((40, 120, 150))
    box = (8, 30, 40, 14, 45, 60)
    crop = foreground_box(volume)
    lattice = window_lattice(crop[3:] - crop[:3] + 1, SIZE, 0.5)
    box_in_crop = np.array(box) - np.tile(crop[:3], 2)
    meeting_box = sum(w.intersects(box_in_crop) for w in lattice)
    # plain sliding window, text only: every window of the foreground
    model = BoxModel(SIZE)
    segment(model, volume, [Prompt(text="liver")], mode="window")
    assert model.images_encoded == len(lattice)
    # a box prompt only needs the windows its box reaches, plus one zoom-out view in zoom mode
    model = BoxModel(SIZE)
    segment(model, volume, [Prompt(box=box)], mode="window")
    assert model.images_encoded == meeting_box
    # zoom: per axis one window where the coarse box fits in one, else all windows meeting it
    to_zoom = VoxelMap.crop(crop[:3]).then(VoxelMap.resize(crop[3:] - crop[:3] + 1, SIZE))

    def expected_zoom_windows(roi, user_box=None):
        windows = roi_windows(crop[3:] - crop[:3] + 1, SIZE, 0.5, roi)
        if user_box is not None:
            windows = [w for w in windows if w.intersects(user_box)]
        return 1 + len(windows)

    model = BoxModel(SIZE)
    segment(model, volume, [Prompt(box=box)], mode="zoom")
    # the coarse mask covers the box; with the box as a limit the zoom-in looks inside it only
    expected = expected_zoom_windows(box_in_crop, box_in_crop)
    assert model.images_encoded == expected < meeting_box
    model = BoxModel(SIZE)
    segment(model, volume, [Prompt(box=box)], mode="zoom", box_limits=False)
    coarse_roi = to_zoom.inverse().map_box(to_zoom.map_box(box, SIZE)) - np.tile(crop[:3], 2)
    assert model.images_encoded == expected_zoom_windows(coarse_roi, box_in_crop) >= expected
    # points without a box: the windows over the coarse mask around the point
    point = np.array([[11, 38, 50]])
    model = BoxModel(SIZE)
    segment(model, volume, [Prompt(points=point)], mode="zoom")
    zoom_point = to_zoom.map_points(point, SIZE)[0]
    zoom_box = np.concatenate([np.maximum(zoom_point - 1, 0), np.minimum(zoom_point + 1, np.array(SIZE) - 1)])
    roi = to_zoom.inverse().map_box(zoom_box) - np.tile(crop[:3], 2)
    assert model.images_encoded == expected_zoom_windows(roi)


def test_resize_mode_is_the_upsampled_coarse_result():
    volume = phantom()
    box = (6, 20, 30, 17, 41, 62)
    logits = segment(BoxModel(SIZE), volume, [Prompt(box=box)], mode="resize", box_limits=False)
    mask = logits[0].numpy() > 0
    crop = foreground_box(volume)
    to_zoom = VoxelMap.crop(crop[:3]).then(VoxelMap.resize(crop[3:] - crop[:3] + 1, SIZE))
    zoom_box = to_zoom.map_box(box, SIZE)
    covered = to_zoom.inverse().map_box(zoom_box, volume.shape)
    assert mask.sum() > 0
    assert not np.any(mask & ~box_mask(volume.shape, covered))
    assert np.all(mask[box_mask(volume.shape, box)])


def test_points_only_prompt_follows_the_coarse_mask():
    # BoxModel marks a cube of radius 1 around the point in zoom-out space; the zoom-in windows
    # get the coarse mask's box, so the result is that cube upsampled to the native grid.
    from segvol.infer.geometry import nearest_exact_indices

    volume = phantom()
    point = np.array([[12, 33, 47]])
    logits = segment(BoxModel(SIZE, radius=1), volume, [Prompt(points=point, point_labels=[1])], mode="zoom")
    mask = logits[0].numpy() > 0
    crop = foreground_box(volume)
    crop_shape = crop[3:] - crop[:3] + 1
    zoom_point = VoxelMap.crop(crop[:3]).then(VoxelMap.resize(crop_shape, SIZE)).map_points(point, SIZE)[0]
    expected = np.zeros(volume.shape, bool)
    ranges = []
    for axis in range(3):
        sampled = nearest_exact_indices(SIZE[axis], int(crop_shape[axis]))
        ranges.append(crop[axis] + np.flatnonzero(np.abs(sampled - zoom_point[axis]) <= 1))
    expected[np.ix_(*ranges)] = True
    assert mask[tuple(point[0])]
    np.testing.assert_array_equal(mask, expected)


def test_empty_zoom_out_keeps_the_coarse_result(caplog):
    volume = phantom()
    model = BoxModel(SIZE)
    with caplog.at_level(logging.INFO, logger="segvol.infer.zoom"):
        logits = segment(model, volume, [Prompt(text="liver")], mode="zoom")
    assert "found nothing for 'liver'" in caplog.text
    assert model.images_encoded == 1
    crop = foreground_box(volume)
    inside = box_mask(volume.shape, crop)
    assert torch.all(logits[0][torch.from_numpy(inside)] == -4.0)
    assert torch.all(logits[0][torch.from_numpy(~inside)] == OUTSIDE_LOGIT)


def test_all_prompts_at_once_equal_one_at_a_time():
    volume = phantom((26, 60, 80), seed=1)
    prompts = [
        Prompt(text="liver"),
        Prompt(text="spleen", box=(4, 10, 12, 15, 40, 50)),
        Prompt(points=[[10, 30, 40], [12, 20, 20]], point_labels=[1, 0]),
        Prompt(text="left kidney", box=(8, 25, 30, 20, 50, 70), points=[[14, 35, 50]], point_labels=[1]),
        Prompt(box=(2, 5, 8, 22, 55, 70)),
    ]
    for mode in ("zoom", "window"):
        together = segment(MixingModel(SIZE), volume, prompts, mode=mode, sw_batch_size=3, decode_batch_size=2)
        for k, prompt in enumerate(prompts):
            alone = segment(MixingModel(SIZE), volume, [prompt], mode=mode, sw_batch_size=1)
            np.testing.assert_allclose(
                together[k].numpy(), alone[0].numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{mode} prompt {k}"
            )


def test_embeddings_are_shared_between_prompts():
    volume = phantom((40, 120, 150))
    boxes = [(8, 30, 40, 14, 45, 60), (10, 40, 50, 20, 70, 90), (5, 20, 30, 30, 100, 120)]
    together = BoxModel(SIZE)
    segment(together, volume, [Prompt(text=f"organ {i}", box=b) for i, b in enumerate(boxes)], mode="zoom")
    separate = [BoxModel(SIZE) for _ in boxes]
    for i, (model, box) in enumerate(zip(separate, boxes)):
        segment(model, volume, [Prompt(text=f"organ {i}", box=box)], mode="zoom")
    assert together.images_encoded < sum(m.images_encoded for m in separate)
    assert together.images_encoded >= max(m.images_encoded for m in separate)
    assert together.prompts_decoded == sum(m.prompts_decoded for m in separate)
    assert together.texts_encoded == len(boxes)  # once per category, not per window


def test_window_prompt_keeps_clipped_box_and_negative_points():
    prompt = Prompt(
        text="liver", box=(2, 10, 10, 20, 40, 40), points=[[5, 15, 15], [6, 16, 30], [30, 5, 5]], point_labels=[1, 0, 1]
    )
    job = _window_job(prompt, VoxelMap.crop((4, 12, 12)), SIZE, 0, 0, coarse_box=None, use_coarse=True)
    np.testing.assert_array_equal(job.box, [0, 0, 0, 7, 28, 28])
    np.testing.assert_array_equal(job.points, [[1, 3, 3], [2, 4, 18]])
    np.testing.assert_array_equal(job.point_labels, [1, 0])
    assert job.text == "liver"
    # the box does not reach this window: skipped
    assert _window_job(prompt, VoxelMap.crop((21, 0, 0)), SIZE, 0, 0, None, True) is None
    # no user box: the coarse box is used; nothing at all: skipped
    text_only = Prompt(text="liver")
    job = _window_job(text_only, VoxelMap.crop((0, 0, 0)), SIZE, 0, 0, np.array([1, 2, 3, 4, 5, 6]), True)
    np.testing.assert_array_equal(job.box, [1, 2, 3, 4, 5, 6])
    assert _window_job(text_only, VoxelMap.crop((0, 0, 0)), SIZE, 0, 0, None, True) is None
    assert _window_job(text_only, VoxelMap.crop((0, 0, 0)), SIZE, 0, 0, None, False).box is None


def test_box_limit_cuts_the_coarse_spill():
    volume = phantom()
    box = (6, 20, 30, 17, 41, 62)
    soft = segment(BoxModel(SIZE), volume, [Prompt(box=box)], mode="resize", box_limits=False)[0] > 0
    hard = segment(BoxModel(SIZE), volume, [Prompt(box=box)], mode="resize")[0] > 0
    inside = torch.from_numpy(box_mask(volume.shape, box))
    assert soft[~inside].any()
    assert torch.equal(hard, soft & inside)


def test_bad_inputs_raise():
    model = BoxModel(SIZE)
    volume = phantom()
    with pytest.raises(ValueError, match="NaN"):
        bad = volume.clone()
        bad[1, 1, 1] = float("nan")
        segment(model, bad, [Prompt(text="liver")])
    with pytest.raises(ValueError, match="\\(D, H, W\\)"):
        segment(model, volume[None], [Prompt(text="liver")])
    with pytest.raises(ValueError, match="outside"):
        segment(model, volume, [Prompt(box=(0, 0, 0, 30, 10, 10))])
    with pytest.raises(ValueError, match="unknown inference mode"):
        segment(model, volume, [Prompt(text="liver")], mode="fast")
    with pytest.raises(ValueError, match="at least one prompt"):
        segment(model, volume, [])


def test_tiny_segvol_batched_equals_per_category():
    from segvol.model import build_model, model_config

    torch.manual_seed(0)
    model = build_model(model_config("tiny"))
    volume = phantom((40, 80, 100), seed=2)
    prompts = [
        Prompt(text="liver", box=(5, 10, 20, 30, 60, 80)),
        Prompt(text="spleen", points=[[20, 40, 50], [10, 20, 20]], point_labels=[1, 0]),
        Prompt(box=(10, 30, 30, 25, 70, 90)),
    ]
    together = segment(model, volume, prompts, mode="zoom", sw_batch_size=2)
    for k, prompt in enumerate(prompts):
        alone = segment(model, volume, [prompt], mode="zoom", sw_batch_size=1)
        np.testing.assert_allclose(together[k].numpy(), alone[0].numpy(), rtol=1e-4, atol=1e-4)


def release_windows_per_axis(extent, size, overlap=0.5):
    """The release's zoom-in windows along one axis: its ROI is grown to the window when smaller
    (one window), else MONAI's sliding window over the ROI (stride int(size * (1 - overlap)))."""
    if extent <= size:
        return 1
    stride = max(int(size * (1 - overlap)), 1)
    return -(-(extent - size) // stride) + 1


def test_roi_windows_cover_the_roi_with_no_more_windows_than_the_release():
    rng = np.random.default_rng(0)
    window = (8, 32, 32)
    for _ in range(400):
        crop_shape = tuple(int(v) for v in rng.integers(5, 120, 3))
        lo = np.array([rng.integers(0, n) for n in crop_shape])
        hi = np.array([rng.integers(l, n) for l, n in zip(lo, crop_shape)])
        roi = np.concatenate([lo, hi])
        windows = roi_windows(crop_shape, window, 0.5, roi)
        covered = np.zeros(crop_shape, bool)
        for w in windows:
            covered[w.overlap(crop_shape)[0]] = True
        assert covered[box_mask(crop_shape, roi)].all()
        for axis in range(3):
            positions = {w.start[axis] for w in windows}
            limit = release_windows_per_axis(hi[axis] - lo[axis] + 1, window[axis])
            assert len(positions) <= limit, (crop_shape, roi.tolist(), axis)
        lattice = window_lattice(crop_shape, window, 0.5)
        if any(all(w.start[a] <= lo[a] and hi[a] < w.start[a] + window[a] for a in range(3)) for w in lattice):
            assert len(windows) == 1 and windows[0] in lattice  # shared with every other prompt


def test_small_organ_between_lattice_positions_gets_one_window():
    # 12 slices straddling the lattice positions 0 and 16 of a 32-slice window (a left kidney
    # case: the fixed lattice needed 2 positions on this axis, the release 1)
    windows = roi_windows((112, 101, 122), (32, 64, 64), 0.5, np.array([40, 10, 10, 51, 40, 40]))
    assert len({w.start[0] for w in windows}) == 1
    assert windows[0].start[0] <= 40 and 51 < windows[0].start[0] + 32


@pytest.mark.parametrize("mode", ["zoom", "window", "resize"])
def test_segment_region_is_the_full_result_where_it_can_differ(mode):
    from segvol.infer.geometry import box_slices
    from segvol.infer.zoom import segment_region

    volume = phantom()
    prompt = Prompt(text="liver", box=(6, 20, 30, 17, 41, 62), points=[(10, 30, 40)], point_labels=[1])
    # two prompts: logits over the whole crop (not the one-box region path under test)
    full = segment(MixingModel(SIZE), volume, [prompt, Prompt(text="spleen")], mode=mode)[0]
    region, part = segment_region(MixingModel(SIZE), volume, [prompt], mode=mode)
    np.testing.assert_array_equal(region, prompt.box)  # a limiting box: only the box is kept
    np.testing.assert_array_equal(part[0], full[box_slices(region)])
    outside = torch.ones(volume.shape, dtype=torch.bool)
    outside[box_slices(region)] = False
    assert torch.all(full[outside] == OUTSIDE_LOGIT)


def test_foreground_box_slab_by_slab_equals_the_mask_bounding_box():
    volume = torch.zeros(37, 20, 25)
    volume[5, 3, 7] = 0.2
    volume[33, 18, 2] = 0.9
    volume[20, 0, 24] = 0.5
    np.testing.assert_array_equal(foreground_box(volume, slab=4), [5, 0, 2, 33, 18, 24])
