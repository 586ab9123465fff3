"""Image headers are untrusted: detached data never leaves the header's folder, claimed sizes are checked
against the files before anything is allocated (segvol.io.headers, used by every reader of segvol.io)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from segvol.io import read_image
from tests import hostile_files as hostile

REPO = Path(__file__).resolve().parents[1]
SHAPE = (4, 5, 6)  # ITK order: x fastest


@pytest.fixture
def secret(tmp_path) -> Path:
    """A secret text file outside the folder the images are in."""
    path = tmp_path / "secret.txt"
    path.write_text(hostile.SECRET)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def no_library_reads(monkeypatch):
    """Fail if SimpleITK or nibabel is asked to open anything: the header check comes first."""
    import nibabel
    import SimpleITK as sitk

    def refuse(*_, **__):
        raise AssertionError("a library opened the file before its header was checked")

    for name in ("ReadImage", "ImageFileReader", "ImageSeriesReader"):
        monkeypatch.setattr(sitk, name, refuse)
    monkeypatch.setattr(nibabel, "load", refuse)


def one_line_error(path, error: Exception) -> str:
    message = str(error)
    assert "\n" not in message and str(path) in message, message
    assert "TOP-SECRET" not in message
    return message


# ----------------------------------------------------------------------------- detached data


def outside_headers(root: Path, secret: Path) -> dict[str, Path]:
    """Headers inside `root` whose data files are the secret outside it, every way the formats allow."""
    (root / "link.raw").symlink_to(secret)
    (root / "inside.raw").write_bytes(hostile.voxels(SHAPE))
    small = {"shape": (32, 32, 2), "element_type": "MET_UCHAR"}
    return {
        "mhd absolute": hostile.metaimage(root / "abs.mhd", str(secret), **small),
        "mhd ../": hostile.metaimage(root / "up.mhd", "../secret.txt", **small),
        "mhd folder/../../": hostile.metaimage(root / "deep.mhd", "sub/../../secret.txt", **small),
        "mhd symlink": hostile.metaimage(root / "link.mhd", "link.raw", **small),
        "mhd /dev/zero": hostile.metaimage(root / "zero.mhd", "/dev/zero", shape=(64, 64, 64)),
        "mha /dev/zero": hostile.metaimage(root / "zero.mha", "/dev/zero", shape=(64, 64, 64)),
        "mhd colon separator": _colon_separated(hostile.metaimage(root / "colon.mhd", str(secret), **small)),
        "mhd LIST": hostile.metaimage(
            root / "list.mhd", "LIST 2D\ninside.raw\n../secret.txt", shape=(32, 32, 2), element_type="MET_UCHAR"
        ),
        "mhd pattern": hostile.metaimage(root / "pattern.mhd", "../secret%d.txt 1 2 1", **small),
        "nhdr absolute": hostile.nrrd(root / "abs.nhdr", str(secret), shape=(32, 32, 2), type_name="uchar"),
        "nhdr ../": hostile.nrrd(root / "up.nhdr", "../secret.txt", shape=(32, 32, 2), type_name="uchar"),
        "nhdr symlink": hostile.nrrd(root / "link.nhdr", "link.raw", shape=(32, 32, 2), type_name="uchar"),
        "nhdr /dev/zero": hostile.nrrd(root / "zero.nhdr", "/dev/zero", shape=(64, 64, 64)),
        "nhdr LIST": hostile.nrrd(
            root / "list.nhdr", "LIST\ninside.raw\n../secret.txt", shape=(32, 32, 2), type_name="uchar"
        ),
        "nhdr pattern": hostile.nrrd(
            root / "pattern.nhdr", "../secret%d.txt 1 2 1 2", shape=(32, 32, 2), type_name="uchar"
        ),
        "nrrd with a data file": hostile.nrrd(
            root / "attached.nrrd", "../secret.txt", shape=(32, 32, 2), type_name="uchar"
        ),
    }


def _colon_separated(header: Path) -> Path:
    """MetaIO also reads 'Key : value' lines."""
    header.write_text(header.read_text().replace(" = ", " : "))
    return header


def test_detached_data_outside_the_header_folder_is_refused_before_itk_opens_it(root, secret, no_library_reads):
    for case, header in outside_headers(root, secret).items():
        with pytest.raises(ValueError) as caught:
            read_image(header)
        message = one_line_error(header, caught.value)
        assert any(
            word in message
            for word in ("absolute path", "leaves the header's folder", "leads out of", "not a regular file")
        ), (case, message)


def test_the_audit_case_secret_text_is_not_readable_through_any_header(root, secret):
    """Without the check ITK reads the secret as voxels (the audit recovered it from /api/slice PNGs)."""
    text = np.frombuffer(secret.read_bytes()[: 32 * 32 * 2], np.uint8)
    for case, header in outside_headers(root, secret).items():
        try:
            image = read_image(header)
        except ValueError:
            continue
        assert not np.array_equal(np.sort(image.array.ravel()), np.sort(text)), f"{case}: the secret was read"


def test_detached_data_next_to_the_header_is_read(root):
    expected = np.sort(np.frombuffer(hostile.voxels(SHAPE), "<i2"))
    (root / "data.raw").write_bytes(hostile.voxels(SHAPE))
    (root / "sub").mkdir()
    (root / "sub" / "data.raw").write_bytes(hostile.voxels(SHAPE))
    pieces = np.frombuffer(hostile.voxels(SHAPE), "<i2").reshape(SHAPE[::-1])  # (z, y, x)
    for index, piece in enumerate(pieces):
        (root / f"slice{index + 1}.raw").write_bytes(piece.tobytes())
    (root / "data.raw.gz").write_bytes(gzip.compress(hostile.voxels(SHAPE)))
    slices = "\n".join(f"slice{i + 1}.raw" for i in range(SHAPE[2]))
    headers = [
        hostile.metaimage(root / "plain.mhd", "data.raw"),
        hostile.metaimage(root / "sub.mhd", "sub/data.raw"),
        hostile.metaimage(root / "local.mha", "LOCAL", payload=hostile.voxels(SHAPE)),
        hostile.metaimage(root / "list.mhd", "LIST 2D\n" + slices),
        hostile.metaimage(root / "pattern.mhd", f"slice%d.raw 1 {SHAPE[2]} 1"),
        hostile.nrrd(root / "plain.nhdr", "data.raw"),
        hostile.nrrd(root / "gzip.nhdr", "data.raw.gz", encoding="gzip"),
        hostile.nrrd(root / "list.nhdr", "LIST\n" + slices),
        hostile.nrrd(root / "pattern.nhdr", f"slice%d.raw 1 {SHAPE[2]} 1 2"),
        hostile.nrrd(root / "attached.nrrd", None, payload=hostile.voxels(SHAPE)),
        hostile.nrrd(root / "attached-gz.nrrd", None, encoding="gzip", payload=gzip.compress(hostile.voxels(SHAPE))),
    ]
    for header in headers:
        image = read_image(header)
        assert image.shape == SHAPE[::-1], header
        assert np.array_equal(np.sort(image.array.ravel()), expected), header


def test_files_simpleitk_and_nibabel_write_are_read_unchanged(tmp_path):
    """No false alarms: compressed and uncompressed files as the libraries write them."""
    import nibabel as nib
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)
    volume[:3] = 0  # compressible part
    image = sitk.GetImageFromArray(volume)
    for name, compress in [
        ("a.mha", False),
        ("b.mha", True),
        ("c.mhd", False),
        ("d.mhd", True),
        ("e.nrrd", False),
        ("f.nrrd", True),
        ("g.nhdr", False),
        ("h.nhdr", True),
    ]:
        sitk.WriteImage(image, str(tmp_path / name), useCompression=compress)
        assert np.array_equal(np.sort(read_image(tmp_path / name).array.ravel()), np.sort(volume.ravel())), name
    for name, dtype in [("i.nii", np.int16), ("j.nii.gz", np.int16), ("k.nii.gz", np.float64), ("l.nii", np.uint8)]:
        nib.save(nib.Nifti1Image(volume.astype(dtype), np.eye(4)), str(tmp_path / name))
        assert read_image(tmp_path / name).array.size == volume.size, name
    nib.save(nib.Nifti2Image(volume, np.eye(4)), str(tmp_path / "m.nii.gz"))
    assert read_image(tmp_path / "m.nii.gz").array.size == volume.size
    # A gzip of two members: the trailer gives only the last one's size, so the data is counted.
    raw = (tmp_path / "i.nii").read_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:-100]) + gzip.compress(raw[-100:]))
    assert np.array_equal(read_image(tmp_path / "two.nii.gz").array, read_image(tmp_path / "i.nii").array)


# ----------------------------------------------------------------------------- claimed sizes


def short_files(folder: Path) -> dict[str, Path]:
    """Files whose headers claim about 0.5-1 GB (under the voxel cap) that they do not hold."""
    big = (1000, 1000, 500)
    tiny = hostile.tiny_gzip_nifti(folder / "tiny.nii.gz")
    plain = folder / "short.nii"
    plain.write_bytes(hostile.nifti1_header(big) + b"\0" * 4096)
    nifti2 = folder / "short2.nii"
    nifti2.write_bytes(hostile.nifti2_header(big) + b"\0" * 4096)
    nifti2_gz = folder / "short2.nii.gz"
    nifti2_gz.write_bytes(gzip.compress(nifti2.read_bytes()))
    noise = np.random.default_rng(0).integers(0, 256, 2**16, dtype=np.uint8).tobytes()
    # 64 KiB of zlib/gzip data claiming 1 GB: over deflate's largest ratio; claiming 1 MiB: counted, and short
    packed = zlib.compress(noise)
    compressed = _flag(
        hostile.metaimage(
            folder / "z.mha",
            "LOCAL",
            shape=(512, 512, 2),
            extra=f"CompressedDataSize = {len(packed)}\n",
            payload=packed,
        ),
        b"CompressedData = False",
        b"CompressedData = True",
    )
    ascii_text = _flag(
        hostile.metaimage(folder / "ascii.mha", "LOCAL", shape=(64, 64, 64), payload=b"1 2 3 4"),
        b"BinaryData = True",
        b"BinaryData = False",
    )
    (folder / "short.raw").write_bytes(b"\0" * 4096)
    return {
        "nii.gz of 62 bytes": tiny,
        "nii short": plain,
        "NIfTI-2 short": nifti2,
        "NIfTI-2 .nii.gz short": nifti2_gz,
        "mha LOCAL short": hostile.metaimage(folder / "short.mha", "LOCAL", shape=big, payload=b"\0" * 4096),
        "mhd short": hostile.metaimage(folder / "short.mhd", "short.raw", shape=big),
        "mha zlib short": compressed,
        "mha ascii short": ascii_text,
        "nrrd raw short": hostile.nrrd(folder / "short.nrrd", None, shape=big, payload=b"\0" * 4096),
        "nrrd gzip short": hostile.nrrd(
            folder / "shortgz.nrrd", None, shape=big, encoding="gzip", payload=gzip.compress(b"\0" * 4096)
        ),
        "nrrd gzip counted": hostile.nrrd(
            folder / "countedgz.nrrd", None, shape=(512, 512, 2), encoding="gzip", payload=gzip.compress(noise)
        ),
        "nhdr ascii short": hostile.nrrd(folder / "text.nrrd", None, shape=big, encoding="ascii", payload=b"1 2 3"),
        "npy short": _short_npy(folder / "image.npy", big),
    }


def _flag(path: Path, old: bytes, new: bytes) -> Path:
    path.write_bytes(path.read_bytes().replace(old, new))
    return path


def _short_npy(path: Path, shape) -> Path:
    np.save(path, np.zeros((2, 2, 2), np.float32))
    data = path.read_bytes().replace(b"(2, 2, 2)", str(tuple(shape)).encode())
    path.write_bytes(data)
    return path


def test_headers_claiming_more_than_the_file_holds_are_refused_in_milliseconds(tmp_path, no_library_reads):
    for case, path in short_files(tmp_path).items():
        started = time.perf_counter()
        with pytest.raises(ValueError) as caught:
            read_image(path)
        seconds = time.perf_counter() - started
        message = one_line_error(path, caught.value)
        assert "holds" in message or "cannot hold" in message, (case, message)
        assert seconds < 1.0, (case, seconds)


CHILD = """
import json, os, resource, sys
import nibabel, SimpleITK
from segvol.io import read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = {}
for path in sys.argv[1:]:
    try:
        read_image(path)
        errors[path] = None
    except (ValueError, MemoryError) as error:
        errors[path] = type(error).__name__
print(json.dumps({"grown_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "errors": errors}))
"""


def test_lying_headers_cost_no_memory(tmp_path):
    """Peak RSS of a process that reads every lying file (each claims >= 0.5 GB; before the checks
    the 62-byte .nii.gz alone cost 0.6 GB and the forged DICOM series 5 GB)."""
    files = short_files(tmp_path)
    files["forged DICOM series"], _ = hostile.dicom_series(tmp_path / "dicom", count=3, claimed=(8192, 8192))
    files["mha /dev/zero"] = hostile.metaimage(tmp_path / "zero.mha", "/dev/zero", shape=(1000, 1000, 1000))

    def limit():  # a broken check must not take the machine down
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    result = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, files.values())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=limit,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(error == "ValueError" for error in report["errors"].values()), report
    assert report["grown_mb"] < 64, report


def test_voxel_cap_is_the_default_and_can_be_changed(tmp_path, monkeypatch):
    from segvol.io.headers import DEFAULT_MAX_VOXELS, max_voxels

    assert max_voxels() == DEFAULT_MAX_VOXELS == 2**31
    path = hostile.huge_nifti2(tmp_path / "huge.nii")
    with pytest.raises(ValueError, match="over the limit of 2,147,483,648"):
        read_image(path)
    (tmp_path / "data.raw").write_bytes(hostile.voxels(SHAPE))
    header = hostile.metaimage(tmp_path / "small.mhd", "data.raw")
    assert read_image(header).array.size == 120
    monkeypatch.setenv("SEGVOL_MAX_VOXELS", "100")
    with pytest.raises(ValueError, match="120 voxels, over the limit of 100 .*SEGVOL_MAX_VOXELS"):
        read_image(header)
    monkeypatch.setenv("SEGVOL_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="SEGVOL_MAX_VOXELS='lots'"):
        read_image(header)


def test_dicom_series_claiming_more_pixels_than_its_files_hold_is_refused(tmp_path, no_library_reads, monkeypatch):
    import SimpleITK as sitk

    forged, _ = hostile.dicom_series(tmp_path / "forged", count=3, claimed=(8192, 8192))
    monkeypatch.undo()  # the series is found with GDCM (headers only); the check comes before the read
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda *_: pytest.fail("ITK read the forged series"))
    with pytest.raises(ValueError) as caught:
        read_image(forged)
    assert "8192x8192x1 pixels" in one_line_error(forged, caught.value)


def test_dicom_series_of_mixed_slice_sizes_is_refused_and_a_true_one_is_read(tmp_path):
    folder, volume = hostile.dicom_series(tmp_path / "true", count=4, rows=6, columns=7)
    image = read_image(folder)
    assert image.shape == volume.shape and np.array_equal(np.sort(image.array.ravel()), np.sort(volume.ravel()))
    mixed, _ = hostile.dicom_series(tmp_path / "mixed", count=3, rows=6, columns=7)
    import pydicom

    other = mixed / "slice001.dcm"
    dataset = pydicom.dcmread(other)
    dataset.Rows, dataset.Columns = 7, 6  # same pixel bytes, another grid
    dataset.save_as(other)
    with pytest.raises(ValueError, match="slices of one volume must have one size"):
        read_image(mixed)


# ----------------------------------------------------------------------------- segvol serve


def upload(workspace, name: str, data: bytes) -> dict:
    """What `POST /api/upload` does: the body alone in a fresh temporary folder, opened from there."""
    folder = Path(tempfile.mkdtemp(prefix="segvol-upload-"))
    try:
        (folder / name).write_bytes(data)
        return workspace.open(folder / name)
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def test_serve_workspace_refuses_detached_headers_that_leave_their_folder(root, secret):
    from segvol.serve.workspace import Workspace

    workspace = Workspace(model=None, root=root)
    for case, header in outside_headers(root, secret).items():
        relative = header.relative_to(root).as_posix()
        with pytest.raises(ValueError) as caught:
            workspace.open(workspace.inside_root(relative))
        assert "TOP-SECRET" not in str(caught.value), case
        assert workspace.describe() == {"open": False}, case
    # an upload is one file alone in a temporary folder: it cannot bring its detached data along
    (root / "sub").mkdir()
    for name, data in [
        (
            "evil.mha",
            hostile.metaimage(
                root / "sub" / "u.mha", str(secret), shape=(32, 32, 2), element_type="MET_UCHAR"
            ).read_bytes(),
        ),
        (
            "evil.nrrd",
            hostile.nrrd(
                root / "sub" / "u.nrrd", "../../secret.txt", shape=(32, 32, 2), type_name="uchar"
            ).read_bytes(),
        ),
        ("evil.mha", hostile.metaimage(root / "sub" / "z.mha", "/dev/zero", shape=(64, 64, 64)).read_bytes()),
    ]:
        with pytest.raises(ValueError) as caught:
            upload(workspace, name, data)
        assert "TOP-SECRET" not in str(caught.value)
        assert workspace.describe() == {"open": False}


def test_serve_workspace_refuses_a_63_byte_upload_claiming_600_mb(tmp_path):
    from segvol.serve.workspace import Workspace

    workspace = Workspace(model=None, root=tmp_path)
    data = hostile.tiny_gzip_nifti(tmp_path / "tiny.nii.gz").read_bytes()
    assert len(data) < 100
    with pytest.raises(ValueError, match="cannot hold more than"):
        upload(workspace, "upload.nii.gz", data)
