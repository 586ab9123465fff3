"""segvol.io: canonical orientation, exact write-back, format readers, bad inputs."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segvol.io import orientation, read_image, read_label, same_grid, write_like

SHAPE = (7, 9, 11)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def _affine(linear: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear * np.asarray(spacing, dtype=float)[None, :]
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "ras": _affine(np.eye(3), (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0)),
    "lps": _affine(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.7, 3.0), (100.0, 150.0, -50.0)),
    # columns permuted (the array's first axis runs along S) and flipped, then tilted 12 degrees
    "oblique_permuted": _affine(
        _rotation(0, 12.0) @ np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]),
        (2.0, 1.1, 0.6),
        (5.0, -7.0, 11.0),
    ),
    "pir": _affine(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), (1.0, 1.5, 2.0), (0, 0, 0)),
}


def _voxel_values_by_world(array: np.ndarray, affine: np.ndarray) -> dict:
    """{rounded world position of a voxel centre: its value}: a layout-free description of a volume."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return {tuple(np.round(point, 4)): value for point, value in zip(world, array.reshape(-1))}


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 2000, size=SHAPE).astype(np.int16)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_nifti_round_trip_keeps_geometry_and_voxels(tmp_path, volume, name):
    affine = AFFINES[name]
    source = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), source)

    image = read_image(source)
    # Canonical axes point (mostly) along +S, +A, +R.
    dominant = np.abs(image.affine[:3, :3]).argmax(axis=0)
    assert dominant.tolist() == [2, 1, 0]
    assert np.all(np.sign(image.affine[dominant, [0, 1, 2]]) > 0)
    # Every voxel keeps its value at its world position (no resampling, just relabelled axes).
    assert _voxel_values_by_world(image.array, image.affine) == _voxel_values_by_world(volume, affine)
    assert np.allclose(sorted(image.spacing), sorted(np.linalg.norm(affine[:3, :3], axis=0)))
    assert image.original_shape == SHAPE
    assert image.array.dtype == np.int16 and image.array.flags["C_CONTIGUOUS"]

    out = tmp_path / "out" / "copy.nii.gz"
    write_like(image.array, image, out)
    written = nib.load(out)
    assert written.shape == SHAPE
    assert np.array_equal(written.affine, nib.load(source).affine)
    assert np.array_equal(np.asanyarray(written.dataobj), volume)
    assert written.get_data_dtype() == np.int16
    assert [p.name for p in out.parent.iterdir()] == ["copy.nii.gz"]  # no temporary left


def test_to_original_is_inverse_with_channel_axes(volume):
    for affine in AFFINES.values():
        reorientation = orientation.reorientation_for(affine)
        canonical = orientation.to_canonical(volume, reorientation)
        stacked = np.stack([canonical, canonical * 2])
        back = orientation.to_original(stacked, reorientation)
        assert back.shape == (2, *SHAPE)
        assert np.array_equal(back[0], volume) and np.array_equal(back[1], volume * 2)


def _itk_image(array_xyz: np.ndarray, direction: np.ndarray, spacing, origin) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetDirection(direction.reshape(-1).tolist())
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_formats_are_placed_in_ras_world(tmp_path, volume, suffix):
    direction = _rotation(2, 20.0) @ np.diag([1.0, -1.0, 1.0])
    itk = _itk_image(volume, direction, (0.9, 1.2, 2.0), (12.0, -3.0, 40.0))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(itk, str(path))

    image = read_image(path)
    # SimpleITK's own index -> LPS point, turned into RAS by negating x and y.
    for index in [(0, 0, 0), (6, 8, 10), (3, 1, 7)]:
        lps = np.array(itk.TransformIndexToPhysicalPoint(index))
        ras = lps * np.array([-1.0, -1.0, 1.0])
        canonical_index = np.linalg.solve(image.affine[:3, :3], ras - image.affine[:3, 3])
        d, h, w = np.rint(canonical_index).astype(int)
        assert np.allclose(canonical_index, (d, h, w), atol=1e-6)
        assert image.array[d, h, w] == volume[index]

    out = tmp_path / "back.nii.gz"
    write_like(image.array, image, out)
    written = nib.load(out)
    assert written.shape == SHAPE
    assert np.array_equal(np.asanyarray(written.dataobj), volume)  # ITK index order (x, y, z)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _affine(direction, (0.9, 1.2, 2.0), (12.0, -3.0, 40.0))
    assert np.allclose(written.affine, expected, atol=1e-5)


def test_write_like_stores_labels_compactly_and_checks_shape(tmp_path, volume):
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINES["lps"]), source)
    image = read_image(source)
    mask = image.array > 500
    out = tmp_path / "mask.nii.gz"
    write_like(mask, image, out)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), (volume > 500).astype(np.uint8))
    with pytest.raises(ValueError, match="not on the canonical grid"):
        write_like(mask[:-1], image, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


# --------------------------------------------------------------------------- bad inputs


def test_4d_and_2d_images_are_rejected(tmp_path):
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), four)
    with pytest.raises(ValueError, match=r"four\.nii\.gz.*4-D"):
        read_image(four)
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), two)
    with pytest.raises(ValueError, match=r"two\.nii\.gz.*2-D"):
        read_image(two)
    # A trailing singleton 4th axis is just a 3-D volume.
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), np.eye(4)), single)
    assert read_image(single).shape == (5, 4, 3)


def test_non_finite_voxels_are_rejected(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz.*NaN"):
        read_image(path)


def test_corrupt_and_missing_files_give_clear_errors(tmp_path, volume):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz: cannot read"):
        read_image(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not an image at all" * 50))
    with pytest.raises(ValueError, match=r"garbage\.nii\.gz"):
        read_image(garbage)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_image(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="unsupported image format"):
        (tmp_path / "x.png").write_bytes(b"png")
        read_image(tmp_path / "x.png")
    empty_dir = tmp_path / "dicom"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(empty_dir)


def test_label_grid_mismatch_is_explained(tmp_path, volume):
    image_path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINES["ras"]), image_path)
    image = read_image(image_path)
    labels = (volume > 0).astype(np.uint8)

    flipped = tmp_path / "flipped_but_same_box.nii.gz"  # stored L->R instead of R->L: same grid
    lps_affine = AFFINES["ras"].copy()
    lps_affine[:3, 0] *= -1
    lps_affine[0, 3] = AFFINES["ras"][0, 3] + AFFINES["ras"][0, 0] * (SHAPE[0] - 1)
    nib.save(nib.Nifti1Image(labels[::-1], lps_affine), flipped)
    label = read_label(flipped, image)
    assert np.array_equal(label.array, labels.T)

    shifted_affine = AFFINES["ras"].copy()
    shifted_affine[2, 3] += 5.0
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(labels, shifted_affine), shifted)
    with pytest.raises(ValueError, match=r"shifted\.nii\.gz: label map is not on the grid.*affine differs"):
        read_label(shifted, image)

    cropped = tmp_path / "cropped.nii.gz"
    nib.save(nib.Nifti1Image(labels[:, :, :-1], AFFINES["ras"]), cropped)
    with pytest.raises(ValueError, match=r"cropped\.nii\.gz.*shape"):
        read_label(cropped, image)

    fractional = tmp_path / "fractional.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.float32) * 0.5, AFFINES["ras"]), fractional)
    with pytest.raises(ValueError, match="non-integer"):
        read_label(fractional, image)


# --------------------------------------------------------------------------- real CT cases


def test_real_nifti_case_round_trips(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator" / "abdomen_ct_3mm_small"
    image = read_image(folder / "example_ct_sm.nii.gz")
    label = read_label(folder / "example_seg.nii.gz", image)
    source = nib.load(folder / "example_ct_sm.nii.gz")
    assert image.shape == source.shape[::-1]  # RAS source: canonical = reversed axes
    assert image.spacing == pytest.approx((3.0, 3.0, 3.0))
    names = {
        name: int(k)
        for k, name in json.loads(
            (shared_data / "totalsegmentator" / "labels_total.json").read_text(encoding="utf-8")
        ).items()
    }
    liver_hu = image.array[label.array == names["liver"]].mean()
    assert 20 < liver_hu < 70  # README: 44.5 HU on the full scan

    out = tmp_path / "seg.nii.gz"
    write_like(label.array, image, out)
    written = nib.load(out)
    assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
    assert np.array_equal(
        np.asanyarray(written.dataobj), np.asanyarray(nib.load(folder / "example_seg.nii.gz").dataobj)
    )


def test_dicom_series_and_its_nifti_label_agree_in_physical_space(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator" / "ct_dicom_series"
    image = read_image(folder / "dicom")
    label = read_label(folder / "example_seg_dicom.nii.gz", image)
    assert image.shape == (20, 512, 512)
    assert image.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert same_grid(label, image) is None
    # The two files store rows in opposite directions; after canonicalisation the organs line up.
    names = {
        name: int(k)
        for k, name in json.loads(
            (shared_data / "totalsegmentator" / "labels_total.json").read_text(encoding="utf-8")
        ).items()
    }
    expected = {"liver": 89, "spleen": 80, "aorta": 177}  # README sanity figures
    for organ, hu in expected.items():
        assert abs(image.array[label.array == names[organ]].mean() - hu) < 5, organ

    out = tmp_path / "dicom_as.nii.gz"
    write_like(label.array, image, out)
    written = nib.load(out)
    assert written.shape == (512, 512, 20)
    reread = read_label(out, image)
    assert np.array_equal(reread.array, label.array)


def test_canonical_image_from_memory_matches_file_reader(tmp_path, volume):
    from segvol.io import canonical_image

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINES["pir"]), path)
    from_file, from_memory = read_image(path), canonical_image(volume, AFFINES["pir"], "mem")
    assert np.array_equal(from_file.array, from_memory.array)
    assert np.allclose(from_file.affine, from_memory.affine) and from_memory.source == "mem"
    with pytest.raises(ValueError, match="mem: is a 2-D image"):
        canonical_image(volume[:, :, 0], np.eye(4), "mem")


def test_dicom_series_with_a_missing_slice_is_refused(shared_data, tmp_path):
    import shutil

    files = sorted((shared_data / "totalsegmentator" / "ct_dicom_series" / "dicom").iterdir())
    series = tmp_path / "series"
    series.mkdir()
    for index, path in enumerate(files):
        if index != 10:  # drop one slice from the middle of the stack
            shutil.copy(path, series / path.name)
    with pytest.raises(ValueError, match=r"series: DICOM slices are not evenly spaced"):
        read_image(series)


def test_m3d_npy_images_are_read_through_the_m3d_reader(tmp_path, volume):
    path = tmp_path / "image.npy"
    np.save(path, volume[None].astype(np.float32))  # M3D-Seg layout (1, X, Y, Z), no geometry
    image = read_image(path)
    assert image.shape == SHAPE[::-1]  # identity affine: canonical = reversed axes
    assert np.array_equal(image.array, volume.T.astype(np.float32))
    assert image.spacing == (1.0, 1.0, 1.0)
