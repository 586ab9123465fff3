"""Read any supported CT file into the canonical (D, H, W) orientation, and write results back
onto the source's exact grid.

    img = read_image("ct.nii.gz")          # or .nrrd, .mha/.mhd, a DICOM folder, an M3D .npy
    img.array                              # (D, H, W) = (S, A, R), dtype as stored
    mask = ...                             # (D, H, W) on img's canonical grid
    write_like(mask, img, "mask.nii.gz")   # NIfTI with the source's own shape and affine
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segvol.io import orientation
from segvol.io.atomic import atomic_path
from segvol.io.readers import SourceVolume, image_format, read_source

# Labels and images must agree to this fraction of the smallest voxel size (affine entries).
GRID_TOLERANCE_VOXELS = 1e-2


@dataclass
class CanonicalImage:
    """A volume in canonical orientation plus what is needed to return to the source grid.

    array: (D, H, W) canonical voxels (slices first, RAS+ then axes reversed).
    spacing: (3,) mm in D, H, W order.
    affine: (4, 4) canonical voxel index (d, h, w) -> RAS+ world mm.
    original_shape, original_affine: the source file's array shape (I, J, K) and its
        (i, j, k) -> RAS+ mm affine (for SimpleITK sources: the equivalent RAS affine).
    reorientation: {"transpose", "flip"} of `segvol.io.orientation` (canonical -> source).
    source: the path that was read.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    reorientation: dict
    source: str
    nifti_header: object | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def to_original(self, array_dhw: np.ndarray) -> np.ndarray:
        """Canonical (..., D, H, W) -> the source's (..., I, J, K) array order (exact inverse)."""
        if tuple(array_dhw.shape[-3:]) != self.shape:
            raise ValueError(
                f"array of shape {tuple(array_dhw.shape)} is not on the canonical grid {self.shape} of {self.source}"
            )
        return orientation.to_original(array_dhw, self.reorientation)

    def from_original(self, array_ijk: np.ndarray) -> np.ndarray:
        """Source-order (..., I, J, K) -> canonical (..., D, H, W)."""
        if tuple(array_ijk.shape[-3:]) != tuple(self.original_shape):
            raise ValueError(
                f"array of shape {tuple(array_ijk.shape)} is not on the source grid "
                f"{self.original_shape} of {self.source}"
            )
        return orientation.to_canonical(array_ijk, self.reorientation)

    def geometry(self) -> dict:
        """JSON-able geometry (the Zarr contract's case attrs)."""
        return {
            "spacing": [float(value) for value in self.spacing],
            "affine": np.asarray(self.affine, dtype=float).tolist(),
            "original_affine": np.asarray(self.original_affine, dtype=float).tolist(),
            "original_shape": [int(value) for value in self.original_shape],
            "to_original": {
                "transpose": [int(v) for v in self.reorientation["transpose"]],
                "flip": [bool(v) for v in self.reorientation["flip"]],
            },
            "source": self.source,
        }


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    # NIfTI writers often store a 3-D volume as (X, Y, Z, 1); a real 4th dimension is an error.
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise ValueError(f"{path}: is a {array.ndim}-D image of shape {array.shape}; expected a single 3-D volume")
    if array.ndim < 3 or min(array.shape) < 2:
        raise ValueError(f"{path}: is a 2-D image of shape {array.shape}; expected a 3-D volume")
    return array


def _check_finite(array: np.ndarray, path: Path) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    # Slab by slab: a full-volume boolean temporary would cost memory on large CTs.
    for start in range(0, array.shape[0], 16):
        if not np.isfinite(array[start : start + 16]).all():
            raise ValueError(f"{path}: contains NaN or infinite voxel values")


def _canonical_from_source(source: SourceVolume, path: Path) -> CanonicalImage:
    array = _squeeze_to_3d(source.array, path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{path}: voxel type {array.dtype} is not numeric")
    try:
        reorientation = orientation.reorientation_for(source.affine)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    canonical = np.ascontiguousarray(orientation.to_canonical(array, reorientation))
    if canonical.dtype == np.float64:
        canonical = canonical.astype(np.float32)  # float64 is only a scaling artefact for CT
    _check_finite(canonical, path)
    affine = orientation.canonical_affine(source.affine, array.shape, reorientation)
    return CanonicalImage(
        array=canonical,
        spacing=orientation.spacing_of(affine),
        affine=affine,
        original_shape=tuple(int(n) for n in array.shape),
        original_affine=np.asarray(source.affine, dtype=np.float64),
        reorientation=reorientation,
        source=str(path),
        nifti_header=source.nifti_header,
    )


def canonical_image(array_ijk: np.ndarray, affine: np.ndarray, source: str = "<array>") -> CanonicalImage:
    """Canonicalise an in-memory volume: `array_ijk` indexed like a NIfTI array, `affine` its
    (i, j, k) -> RAS+ mm map (e.g. for .npy volumes or synthetic data). Same checks as read_image."""
    return _canonical_from_source(SourceVolume(np.asarray(array_ijk), np.asarray(affine, float), "array"), Path(source))


def read_image(path: str | os.PathLike) -> CanonicalImage:
    """Read a NIfTI, NRRD, MHA/MHD file, a DICOM series folder or an M3D `.npy` canonically.

    Raises FileNotFoundError when `path` is missing and ValueError (naming the file) when it is
    unreadable, corrupt, not 3-D, or holds NaN/inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image file or DICOM folder")
    if image_format(path) == "npy":
        try:
            from segvol.io.m3d import read_m3d_image
        except ImportError as error:
            raise ValueError(f"{path}: reading M3D .npy images needs segvol.io.m3d ({error})") from error
        loaded = read_m3d_image(path)
        if isinstance(loaded, CanonicalImage):
            return loaded
        array_xyz, affine = loaded  # M3D-Seg arrays carry no geometry: an identity affine
        return canonical_image(array_xyz, affine, str(path))
    return _canonical_from_source(read_source(path), path)


def _as_integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: label voxels of type {array.dtype} are not integers")
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise ValueError(f"{path}: label map holds non-integer values; expected integer label ids")
    low, high = (float(rounded.min()), float(rounded.max())) if rounded.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return rounded.astype(dtype)
    raise ValueError(f"{path}: label ids outside the int32 range")


def same_grid(image: CanonicalImage, reference: CanonicalImage) -> str | None:
    """None when both lie on the same physical grid, else a sentence saying how they differ."""
    if image.shape != reference.shape:
        return f"canonical shape {image.shape} differs from the image's {reference.shape}"
    tolerance = GRID_TOLERANCE_VOXELS * min(reference.spacing)
    difference = np.abs(np.asarray(image.affine) - np.asarray(reference.affine))[:3]
    if difference.max() > tolerance:
        return (
            f"affine differs from the image's by up to {difference.max():.4g} mm (tolerance {tolerance:.3g} mm):"
            f"\nlabel {np.round(image.affine[:3], 4).tolist()}\nimage {np.round(reference.affine[:3], 4).tolist()}"
        )
    return None


def read_label(path: str | os.PathLike, reference: CanonicalImage) -> CanonicalImage:
    """Read an integer label map canonically and check that it lies on `reference`'s grid.

    The check is physical (canonical shape and affine within 1% of a voxel), so a label saved
    in another axis order or flip than its image (e.g. NIfTI next to a DICOM series) is accepted.
    """
    from segvol.io.m3d import MASK_NAME, read_m3d_mask

    if MASK_NAME.match(Path(path).name):  # M3D-Seg `mask_(C, X, Y, Z).npz`: channel c -> label c + 1
        label = canonical_image(*read_m3d_mask(path), str(path))
    else:
        label = read_image(path)
    label.array = _as_integer_labels(label.array, Path(path))
    problem = same_grid(label, reference)
    if problem:
        raise ValueError(f"{path}: label map is not on the grid of {reference.source}: {problem}")
    return label


def _output_dtype(array: np.ndarray) -> np.dtype:
    if np.issubdtype(array.dtype, np.floating):
        return np.dtype(np.float32)
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if array.size == 0:
        return np.dtype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"values in [{low}, {high}] do not fit a NIfTI int32")


def write_like(
    array_dhw: np.ndarray, image: CanonicalImage, out_path: str | os.PathLike, dtype: np.dtype | str | None = None
) -> Path:
    """Write a canonical (D, H, W) array as NIfTI on exactly `image`'s source grid, atomically.

    The file has the source's shape and affine (for NRRD/MHA/DICOM sources the equivalent RAS
    affine). Integer/bool arrays are stored as uint8 (or int16/int32 if needed), floats as float32,
    unless `dtype` says otherwise. NIfTI sources keep their header fields (codes, units, ...).
    """
    import nibabel as nib

    out_path = Path(out_path)
    array_dhw = np.asarray(array_dhw)
    if array_dhw.ndim != 3:
        raise ValueError(f"{out_path}: expected a (D, H, W) array, got shape {array_dhw.shape}")
    data = image.to_original(array_dhw)
    target = np.dtype(dtype) if dtype is not None else _output_dtype(data)
    data = data.astype(target, copy=False)
    if image.nifti_header is not None and isinstance(image.nifti_header, nib.Nifti1Header):
        header = image.nifti_header.copy()
        header.set_data_dtype(target)
        header.set_slope_inter(1.0, 0.0)
        nifti = nib.Nifti1Image(data, image.original_affine, header=header)
        # Keep both transforms' codes as the source had them; the affine itself is the source's.
        nifti.set_sform(image.original_affine, code=int(image.nifti_header["sform_code"]) or 1)
        qform_code = int(image.nifti_header["qform_code"])
        if qform_code:
            nifti.set_qform(image.nifti_header.get_qform(), code=qform_code)
    else:
        nifti = nib.Nifti1Image(data, image.original_affine)
        nifti.set_data_dtype(target)
        nifti.set_sform(image.original_affine, code=1)
        nifti.set_qform(image.original_affine, code=1)
    name = out_path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{out_path}: write_like writes NIfTI; use a .nii or .nii.gz name")
    with atomic_path(out_path) as temporary:
        nib.save(nifti, str(temporary))
    return out_path
