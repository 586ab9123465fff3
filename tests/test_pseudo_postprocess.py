"""Pseudo-label post-processing: resizing, cleaning, GT overlay, one whole case, real CT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from segvol.pseudo.clean import clean_segments, paint_ground_truth
from segvol.pseudo.labels import case_pseudo_labels
from segvol.pseudo.resample import resize_area, resize_nearest
from segvol.settings import stage_settings

torch.set_num_threads(1)


# ---------------------------------------------------------------- resizing
@pytest.mark.parametrize(
    "shape_in,shape_out", [((7, 9, 10), (4, 13, 5)), ((5, 6, 7), (5, 6, 7)), ((3, 8, 8), (6, 16, 3))]
)
def test_resize_nearest_matches_torch(shape_in, shape_out):
    labels = np.random.default_rng(0).integers(0, 1000, shape_in).astype(np.int32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(labels).double()[None, None], size=shape_out, mode="nearest"
    )[0, 0].numpy()
    result = resize_nearest(labels, shape_out)
    assert result.dtype == np.int32 and np.array_equal(result, expected.astype(np.int32))


def adaptive_mean(volume, shape):
    """MONAI/torch 'area': output voxel i averages input floor(i*n/m) .. ceil((i+1)*n/m) - 1."""
    out = np.empty(shape)
    spans = [[(i * n // m, -(-(i + 1) * n // m)) for i in range(m)] for n, m in zip(volume.shape, shape)]
    for index in np.ndindex(*shape):
        box = tuple(slice(*spans[axis][i]) for axis, i in enumerate(index))
        out[index] = volume[box].mean()
    return out


@pytest.mark.parametrize(
    "shape_in,shape_out", [((9, 12, 10), (4, 6, 7)), ((8, 12, 10), (4, 6, 5)), ((3, 4, 5), (6, 8, 7))]
)
def test_resize_area_is_adaptive_average(shape_in, shape_out):
    volume = np.random.default_rng(1).random((2,) + shape_in).astype(np.float32)
    result = resize_area(volume, shape_out)
    assert result.shape == (2,) + shape_out
    for channel in range(2):
        assert np.allclose(result[channel], adaptive_mean(volume[channel], shape_out), atol=1e-6)


# ---------------------------------------------------------------- cleaning on hand-made shapes
def cube(shape, corner, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def test_small_segments_are_dropped_and_ids_renumbered():
    labels = np.zeros((12, 12, 12), np.int32)
    labels[cube(labels.shape, (0, 0, 0), 2)] = 1  # 8 voxels: dropped
    labels[cube(labels.shape, (4, 4, 4), 5)] = 2  # 125 voxels: kept
    labels[cube(labels.shape, (0, 6, 0), 1)] = 3  # 1 voxel: dropped
    cleaned = clean_segments(labels, min_voxels=20)
    assert set(np.unique(cleaned)) == {0, 1}
    # a cross-shaped element rounds off a cube's 8 corners and 12 edges; the body stays
    assert np.array_equal(cleaned == 1, ndimage.binary_closing(ndimage.binary_opening(labels == 2)))
    assert (cleaned == 1)[5:8, 5:8, 5:8].all() and (cleaned == 1).sum() == 125 - 8 - 12 * 3


def test_opening_removes_thin_spikes_and_closing_fills_holes():
    labels = np.zeros((16, 16, 16), np.int32)
    body = cube(labels.shape, (3, 3, 3), 7)  # voxels 3..9 on every axis
    labels[body] = 1
    labels[6, 6, 10:13] = 1  # a one-voxel-thin spike out of a face
    labels[6, 6, 6] = 0  # an enclosed one-voxel hole
    cleaned = clean_segments(labels, min_voxels=10)
    assert not cleaned[6, 6, 11:13].any()
    assert cleaned[6, 6, 6] == 1
    assert np.array_equal(cleaned == 1, ndimage.binary_closing(ndimage.binary_opening(labels == 1)))


def test_small_components_of_a_segment_are_dropped():
    labels = np.zeros((16, 16, 16), np.int32)
    big, small = cube(labels.shape, (1, 1, 1), 6), cube(labels.shape, (10, 10, 10), 3)
    labels[big | small] = 4  # one id, two components: 216 and 27 voxels
    labels[cube(labels.shape, (10, 1, 1), 4)] = 7
    cleaned = clean_segments(labels, min_voxels=20)  # after morphology: 160, 7 and 32 voxels
    smooth = lambda mask: ndimage.binary_closing(ndimage.binary_opening(mask))  # noqa: E731
    assert np.array_equal(cleaned == 1, smooth(big))
    assert np.array_equal(cleaned == 2, smooth(cube(labels.shape, (10, 1, 1), 4)))
    assert not cleaned[small].any() and smooth(small).sum() > 0  # dropped for its size, not by morphology


def full_volume_cleaning(labels, min_voxels):
    """Independent path: every segment processed on the whole volume, no cropping."""
    sizes = np.bincount(labels.ravel())
    out = np.zeros(labels.shape, np.int32)
    for segment in range(1, sizes.size):
        if sizes[segment] < min_voxels:
            continue
        mask = ndimage.binary_closing(ndimage.binary_opening(labels == segment))
        components, _ = ndimage.label(mask)
        component_sizes = np.bincount(components.ravel())
        for component in range(1, component_sizes.size):
            if component_sizes[component] >= min_voxels:
                out[components == component] = segment
    present = [s for s in np.unique(out) if s]
    renumbered = np.zeros_like(out)
    for new, old in enumerate(present, start=1):
        renumbered[out == old] = new
    return renumbered


@pytest.mark.parametrize("seed", [0, 1])
def test_cropped_cleaning_equals_whole_volume(seed):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 9, (4, 5, 5))
    labels = ndimage.zoom(coarse, 4, order=0).astype(np.int32)  # blocks touching every border
    labels[rng.random(labels.shape) < 0.05] = 0  # speckle for the morphology to fix
    cleaned = clean_segments(labels, min_voxels=30)
    assert np.array_equal(cleaned, full_volume_cleaning(labels, 30))
    assert cleaned.max() > 3


def test_ground_truth_painted_with_fresh_ids():
    segments = np.zeros((4, 5, 6), np.int32)
    segments[:2] = 1
    segments[2:] = 2
    ground_truth = np.zeros((2, 4, 5, 6), np.float32)
    ground_truth[0, 1:3, 1:3, 1:3] = 1.0
    ground_truth[1, 0, 0, :] = 1.0
    ground_truth[1, 3, 4, 5] = 0.5  # partial coverage after an 'area' resize: not painted
    painted, ids = paint_ground_truth(segments, ground_truth)
    assert ids == [3, 4]
    assert np.array_equal(painted == 3, ground_truth[0] == 1)
    assert np.array_equal(painted == 4, ground_truth[1] == 1)
    untouched = (ground_truth == 1).sum(0) == 0
    assert np.array_equal(painted[untouched], segments[untouched])


# ---------------------------------------------------------------- one case
def phantom(shape=(24, 40, 36), seed=0):
    """Air box holding a body with two large organs of distinct intensity; organ 0 is the GT."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = np.zeros(shape, np.float32)
    body = (h / 0.9) ** 2 + (w / 0.9) ** 2 < 1
    image[body] = 0.4
    organs = [((0.0, -0.35, -0.3), 0.45, 0.8), ((0.0, 0.35, 0.3), 0.45, 0.15)]
    masks = []
    for (cd, ch, cw), radius, value in organs:
        mask = (d - cd) ** 2 + (h - ch) ** 2 + (w - cw) ** 2 < radius**2
        image[mask] = value
        masks.append(mask)
    image += rng.normal(0, 0.01, shape).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    return image, masks


def test_case_pseudo_labels_on_a_phantom():
    image, masks = phantom()
    ground_truth = masks[0][None].astype(np.uint8)
    settings = stage_settings("pseudo", {"grid": [16, 32, 32], "min_size": 100})
    pseudo, attrs = case_pseudo_labels(image, ground_truth, ["liver"], settings)
    assert pseudo.shape == image.shape and pseudo.dtype == np.int32
    k = attrs["n_segments"]
    assert 2 <= k <= 20
    assert attrs["gt_ids"] == {"liver": k + 1}
    sizes = np.bincount(pseudo.ravel(), minlength=k + 2)
    assert attrs["segment_sizes"] == sizes[1:].tolist()
    liver = pseudo == k + 1
    assert (liver & masks[0]).sum() / masks[0].sum() > 0.6  # interior painted (edges lost to 'area')
    assert (liver & ~masks[0]).sum() / liver.sum() < 0.15  # nearest upsampling blurs a little
    # the other organ is found by FH itself: mostly covered by one segment of its own
    ids, counts = np.unique(pseudo[masks[1]], return_counts=True)
    organ = ids[counts.argmax()]
    assert organ not in (0, k + 1) and counts.max() / masks[1].sum() > 0.6
    assert (pseudo == organ).sum() < 1.5 * masks[1].sum()


def test_case_pseudo_labels_without_ground_truth():
    image, _ = phantom(seed=1)
    settings = stage_settings("pseudo", {"grid": [16, 32, 32], "min_size": 100, "criterion": "classic", "k": 0.5})
    pseudo, attrs = case_pseudo_labels(image, None, [], settings)
    assert attrs["gt_ids"] == {} and attrs["n_segments"] == pseudo.max() >= 2


@pytest.mark.parametrize(
    "image,labels,message",
    [
        (np.zeros((5, 6, 7), np.float32), None, "constant"),
        (np.random.default_rng(0).random((2, 5, 6, 7)).astype(np.float32), None, "3-D"),
        (
            np.random.default_rng(0).random((5, 6, 7)).astype(np.float32),
            np.zeros((1, 5, 6, 8), np.uint8),
            "do not match",
        ),
        (np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), np.zeros((5, 6, 7), np.uint8), "do not match"),
        (np.full((5, 6, 7), np.nan, np.float32), None, "NaN"),
    ],
)
def test_case_bad_input_raises(image, labels, message):
    settings = stage_settings("pseudo", {"grid": [4, 4, 4]})
    with pytest.raises(ValueError, match=message):
        case_pseudo_labels(image, labels, ["liver"] if labels is not None else [], settings, name="case_x")


# ---------------------------------------------------------------- real CT
def test_real_ct_gives_a_plausible_segmentation(shared_data):
    import nibabel as nib

    folder = shared_data / "totalsegmentator" / "abdomen_ct_3mm_small"
    hu = np.asarray(nib.load(folder / "example_ct_sm.nii.gz").dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(folder / "example_seg.nii.gz").dataobj)
    # (X, Y, Z) -> (D, H, W); a simple min-max of the HU window stands in for the normalizer
    image = np.clip(hu.transpose(2, 1, 0), -1000, 1000)
    image = (image - image.min()) / (image.max() - image.min())
    liver = (seg.transpose(2, 1, 0) == 5)[None].astype(np.uint8)  # TotalSegmentator id 5 = liver
    settings = stage_settings("pseudo", {"grid": [32, 128, 128], "min_size": 300})
    pseudo, attrs = case_pseudo_labels(image, liver, ["liver"], settings, name="example_ct_sm")
    assert 5 <= attrs["n_segments"] <= 300
    assert "liver" in attrs["gt_ids"]
    # every kept FH segment is at least ~0.1 % of the grid (nearest resizing moves sizes a little)
    sizes = np.array(attrs["segment_sizes"][: attrs["n_segments"]])
    assert sizes.min() > 0.0005 * image.size
    assert (pseudo[image > 0.3] > 0).mean() > 0.8  # the body is almost all labelled
    painted = pseudo == attrs["gt_ids"]["liver"]
    assert (painted & (liver[0] == 1)).sum() > 0.8 * painted.sum()
