"""`segvol download`: resumable fetch, checksums, safe extraction, license gate, manual datasets.

Everything runs against a loopback HTTP server started here (Range support, a mode that cuts
the connection mid-file, request counting); no external network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from segvol.download.extract import Limits, extract_archive
from segvol.download.fetch import RemoteFile, fetch

# --------------------------------------------------------------------------- loopback server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and server.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if server.send_length:
            self.send_header("Content-Length", str(len(payload)))
        else:
            self.close_connection = True  # the body ends where the connection does (HTTP/1.0 style)
        self.end_headers()
        if server.cuts_left > 0:
            # Announce the full length but send only part of it, then drop the connection.
            server.cuts_left -= 1
            payload = payload[: server.cut_after]
            self.close_connection = True
        server.bytes_sent += len(payload)  # counted before sending: the client may finish first
        self.wfile.write(payload)


def loopback_server():
    """The loopback server, as a generator for the `server` fixtures of the test_download_* files."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    httpd.cuts_left, httpd.cut_after, httpd.bytes_sent, httpd.honour_range = 0, 0, 0, True
    httpd.send_length = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server():
    yield from loopback_server()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _loopback_file(url, filename, sha256=None, size=None) -> RemoteFile:
    """The loopback server speaks plain http: these sources opt in, as a registry entry would."""
    return RemoteFile(url, filename, sha256, size, allow_http=True)


FAST = {"retries": 3, "backoff_s": 0.0, "timeout_s": 5.0, "progress": False}

# --------------------------------------------------------------------------- fetch


def test_resume_after_cut_connection(server, tmp_path):
    data = os.urandom(300_000)
    server.files["/a.bin"] = data
    server.cuts_left, server.cut_after = 1, 100_000
    path = fetch(_loopback_file(f"{server.url}/a.bin", "a.bin", _sha(data), len(data)), tmp_path, **FAST)
    assert path.read_bytes() == data
    assert len(server.requests) == 2
    assert server.requests[1][1] == "bytes=100000-"  # the second request resumed
    assert server.bytes_sent < 2 * len(data) and server.bytes_sent == len(data)
    assert not (tmp_path / "a.bin.partial").exists()


def test_resume_existing_partial_file(server, tmp_path):
    data = os.urandom(50_000)
    server.files["/b.bin"] = data
    (tmp_path / "b.bin.partial").write_bytes(data[:20_000])
    fetch(_loopback_file(f"{server.url}/b.bin", "b.bin", _sha(data), len(data)), tmp_path, **FAST)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert server.bytes_sent == 30_000


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = os.urandom(40_000)
    server.files["/c.bin"] = data
    server.honour_range = False
    (tmp_path / "c.bin.partial").write_bytes(b"x" * 10_000)
    fetch(_loopback_file(f"{server.url}/c.bin", "c.bin", _sha(data), len(data)), tmp_path, **FAST)
    assert (tmp_path / "c.bin").read_bytes() == data


def test_wrong_checksum_leaves_no_output(server, tmp_path):
    data = b"abc" * 1000
    server.files["/d.bin"] = data
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(_loopback_file(f"{server.url}/d.bin", "d.bin", _sha(b"other"), len(data)), tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_truncated_upstream_file_is_refused(server, tmp_path):
    data = os.urandom(10_000)
    server.files["/e.bin"] = data[:6_000]
    with pytest.raises(ValueError, match="registry expects 10000"):
        fetch(_loopback_file(f"{server.url}/e.bin", "e.bin", _sha(data), len(data)), tmp_path, **FAST)
    assert not (tmp_path / "e.bin").exists()


def test_retries_are_bounded(server, tmp_path):
    slept = []
    server.files["/f.bin"] = os.urandom(5_000)
    server.cuts_left, server.cut_after = 100, 0  # every response is cut before any byte
    with pytest.raises(RuntimeError, match="giving up after 3 retries"):
        fetch(
            _loopback_file(f"{server.url}/f.bin", "f.bin", None, 5_000),
            tmp_path,
            **{**FAST, "backoff_s": 1.0},
            sleep=slept.append,
        )
    assert len(server.requests) == 4
    assert slept == [1.0, 2.0, 4.0]  # exponential backoff
    assert not (tmp_path / "f.bin").exists()


def test_http_404_names_the_url(server, tmp_path):
    with pytest.raises(ValueError, match="missing.bin: HTTP 404"):
        fetch(_loopback_file(f"{server.url}/missing.bin", "missing.bin"), tmp_path, **FAST)
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- extraction


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _tar(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        add(bundle)
    return path


def _tar_file(bundle, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    bundle.addfile(info, io.BytesIO(data))


def _tar_link(bundle, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    bundle.addfile(info)


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "ok/../../evil", "C:/evil"])
def test_zip_path_traversal_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"fine.txt": b"1", name: b"2"}))
    with pytest.raises(ValueError, match="refused"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


@pytest.mark.parametrize(
    "member",
    [
        lambda b: _tar_file(b, "../escape.txt"),
        lambda b: _tar_file(b, "/abs.txt"),
        lambda b: _tar_link(b, "data/link", "../../outside"),
        lambda b: _tar_link(b, "data/link", "/etc/passwd"),
        lambda b: _tar_link(b, "data/hard", "../outside", tarfile.LNKTYPE),
    ],
)
def test_tar_traversal_and_escaping_links_refused(tmp_path, member):
    archive = _tar(tmp_path / "bad.tar.gz", lambda b: (_tar_file(b, "data/ok.txt"), member(b)))
    with pytest.raises(ValueError, match="refused|escapes"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_internal_link_and_limits(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz", lambda b: (_tar_file(b, "d/a.txt", b"hello"), _tar_link(b, "d/b.txt", "a.txt"))
    )
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "d" / "b.txt").read_bytes() == b"hello"
    with pytest.raises(ValueError, match="exceed the limit"):
        extract_archive(archive, tmp_path / "out2", Limits(max_members=10, max_total_bytes=4))
    with pytest.raises(ValueError, match="members exceed"):
        extract_archive(archive, tmp_path / "out3", Limits(max_members=1))
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="broken.zip: corrupt archive"):
        extract_archive(archive, tmp_path / "out")


# --------------------------------------------------------------------------- CLI end to end


def _nifti_bytes(array: np.ndarray) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0]))
    return image.to_bytes()


def _msd_zip(n_cases=2) -> bytes:
    rng = np.random.default_rng(0)
    members = {}
    for i in range(n_cases):
        members[f"Task09_Spleen/imagesTr/spleen_{i}.nii.gz"] = _nifti_bytes(
            rng.normal(size=(6, 5, 4)).astype(np.float32)
        )
        members[f"Task09_Spleen/labelsTr/spleen_{i}.nii.gz"] = _nifti_bytes(
            (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
        )
    members["Task09_Spleen/imagesTr/._spleen_0.nii.gz"] = b"macOS resource fork"
    members["Task09_Spleen/dataset.json"] = json.dumps({"labels": {"0": "background", "1": "spleen"}}).encode()
    return _zip_bytes(members)


def _registry(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def _entry(url, sha=None, size=None, accept=False, **layout):
    return {
        "role": "train",
        "modality": "CT",
        "license": {"name": "test", "url": "https://example.org/terms", "acceptance_required": accept},
        "source": {
            "kind": "url",
            "verified": sha is not None,
            "allow_http": True,
            "files": [{"url": url, "sha256": sha, "size": size}],
        },
        "layout": layout
        or {
            "kind": "paired",
            "image": "Task09_Spleen/imagesTr/{case}.nii.gz",
            "label": "Task09_Spleen/labelsTr/{case}.nii.gz",
            "labels_from": "Task09_Spleen/dataset.json",
        },
        "labels": None,
    }


def _cli(*argv) -> int:
    """`segvol download ...` without importing every other subcommand (segvol.cli's exit codes)."""
    import argparse
    import sys

    from segvol.download import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--quiet", *map(str, argv)])
    try:
        return cli.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"segvol download: error: {error}", file=sys.stderr)
        return 2


def test_cli_msd_archive_to_raw_contract(server, tmp_path, capsys):
    data = _msd_zip()
    server.files["/Task09_Spleen.zip"] = data
    registry = _registry(tmp_path, {"Spleen": _entry(f"{server.url}/Task09_Spleen.zip", _sha(data), len(data))})
    out = tmp_path / "raw" / "Spleen"
    rc = _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl")
    assert rc == 0, capsys.readouterr().err
    document = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert document["categories"] == {"spleen": [1]}
    assert [c["id"] for c in document["cases"]] == ["spleen_0", "spleen_1"]
    for case in document["cases"]:
        assert (out / case["image"]).is_file() and (out / case["label"]).is_file()
    assert (tmp_path / "dl" / "Spleen" / "Task09_Spleen.zip").read_bytes() == data
    # A second run reuses the verified archive: no new request.
    before = len(server.requests)
    assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 0
    assert len(server.requests) == before


def test_cli_wrong_checksum_leaves_no_output(server, tmp_path, capsys):
    data = _msd_zip(1)
    server.files["/t.zip"] = data
    registry = _registry(tmp_path, {"Spleen": _entry(f"{server.url}/t.zip", _sha(b"nope"), len(data))})
    out = tmp_path / "raw" / "Spleen"
    assert _cli("--dataset", "Spleen", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []
    assert list((tmp_path / "dl" / "Spleen").iterdir()) == []


def test_license_gate_fails_before_any_request(server, tmp_path, capsys):
    server.files["/gated.zip"] = _msd_zip(1)
    registry = _registry(tmp_path, {"Gated": _entry(f"{server.url}/gated.zip", accept=True)})
    out = tmp_path / "raw" / "Gated"
    assert _cli("--dataset", "Gated", "--registry", registry, "--out", out, "--downloads", tmp_path / "dl") == 2
    err = capsys.readouterr().err
    assert "Gated" in err and "https://example.org/terms" in err and "accept_license" in err
    assert server.requests == []
    assert not out.exists()
    params = json.dumps({"accept_license": ["Gated"]})
    assert (
        _cli(
            "--dataset",
            "Gated",
            "--registry",
            registry,
            "--out",
            out,
            "--downloads",
            tmp_path / "dl",
            "--params",
            params,
        )
        == 0
    )
    assert len(server.requests) == 1


def test_manual_dataset_instructions_then_success(tmp_path, capsys):
    entry = _entry("https://unused.invalid/x.zip")
    entry["source"] = {
        "kind": "manual",
        "verified": False,
        "register_url": "https://example.org/register",
        "expected_files": ["train.zip"],
    }
    entry["layout"] = {"kind": "paired", "image": "train/{case}/{case}.nii.gz", "label": "train/{case}/GT.nii.gz"}
    entry["labels"] = {"1": "esophagus", "2": "heart"}
    registry = _registry(tmp_path, {"SegTHOR": entry})
    manual = tmp_path / "manual"
    params = json.dumps({"manual_dir": str(manual)})
    out = tmp_path / "raw" / "SegTHOR"
    assert _cli("--dataset", "SegTHOR", "--registry", registry, "--out", out, "--params", params) == 2
    err = capsys.readouterr().err
    assert "https://example.org/register" in err and "train.zip" in err and str(manual / "SegTHOR") in err
    assert not out.exists()

    rng = np.random.default_rng(1)
    (manual / "SegTHOR").mkdir(parents=True)
    (manual / "SegTHOR" / "train.zip").write_bytes(
        _zip_bytes(
            {
                "train/Patient_01/Patient_01.nii.gz": _nifti_bytes(rng.normal(size=(4, 4, 3)).astype(np.float32)),
                "train/Patient_01/GT.nii.gz": _nifti_bytes(rng.integers(0, 3, (4, 4, 3)).astype(np.uint8)),
            }
        )
    )
    assert _cli("--dataset", "SegTHOR", "--registry", registry, "--out", out, "--params", params) == 0
    document = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert document["categories"] == {"esophagus": [1], "heart": [2]}
    assert document["cases"] == [
        {"id": "Patient_01", "image": "train/Patient_01/Patient_01.nii.gz", "label": "train/Patient_01/GT.nii.gz"}
    ]


def test_unlabelled_manifest_shards(tmp_path, server):
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    lines = []
    for i in range(5):
        (volumes / f"ct{i}.nii.gz").write_bytes(_nifti_bytes(np.full((3, 3, 3), i, np.float32)))
        lines.append(f"../../volumes/ct{i}.nii.gz")
    remote = _nifti_bytes(np.ones((3, 3, 3), np.float32))
    server.files["/remote.nii.gz"] = remote
    lines[4] = f"{server.url}/remote.nii.gz {_sha(remote)}"
    manual = tmp_path / "manual" / "Cap"
    manual.mkdir(parents=True)
    (manual / "manifest.txt").write_text("# comment\n" + "\n".join(lines) + "\n")
    entry = {
        "role": "unlabelled",
        "modality": "CT",
        "license": {"name": "test", "acceptance_required": False},
        "source": {"kind": "manifest", "verified": False, "manifest": "manifest.txt", "allow_http": True},
        "layout": {"kind": "volumes"},
        "labels": None,
        "n_cases": 5,
    }
    registry = _registry(tmp_path, {"Cap": entry})
    params = json.dumps({"manual_dir": str(tmp_path / "manual"), "unlabelled_shard_size": 2})
    from segvol.download.registry import load_registry, shard_names

    assert shard_names("Cap", load_registry(registry)["Cap"], 2) == ["Cap.shard0000", "Cap.shard0001", "Cap.shard0002"]
    seen = []
    for shard in ("Cap.shard0000", "Cap.shard0001", "Cap.shard0002"):
        out = tmp_path / "raw" / shard
        assert (
            _cli(
                "--dataset",
                shard,
                "--registry",
                registry,
                "--out",
                out,
                "--params",
                params,
                "--downloads",
                tmp_path / "dl",
            )
            == 0
        )
        document = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        assert document["role"] == "unlabelled" and document["name"] == shard
        assert all(case["label"] is None for case in document["cases"])
        seen += [(out / case["image"]).read_bytes() for case in document["cases"]]
    expected = [(volumes / f"ct{i}.nii.gz").read_bytes() for i in range(4)] + [remote]
    assert seen == expected
    # A shard outside the plan is an error, and so is a manifest of the wrong length.
    assert _cli("--dataset", "Cap.shard0003", "--registry", registry, "--out", tmp_path / "x", "--params", params) == 2
    (manual / "manifest.txt").write_text("\n".join(lines[:4]) + "\n")
    assert _cli("--dataset", "Cap.shard0000", "--registry", registry, "--out", tmp_path / "y", "--params", params) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_per_structure_masks_merge_into_one_label_map(tmp_path):
    import nibabel as nib

    from segvol.download.layouts import describe

    rng = np.random.default_rng(3)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    liver = rng.random((5, 4, 3)) > 0.6
    spleen = (rng.random((5, 4, 3)) > 0.7) & ~liver
    case = tmp_path / "s0001"
    (case / "segmentations").mkdir(parents=True)
    nib.save(nib.Nifti1Image(rng.normal(size=(5, 4, 3)).astype(np.float32), affine), case / "ct.nii.gz")
    nib.save(nib.Nifti1Image(liver.astype(np.uint8), affine), case / "segmentations" / "liver.nii.gz")
    nib.save(nib.Nifti1Image(spleen.astype(np.uint8), affine), case / "segmentations" / "spleen.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.uint8), affine), case / "segmentations" / "kidney_left.nii.gz")
    entry = {
        "role": "train",
        "modality": "CT",
        "labels": {"1": "spleen"},
        "layout": {"kind": "per_structure", "image": "{case}/ct.nii.gz", "masks": "{case}/segmentations"},
    }
    document = describe(tmp_path, "TS", entry)
    # Registered names keep their value; the others follow in sorted order.
    assert document["categories"] == {"spleen": [1], "kidney left": [2], "liver": [3]}
    merged = nib.load(tmp_path / document["cases"][0]["label"])
    np.testing.assert_array_equal(np.asarray(merged.dataobj), liver * 3 + spleen * 1)
    np.testing.assert_allclose(merged.affine, affine)


def write_dicom_series(folder, volume, spacing=(0.8, 0.7, 3.0), reverse_names=True):
    """A DICOM series of (Z, Y, X) int16 slices; file names run against the slice order on purpose."""
    import locale

    import SimpleITK as sitk

    # GDCM's writer switches the process to the C locale; later text reads would turn ASCII-only.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(sitk, folder, volume, spacing, reverse_names)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(sitk, folder, volume, spacing, reverse_names):
    folder.mkdir(parents=True)
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    names = []
    for k in range(volume.shape[0]):
        slice_image = sitk.GetImageFromArray(volume[k : k + 1].astype(np.int16))
        slice_image.SetSpacing(spacing)
        slice_image.SetOrigin((10.0, -20.0, 5.0 + k * spacing[2]))
        for tag, value in {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0032": f"10\\-20\\{5.0 + k * spacing[2]}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0018|0050": str(spacing[2]),
        }.items():
            slice_image.SetMetaData(tag, value)
        number = volume.shape[0] - k if reverse_names else k + 1
        name = f"IMG-0002-{number:05d}.dcm"
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / name))
        writer.Execute(slice_image)
        names.append(name)
    return names


def test_chaos_png_slices_become_a_label_map_on_the_dicom_grid(tmp_path):
    """CHAOS ships one PNG per DICOM slice (same stem, organ = grey level); they are stacked by the
    series' slice order, not by file name, and written on the series' grid."""
    import SimpleITK as sitk
    from PIL import Image

    from segvol.download.layouts import describe
    from segvol.io.image import read_image, read_label

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 1000, size=(4, 12, 16))
    truth = np.zeros(volume.shape, np.uint8)
    truth[0, 2:5, 3:9] = 1  # liver in the first slice only
    truth[2, 6:10, 10:14] = 4  # spleen in the third
    truth[3, 1:3, 1:3] = 2
    case = tmp_path / "Train_Sets" / "MR" / "5" / "T2SPIR"
    names = write_dicom_series(case / "DICOM_anon", volume)
    (case / "Ground").mkdir()
    grey = {0: 0, 1: 63, 2: 126, 3: 189, 4: 252}
    for k, name in enumerate(names):
        Image.fromarray(np.vectorize(grey.get)(truth[k]).astype(np.uint8)).save(case / "Ground" / f"{name[:-4]}.png")
    entry = {
        "role": "external",
        "modality": "MR",
        "labels": {"1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"},
        "layout": {
            "kind": "dicom",
            "image": "Train_Sets/MR/{case}/T2SPIR",
            "label_slices": "Train_Sets/MR/{case}/T2SPIR/Ground",
            "label_ranges": {"1": [55, 70], "2": [110, 135], "3": [175, 200], "4": [240, 255]},
        },
    }
    document = describe(tmp_path, "CHAOS-MR", entry)
    assert document["categories"]["spleen"] == [4] and document["cases"][0]["id"] == "5"
    label_path = tmp_path / document["cases"][0]["label"]
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(case / "DICOM_anon")))
    label = sitk.ReadImage(str(label_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), truth)
    np.testing.assert_allclose(label.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label.GetSpacing(), series.GetSpacing(), atol=1e-4)
    # The reader of the normalize stage accepts the pair: same grid in physical space.
    image = read_image(tmp_path / document["cases"][0]["image"])
    assert read_label(label_path, image).array.shape == image.array.shape

    (case / "Ground" / f"{names[1][:-4]}.png").unlink()
    with pytest.raises(ValueError, match=r"Ground: no label image for 1 DICOM file.*IMG-0002-00003.dcm"):
        describe(tmp_path, "CHAOS-MR", entry)
