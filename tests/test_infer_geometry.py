"""Coordinate mapping (VoxelMap), prompt validation, window lattice and stitching."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segvol.infer.geometry import VoxelMap, box_is_empty, box_slices, nearest_exact_indices
from segvol.infer.prompts import Prompt, load_prompt_file, prompts_from_records
from segvol.infer.windows import LogitStitcher, extract_window, window_lattice

torch.set_num_threads(1)


def random_map(rng) -> VoxelMap:
    steps = [
        VoxelMap.crop(rng.integers(-5, 20, 3)),
        VoxelMap.resize(rng.integers(10, 300, 3), rng.integers(10, 300, 3)),
        VoxelMap.crop(rng.integers(-5, 20, 3)),
    ]
    result = VoxelMap.identity()
    for step in steps:
        result = result.then(step)
    return result


def test_forward_inverse_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        voxel_map = random_map(rng)
        points = rng.uniform(-10, 300, (50, 3))
        back = voxel_map.inverse().apply(voxel_map.apply(points))
        np.testing.assert_allclose(back, points, atol=1e-9)


def test_composition_order():
    crop = VoxelMap.crop((10, 20, 30))
    resize = VoxelMap.resize((100, 100, 100), (50, 25, 10))
    point = np.array([12.0, 24.0, 36.0])
    composed = crop.then(resize).apply(point)
    by_hand = (point - [10, 20, 30] + 0.5) * np.array([0.5, 0.25, 0.1]) - 0.5
    np.testing.assert_allclose(composed, by_hand)


@pytest.mark.parametrize("n_in,n_out", [(7, 32), (32, 7), (100, 32), (33, 32), (600, 32), (5, 5), (511, 256)])
def test_nearest_exact_indices_match_torch(n_in, n_out):
    source = torch.arange(n_in, dtype=torch.float32)[None, None, :, None, None].expand(1, 1, n_in, 2, 2)
    resized = F.interpolate(source, size=(n_out, 2, 2), mode="nearest-exact")[0, 0, :, 0, 0]
    np.testing.assert_array_equal(nearest_exact_indices(n_in, n_out), resized.long().numpy())


@pytest.mark.parametrize("in_shape,out_shape", [((40, 90, 70), (32, 256, 256)), ((300, 512, 400), (32, 256, 256))])
def test_points_land_on_the_resampled_voxel(in_shape, out_shape):
    # Every mapped point must land on a target voxel whose nearest-exact source voxel is the
    # point itself (upsampling) or within half a target cell (+ rounding) of it (downsampling).
    rng = np.random.default_rng(1)
    voxel_map = VoxelMap.resize(in_shape, out_shape)
    points = np.stack([rng.integers(0, n, 200) for n in in_shape], axis=1)
    mapped = voxel_map.map_points(points, out_shape)
    for axis in range(3):
        sampled = nearest_exact_indices(in_shape[axis], out_shape[axis])[mapped[:, axis]]
        cell = in_shape[axis] / out_shape[axis]
        assert np.all(np.abs(sampled - points[:, axis]) <= cell / 2 + 0.5 + 1e-9), axis
        if cell <= 1:
            np.testing.assert_array_equal(sampled, points[:, axis])


def test_box_through_crop_and_resize_covers_the_object():
    # An object occupying exactly a box must be fully inside the mapped box after a nearest-exact
    # resize, and the mapped box must not be more than one target voxel larger on each side.
    rng = np.random.default_rng(2)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(20, 120, 3))
        out_shape = tuple(int(n) for n in rng.integers(8, 150, 3))
        start = rng.integers(0, 5, 3)
        lo = np.array([rng.integers(start[a], shape[a] - 2) for a in range(3)])
        hi = np.array([rng.integers(lo[a], shape[a]) for a in range(3)])
        volume = np.zeros(shape, np.uint8)
        volume[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = 1
        crop_shape = tuple(int(n) for n in np.array(shape) - start)
        voxel_map = VoxelMap.crop(start).then(VoxelMap.resize(crop_shape, out_shape))
        box = voxel_map.map_box(np.concatenate([lo, hi]), out_shape)
        cropped = volume[start[0] :, start[1] :, start[2] :]
        idx = [nearest_exact_indices(crop_shape[a], out_shape[a]) for a in range(3)]
        resized = cropped[np.ix_(*idx)]
        inside = np.zeros(out_shape, bool)
        inside[box_slices(box)] = True
        assert not np.any(resized.astype(bool) & ~inside)
        # tight: the object's voxels span the box up to one cell of slack per side
        true_lo = (lo - start + 0.5) * np.array(out_shape) / crop_shape - 0.5
        true_hi = (hi - start + 0.5) * np.array(out_shape) / crop_shape - 0.5
        scale = np.array(out_shape) / crop_shape
        assert np.all(box[:3] >= np.floor(true_lo - scale / 2 - 1))
        assert np.all(box[3:] <= np.ceil(true_hi + scale / 2 + 1))


def test_box_identity_and_clipping():
    voxel_map = VoxelMap.crop((5, 5, 5))
    np.testing.assert_array_equal(voxel_map.map_box([5, 6, 7, 10, 11, 12]), [0, 1, 2, 5, 6, 7])
    np.testing.assert_array_equal(voxel_map.map_box([0, 6, 7, 10, 11, 40], (20, 20, 20)), [0, 1, 2, 5, 6, 19])
    assert box_is_empty(voxel_map.map_box([0, 0, 0, 3, 3, 3], (20, 20, 20)))


def test_from_affines_follows_reorientation():
    # A file stored L-P-S with a permutation: array[i, j, k]; canonical = RAS then reversed axes.
    import nibabel as nib

    rng = np.random.default_rng(3)
    data = rng.random((6, 7, 8))
    affine = np.array([[0, -2.0, 0, 10], [0, 0, -1.5, 20], [3.0, 0, 0, -5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    ras = nib.as_closest_canonical(image)
    canonical = np.asarray(ras.dataobj).transpose(2, 1, 0)
    canonical_affine = ras.affine @ np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    file_to_canonical = VoxelMap.from_affines(affine, canonical_affine)
    for point in itertools.product(range(6), range(7), range(8)):
        d, h, w = file_to_canonical.map_points(np.array([point]))[0]
        assert canonical[d, h, w] == data[point]
    box = file_to_canonical.map_box([1, 2, 3, 4, 5, 6], canonical.shape)
    marked = np.zeros(data.shape, bool)
    marked[1:5, 2:6, 3:7] = True
    canonical_marked = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(marked.astype(np.uint8), affine)).dataobj)
    canonical_marked = canonical_marked.transpose(2, 1, 0).astype(bool)
    expected = np.zeros(canonical.shape, bool)
    expected[box_slices(box)] = True
    np.testing.assert_array_equal(expected, canonical_marked)


def test_prompt_validation():
    with pytest.raises(ValueError, match="at least one"):
        Prompt()
    with pytest.raises(ValueError, match="inverted"):
        Prompt(box=[5, 5, 5, 4, 9, 9])
    with pytest.raises(ValueError, match="6 numbers"):
        Prompt(box=[1, 2, 3])
    with pytest.raises(ValueError, match="1 \\(inside\\) or 0"):
        Prompt(points=[[1, 2, 3]], point_labels=[2])
    with pytest.raises(ValueError, match="point labels"):
        Prompt(points=[[1, 2, 3], [2, 3, 4]], point_labels=[1])
    with pytest.raises(ValueError, match="non-empty"):
        Prompt(text="  ")
    prompt = Prompt(text="liver", box=[0, 0, 0, 9, 9, 9], points=[[1, 1, 1]])
    prompt.check_inside((10, 10, 10))
    with pytest.raises(ValueError, match="outside"):
        prompt.check_inside((10, 10, 9))
    with pytest.raises(ValueError, match="outside"):
        Prompt(points=[[1, 1, 12]]).check_inside((10, 10, 10))


def test_prompt_file(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text(
        "- {name: liver, text: liver, box: [1, 2, 3, 4, 5, 6]}\n"
        "- {name: spleen, points: [[1, 1, 1], [2, 2, 2]], point_labels: [1, 0]}\n"
    )
    prompts = load_prompt_file(path)
    assert [p.label for p in prompts] == ["liver", "spleen"]
    np.testing.assert_array_equal(prompts[1].point_labels, [1, 0])
    with pytest.raises(ValueError, match="unknown key"):
        prompts_from_records([{"text": "liver", "colour": "red"}])
    with pytest.raises(ValueError, match="duplicate"):
        prompts_from_records([{"text": "liver"}, {"text": "liver"}])
    with pytest.raises(FileNotFoundError):
        load_prompt_file(tmp_path / "missing.json")


@pytest.mark.parametrize("shape", [(40, 300, 256), (20, 100, 600), (32, 256, 256)])
def test_window_lattice_covers_with_half_overlap(shape):
    window = (32, 256, 256)
    lattice = window_lattice(shape, window, 0.5)
    count = np.zeros(shape, np.int32)
    for w in lattice:
        volume_slices, _ = w.overlap(shape)
        count[volume_slices] += 1
        for a in range(3):
            if shape[a] >= window[a]:
                assert 0 <= w.start[a] <= shape[a] - window[a]
            else:  # padded symmetrically
                assert w.start[a] == -((window[a] - shape[a]) // 2)
    assert count.min() >= 1
    starts = sorted({w.start[0] for w in lattice})
    if shape[0] > 64:
        assert starts[1] - starts[0] == 16


def test_stitcher_averages_like_a_naive_sum():
    rng = np.random.default_rng(4)
    shape = (20, 30, 25)
    window = (8, 16, 16)
    lattice = window_lattice(shape, window, 0.5)
    coarse = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
    target = coarse.clone()
    used = lattice[::2]
    stitcher = LogitStitcher(target, used)
    total, count = np.zeros(shape), np.zeros(shape)
    first_come = coarse.clone()  # the plain rule, float32: the first window overwrites, later ones add
    for w in used:
        values = torch.from_numpy(rng.normal(size=window).astype(np.float32))
        values[0, 0, 0] = -0.0
        stitcher.add(w, values)
        vs, ws = w.overlap(shape)
        total[vs] += values.numpy()[ws]
        first_come[vs] = torch.where(torch.from_numpy(count[vs] == 0), values[ws], first_come[vs] + values[ws])
        count[vs] += 1
    stitcher.finish()
    expected = np.where(count > 0, total / np.maximum(count, 1), coarse.numpy())
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-5)
    repeated = torch.from_numpy(count > 1)
    first_come[repeated] /= torch.from_numpy(count.astype(np.float32))[repeated]
    assert torch.equal(target, first_come) and torch.equal(target.signbit(), first_come.signbit())
    assert (count == 0).any() and (count > 2).any()


def test_extract_window_pads_with_zeros():
    volume = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(5, 6, 7) + 1
    lattice = window_lattice(volume.shape, (8, 4, 4), 0.5)
    w = lattice[0]
    patch = extract_window(volume, w)
    assert w.start[0] == -1  # (8 - 5) // 2 voxels of padding in front
    assert torch.all(patch[0] == 0) and torch.all(patch[6:] == 0)
    assert torch.equal(patch[1:6], volume[:, w.start[1] : w.start[1] + 4, w.start[2] : w.start[2] + 4])


@pytest.mark.slow
def test_window_lattice_matches_monai_sliding_window_positions():
    """Our lattice arithmetic (no MONAI import at run time) reproduces MONAI's window positions.

    Slow only because importing MONAI takes 10-30 s on the CI machine; the comparison is instant.
    """
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from segvol.infer.windows import window_starts

    rng = np.random.default_rng(0)
    for _ in range(150):
        window = tuple(int(v) for v in rng.integers(6, 40, 3))
        shape = tuple(int(w + rng.integers(0, 60)) for w in window)
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.6, 0.75, 0.9]))
        interval = _get_scan_interval(shape, window, 3, (overlap,) * 3)
        expected = sorted(
            {tuple(int(s.start) for s in slices) for slices in dense_patch_slices(shape, window, interval)}
        )
        per_axis = [window_starts(n, w, overlap) for n, w in zip(shape, window)]
        ours = sorted((d, h, w) for d in per_axis[0] for h in per_axis[1] for w in per_axis[2])
        assert ours == expected, (shape, window, overlap)
