"""Our own implementations against scikit-image routines that compute the same thing.

Kept here, not in the package: our versions are faster (compiled union-find passes over implicit edge
lists, bounding-box crops) or follow the released SegVol exactly, and scikit-image is the independent
reference they must agree with wherever the two definitions coincide.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import morphology
from skimage.measure import label
from skimage.segmentation import felzenszwalb, find_boundaries

from segvol.evaluate.metrics import normalized_surface_dice
from segvol.pseudo.clean import clean_mask
from segvol.pseudo.felzenszwalb import felzenszwalb_3d


def assert_same_partition(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal up to renumbering: the pairs (our id, their id) are as many as either's ids."""
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1).shape[1]
    assert pairs == len(np.unique(ours)) == len(np.unique(theirs)), (
        pairs,
        len(np.unique(ours)),
        len(np.unique(theirs)),
    )


def blocky_image(seed: int, shape=(40, 44)) -> np.ndarray:
    """Regions of three grey levels plus noise, on a 2^-20 grid (exact in float32 and float64)."""
    rng = np.random.default_rng(seed)
    regions = np.add.outer(np.arange(shape[0]) // 10, np.arange(shape[1]) // 7) % 3
    image = 0.3 * regions + 0.3 * rng.random(shape)
    return np.round(image * 2**20) / 2**20


@pytest.mark.parametrize(("k", "sigma", "min_size"), [(0.5, 0.0, 1), (0.5, 0.0, 10), (2.0, 0.0, 20), (0.5, 0.8, 10)])
def test_classic_fh_on_one_slice_equals_skimage_felzenszwalb(k, sigma, min_size):
    """FH 2004 on an 8-connected 2-D grid is skimage's felzenszwalb: same criterion, same min-size pass.

    skimage divides `scale` by 255 (its images live in [0, 1] but the criterion was tuned on 0..255),
    hence scale = 255 k. On one slice our 26-neighbourhood is the in-plane 8-neighbourhood.
    """
    for seed in range(3):
        image = blocky_image(seed)
        theirs = felzenszwalb(image, scale=255 * k, sigma=sigma, min_size=min_size, channel_axis=None)
        ours = felzenszwalb_3d(
            image[None].astype(np.float32), "classic", k=k, sigma=sigma, min_size=min_size, connectivity=26
        )[0]
        assert len(np.unique(ours)) > 2
        assert_same_partition(ours, theirs)


@pytest.mark.parametrize(("connectivity", "order"), [(6, 1), (26, 3)])
def test_classic_fh_with_a_tiny_scale_is_connected_components_of_equal_values(connectivity, order):
    """On integer levels with k far below one level step, FH joins exactly the equal-valued neighbours:
    the 3-D connected components of each level, which skimage.measure.label computes directly."""
    rng = np.random.default_rng(7)
    levels = (ndimage.gaussian_filter(rng.random((12, 14, 16)), 1.0) * 40).astype(np.int64)
    ours = felzenszwalb_3d(
        levels.astype(np.float32), "classic", k=1e-3, sigma=0.0, min_size=1, connectivity=connectivity
    )
    theirs = label(levels, background=-1, connectivity=order)
    assert theirs.max() > 20
    assert_same_partition(ours, theirs)


def test_segvol_first_pass_on_one_slice_is_8_connected_components():
    """The released criterion's first pass joins edges below a percentile of the non-zero weights; at
    percentile 0 only equal neighbours are joined, along its in-plane axes and both diagonals."""
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 4, (1, 30, 34))
    ours = felzenszwalb_3d(levels.astype(np.float32), "segvol", sigma=0.0, min_size=1, percentile=0.0)
    theirs = label(levels[0], background=-1, connectivity=2)
    assert theirs.max() > 20
    assert_same_partition(ours[0], theirs)


def test_segment_cleaning_equals_skimage_morphology():
    """Opening, closing (3-D cross, outside = background) and dropping 6-connected pieces below 30 voxels."""
    rng = np.random.default_rng(1)
    cross = morphology.ball(1)
    for _ in range(4):
        mask = ndimage.gaussian_filter(rng.random((20, 24, 24)), 1.0) > 0.52
        smoothed = morphology.closing(morphology.opening(mask, cross, mode="min"), cross, mode="min")
        expected = morphology.remove_small_objects(smoothed, max_size=29, connectivity=1)
        cleaned = clean_mask(mask, 30)
        assert ndimage.label(cleaned)[1] >= 2 and not np.array_equal(cleaned, smoothed)  # something was dropped
        np.testing.assert_array_equal(cleaned, expected)


def surface_dice_from_boundaries(prediction, truth, spacing, tolerance_mm) -> float:
    """NSD from skimage's inner boundaries (face-connected) and exact Euclidean distances in mm.

    One voxel of background padding first: a mask cut by the volume's edge has its surface there.
    """
    prediction, truth = np.pad(prediction, 1), np.pad(truth, 1)
    surface_p = find_boundaries(prediction, mode="inner", connectivity=1)
    surface_t = find_boundaries(truth, mode="inner", connectivity=1)
    to_truth = ndimage.distance_transform_edt(~surface_t, sampling=spacing)[surface_p]
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_t]
    close = np.count_nonzero(to_truth <= tolerance_mm) + np.count_nonzero(to_prediction <= tolerance_mm)
    return close / (surface_p.sum() + surface_t.sum())


@pytest.mark.parametrize("seed", range(4))
def test_nsd_equals_the_surface_dice_of_skimage_boundaries(seed):
    rng = np.random.default_rng(seed)
    shape = (18, 30, 26)
    truth = ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.52
    prediction = ndimage.binary_dilation(truth, iterations=1 + seed % 2) ^ (
        ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.6
    )
    if seed % 2:
        truth[:, :, -1] |= rng.random(shape[:2]) > 0.5  # touches the volume's edge
    spacing = (2.5, 0.8, 0.7)
    for tolerance in (1.0, 2.0):
        expected = surface_dice_from_boundaries(prediction, truth, spacing, tolerance)
        assert 0.05 < expected < 1.0  # surfaces that really differ
        ours = normalized_surface_dice(prediction, truth, spacing, tolerance)
        assert ours == pytest.approx(expected, rel=1e-6)  # MONAI returns float32
    # the check can tell axes apart: the spacing read in the wrong order gives another value
    assert surface_dice_from_boundaries(prediction, truth, spacing[::-1], 1.0) != pytest.approx(
        normalized_surface_dice(prediction, truth, spacing, 1.0), abs=1e-3
    )
