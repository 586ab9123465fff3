"""Crafted image files whose headers lie: tiny files claiming huge volumes, detached-data headers
that point outside their folder. Shared by tests/test_untrusted_headers.py and
benchmarks/bench_hostile_headers.py (which measures what they cost a reader)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

SECRET = "TOP-SECRET patient list: do not leak\n" * 64


def nifti1_header(shape, datatype: int = 4, bitpix: int = 16, vox_offset: float = 352.0) -> bytes:
    """A 348-byte little-endian single-file NIfTI-1 header (+ 4-byte extension flag) for `shape`."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, *([1.0] * 7))  # pixdim
    struct.pack_into("<f", header, 108, vox_offset)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    struct.pack_into("<h", header, 254, 1)  # sform_code
    struct.pack_into("<4f", header, 280, 1, 0, 0, 0)
    struct.pack_into("<4f", header, 296, 0, 1, 0, 0)
    struct.pack_into("<4f", header, 312, 0, 0, 1, 0)
    header[344:348] = b"n+1\0"
    return bytes(header) + b"\0\0\0\0"


def nifti2_header(shape, datatype: int = 4, bitpix: int = 16) -> bytes:
    """A 540-byte little-endian single-file NIfTI-2 header (+ 4-byte extension flag) for `shape`."""
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, datatype, bitpix)
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    struct.pack_into("<8q", header, 16, *dims)
    struct.pack_into("<8d", header, 104, 1.0, *([1.0] * 7))  # pixdim
    struct.pack_into("<q", header, 168, 544)  # vox_offset
    struct.pack_into("<d", header, 176, 1.0)  # scl_slope
    struct.pack_into("<i", header, 348, 1)  # sform_code
    struct.pack_into("<4d", header, 400, 1, 0, 0, 0)
    struct.pack_into("<4d", header, 432, 0, 1, 0, 0)
    struct.pack_into("<4d", header, 464, 0, 0, 1, 0)
    return bytes(header) + b"\0\0\0\0"


def tiny_gzip_nifti(path: Path, shape=(1000, 1000, 300)) -> Path:
    """A ~62-byte .nii.gz: a header claiming `shape` int16 and no voxel data at all."""
    path.write_bytes(gzip.compress(nifti1_header(shape), mtime=0))
    return path


def huge_nifti2(path: Path, shape=(100000, 100000, 100000)) -> Path:
    """A NIfTI-2 .nii of a few hundred bytes claiming `shape` int16 (2 PB)."""
    path.write_bytes(nifti2_header(shape) + b"\0" * 64)
    return path


def metaimage(
    path: Path, data_file: str, shape=(4, 5, 6), element_type: str = "MET_SHORT", extra: str = "", payload: bytes = b""
) -> Path:
    """A MetaImage header (`.mhd` detached or `.mha`) whose ElementDataFile is `data_file`;
    `payload` is appended after the header (the data of `LOCAL`)."""
    dims = " ".join(str(n) for n in shape)
    text = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"CompressedData = False\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = {dims}\n"
        f"{extra}ElementType = {element_type}\nElementDataFile = {data_file}\n"
    )
    path.write_bytes(text.encode() + payload)
    return path


def nrrd(
    path: Path,
    data_file: str | None,
    shape=(4, 5, 6),
    type_name: str = "short",
    encoding: str = "raw",
    extra: str = "",
    payload: bytes = b"",
) -> Path:
    """A NRRD header (`.nhdr` detached when `data_file` is given, else `.nrrd` with `payload` attached)."""
    sizes = " ".join(str(n) for n in shape)
    text = (
        f"NRRD0004\ntype: {type_name}\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n"
        f"endian: little\nencoding: {encoding}\n{extra}"
    )
    if data_file is not None:
        text += f"data file: {data_file}\n"
    else:
        text += "\n"
    path.write_bytes(text.encode() + payload)
    return path


def voxels(shape, dtype=np.int16, seed: int = 0) -> bytes:
    """Raw little-endian voxel bytes for `shape` (ITK order: the first size varies fastest)."""
    values = np.random.default_rng(seed).integers(-1000, 1000, size=int(np.prod(shape)))
    return values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def dicom_series(
    folder: Path, count: int = 3, rows: int = 8, columns: int = 8, claimed: tuple | None = None, seed: int = 0
) -> tuple[Path, np.ndarray]:
    """A tiny uncompressed CT series (int16, `count` slices of rows x columns, 1 mm apart) and its
    (slice, row, column) voxels; `claimed=(rows, columns)` writes those sizes into every header
    instead, keeping the small pixel data (a forged series)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1000, 1000, size=(count, rows, columns)).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for index in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "hostile", index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.Rows, ds.Columns = claimed or (rows, columns)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = volume[index].tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(folder / f"slice{index:03d}.dcm", enforce_file_format=True)
    return folder, volume


def yaml_alias_bomb(levels: int = 9) -> str:
    """YAML whose `levels` nested anchors expand to 9**levels strings ("billion laughs")."""
    anchors = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    for level in range(1, levels):
        anchors.append(f"&l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "[" + ", ".join(anchors) + "]"


def bomb_prompt_file(path: Path, key: str = "name", levels: int = 9) -> Path:
    """A prompt file whose first prompt's `key` is an alias bomb."""
    other = "text: liver" if key != "text" else "name: liver"
    path.write_text(f"- {key}: {yaml_alias_bomb(levels)}\n  {other}\n", encoding="utf-8")
    return path
