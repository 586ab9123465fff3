"""M3D-Seg release files (the SegVol training format): `image.npy` and `mask_(C, X, Y, Z).npz`.

Layout of one dataset code (`0000` ... `0024`)::

    <code>/<code>.json                  labels {"0": "background", "1": name, ...}, train/test lists
    <code>/<case>/image.npy             float (1, X, Y, Z), foreground-normalized intensities
    <code>/<case>/mask_(C, X, Y, Z).npz scipy sparse matrix (C, X*Y*Z); channel c <-> label c+1

Missing geometry: the release stores bare arrays. There is no affine, no spacing and no
orientation, so the readers return an identity affine (1 mm voxels, array axes taken as RAS).
Downstream, canonical reorientation is then a no-op and the (X, Y, Z) -> (Z, Y, X) axis reversal
matches SegVol's own `DimTranspose`. Physical measures (NSD in mm, volumes) on these cases are
in voxel units. The intensities are already foreground-normalized (docs/method.md#intensity-normalization), not HU.

Masks are loaded without pickle (`allow_pickle=False`): the `.npz` holds plain CSR arrays.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

MASK_NAME = re.compile(r"^mask_\((?P<shape>[0-9,\s]+)\)\.npz$")
IDENTITY = np.eye(4)


def mask_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Dense `(C, X, Y, Z)` shape encoded in a mask file name."""
    match = MASK_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: not an M3D-Seg mask name (expected 'mask_(C, X, Y, Z).npz')")
    shape = tuple(int(v) for v in match["shape"].split(",") if v.strip())
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"{path}: mask shape {shape} in the file name is not (C, X, Y, Z)")
    from segvol.io.headers import check_voxel_count

    check_voxel_count(path, shape[1:], what="its name")  # the dense label map is allocated from it
    return shape


def mask_file_name(shape: tuple[int, int, int, int]) -> str:
    """The file name the release uses for a mask of dense shape (C, X, Y, Z)."""
    return "mask_(" + ", ".join(str(int(v)) for v in shape) + ").npz"


def read_m3d_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`image.npy` -> (float32 array (X, Y, Z), identity affine 4x4)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: M3D-Seg image not found")
    from segvol.io.headers import check_npy

    check_npy(path)  # the header's shape against the file size, before numpy allocates it
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numpy array: {error}") from None
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected an image of shape (1, X, Y, Z) or (X, Y, Z), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: image dtype {array.dtype} is not numeric")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: image contains NaN or infinite values")
    return array, IDENTITY.copy()


def _load_csr(path: Path, shape: tuple[int, ...]):
    import scipy.sparse

    try:
        matrix = scipy.sparse.load_npz(path)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{path}: not a scipy sparse .npz: {error}") from None
    channels, x, y, z = shape
    if matrix.shape != (channels, x * y * z):
        raise ValueError(f"{path}: sparse matrix {matrix.shape} does not match the name's shape {shape}")
    return matrix.tocsr()


def read_m3d_channels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`mask_(C, X, Y, Z).npz` -> (uint8 binary stack (C, X, Y, Z), identity affine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: M3D-Seg mask not found")
    shape = mask_shape(path)
    matrix = _load_csr(path, shape)
    dense = (matrix.toarray() != 0).astype(np.uint8)
    return dense.reshape(shape), IDENTITY.copy()


def read_m3d_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`mask_(C, X, Y, Z).npz` -> (integer label map (X, Y, Z), identity affine).

    Channel c becomes label value c + 1 (0 = background), the raw-dataset contract's label map.
    Overlapping channels cannot be one label map: that raises ValueError naming the channels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: M3D-Seg mask not found")
    shape = mask_shape(path)
    matrix = _load_csr(path, shape)
    binary = (matrix != 0).astype(np.uint8).tocsc()
    per_voxel = np.asarray(binary.sum(axis=0)).ravel()
    if per_voxel.max(initial=0) > 1:
        voxel = int(np.argmax(per_voxel > 1))
        both = binary[:, voxel].nonzero()[0].tolist()
        raise ValueError(
            f"{path}: channels {both} overlap (at flat voxel {voxel}); an M3D-Seg mask with "
            f"overlapping channels cannot become one label map"
        )
    coo = binary.tocoo()
    dtype = np.uint8 if shape[0] < 255 else np.uint16
    labels = np.zeros(shape[1] * shape[2] * shape[3], dtype=dtype)
    labels[coo.col] = (coo.row + 1).astype(dtype)
    return labels.reshape(shape[1:]), IDENTITY.copy()


def write_m3d_case(folder: str | os.PathLike, image: np.ndarray, channels: np.ndarray) -> tuple[Path, Path]:
    """Write one case in the release format (used by tests and fixtures); returns the two paths."""
    import scipy.sparse

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[None]
    channels = np.asarray(channels)
    if channels.ndim != 4 or channels.shape[1:] != image.shape[1:]:
        raise ValueError(f"{folder}: mask {channels.shape} does not match image {image.shape}")
    image_path = folder / "image.npy"
    np.save(image_path, image)
    mask_path = folder / mask_file_name(channels.shape)
    sparse = scipy.sparse.csr_matrix((channels != 0).reshape(channels.shape[0], -1).astype(np.uint8))
    scipy.sparse.save_npz(mask_path, sparse)
    return image_path, mask_path
