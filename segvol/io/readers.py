"""Format readers. Each returns the source volume in NIfTI terms: an (I, J, K) array and the 4x4
affine mapping (i, j, k) to RAS+ mm. Orientation and validation happen in `segvol.io.image`.

SimpleITK images (NRRD, MHA/MHD, DICOM series) are LPS+ with an (z, y, x) numpy view; they are
converted to the NIfTI convention here: the array is transposed to (x, y, z) (a view, no copy) and
the first two world axes are negated.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segvol.io import headers

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SourceVolume:
    array: np.ndarray  # (I, J, K) as stored in the file
    affine: np.ndarray  # (4, 4) (i, j, k) -> RAS+ mm
    kind: str  # "nifti" | "itk" | "dicom"
    nifti_header: object | None = None  # kept so that write_like reproduces NIfTI headers


def image_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(".npy"):
        return "npy"
    raise ValueError(
        f"{path}: unsupported image format (expected .nii/.nii.gz, .nrrd, .mha/.mhd, "
        "a DICOM series folder or an M3D .npy)"
    )


def read_nifti(path: Path) -> SourceVolume:
    import nibabel as nib

    headers.check_nifti(path)  # before nibabel allocates what the header claims
    try:
        image = nib.load(str(path))
        # dataobj applies scl_slope/scl_inter; unscaled data keeps its stored dtype.
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for truncated/corrupt files
        raise ValueError(f"{path}: cannot read NIfTI file ({type(error).__name__}: {error})") from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image ({type(image).__name__})")
    return SourceVolume(
        array=np.asarray(array), affine=image.affine.astype(np.float64), kind="nifti", nifti_header=image.header.copy()
    )


def itk_message(error: Exception) -> str:
    """One line from a SimpleITK exception, which spans many lines (source location, class
    address, a stack of reader messages): the first real message and, if different, the last
    (most specific) one."""
    lines = []
    for line in str(error).splitlines():
        line = line.strip()
        if not line or line.startswith("Exception thrown in SimpleITK") or re.search(r"\.(cxx|hxx|h):\d+:?$", line):
            continue
        line = re.sub(r"^(itk|sitk)::ERROR:\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        line = re.sub(r"^\[\w+\]\s*", "", line)
        if line:
            lines.append(line)
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _itk_to_source(image, path: Path, kind: str) -> SourceVolume:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a scalar (grey-value) image"
        )
    dimension = image.GetDimension()
    if dimension != 3:
        raise ValueError(f"{path}: is a {dimension}-D image; expected a 3-D volume")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    array_zyx = sitk.GetArrayFromImage(image)
    return SourceVolume(array=array_zyx.transpose(2, 1, 0), affine=LPS_TO_RAS @ affine_lps, kind=kind)


def read_itk(path: Path) -> SourceVolume:
    """A MetaImage or NRRD file, its header and detached data files checked first (`segvol.io.headers`).

    The ImageIO is named, not guessed from the content, so that ITK reads the format that was checked.
    """
    import SimpleITK as sitk

    if path.name.lower().endswith((".mha", ".mhd")):
        headers.check_metaimage(path)
        image_io = "MetaImageIO"
    elif path.name.lower().endswith((".nrrd", ".nhdr")):
        headers.check_nrrd(path)
        image_io = "NrrdImageIO"
    else:
        raise ValueError(f"{path}: not a MetaImage (.mha/.mhd) or NRRD (.nrrd/.nhdr) file")
    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except Exception as error:
        raise ValueError(f"{path}: cannot read image file ({itk_message(error)})") from None
    return _itk_to_source(image, path, "itk")


def dicom_series_files(folder: Path) -> tuple[str, list[str]]:
    """(series id, its files in slice order) of the series `read_dicom_series` reads: the largest
    one in the folder; GDCM orders the files by position along the slice normal."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ValueError(f"{folder}: no DICOM series found in this folder")
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    series_id = max(files_by_series, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        log.warning(
            "%s holds %d DICOM series; reading the largest (%s, %d files)",
            folder,
            len(series_ids),
            series_id,
            len(files_by_series[series_id]),
        )
    return series_id, list(files_by_series[series_id])


def read_dicom_series(folder: Path) -> SourceVolume:
    import SimpleITK as sitk

    series_id, files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    if len(files) < 2:
        raise ValueError(f"{folder}: DICOM series {series_id} has a single slice; expected a 3-D volume")
    headers.check_dicom_series(folder, files)  # ITK allocates the series from the first file's header
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except Exception as error:
        raise ValueError(f"{folder}: cannot read DICOM series {series_id} ({itk_message(error)})") from None
    _check_slice_positions(reader, image, folder)
    return _itk_to_source(image, folder, "dicom")


def _check_slice_positions(reader, image, folder: Path) -> None:
    """Refuse series whose slices are not evenly spaced (missing slices, mixed stacks): the
    volume's single z spacing would silently misplace them."""
    key = "0020|0032"  # Image Position (Patient)
    count = image.GetSize()[2]
    if not all(reader.HasMetaDataKey(i, key) for i in range(count)):
        return
    positions = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")] for i in range(count)])
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    steps = np.diff(positions @ normal)
    spacing = image.GetSpacing()[2]
    if np.any(np.abs(np.abs(steps) - spacing) > 0.01 * spacing + 1e-3):
        raise ValueError(
            f"{folder}: DICOM slices are not evenly spaced (steps {np.round(steps, 3).tolist()[:10]} mm"
            f"{' ...' if len(steps) > 10 else ''}, expected {spacing:g}); missing slices or mixed series?"
        )


def read_source(path: Path) -> SourceVolume:
    kind = image_format(path)
    if kind == "nifti":
        return read_nifti(path)
    if kind == "itk":
        return read_itk(path)
    if kind == "dicom":
        return read_dicom_series(path)
    raise ValueError(f"{path}: {kind} files are read by a dedicated reader")
