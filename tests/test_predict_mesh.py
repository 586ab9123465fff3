"""`segvol predict --mesh`: one surface per category, placed on the CT in world space (the label map's own
affine, and ITK's LPS reading of the input), listed in the manifest, and guarded like every other output."""

from __future__ import annotations

import json
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from segvol.cli import main
from segvol.infer.predict import predict_file
from tests.stand_in_models import BoxModel

torch.set_num_threads(1)

SHAPE = (40, 22, 30)  # the file's (i, j, k)
BOX_A = [8, 4, 6, 25, 13, 20]  # inclusive, file voxel indices
BOX_B = [18, 9, 12, 33, 18, 26]  # overlaps A


def oblique_non_ras_affine() -> np.ndarray:
    """i -> posterior, j -> inferior, k -> left (nothing like RAS), anisotropic, turned 15 degrees, moved."""
    turn = np.radians(15.0)
    rotation = np.array([[np.cos(turn), 0, np.sin(turn)], [0, 1, 0], [-np.sin(turn), 0, np.cos(turn)]])
    axes = np.array([[0, 0, -1.0], [-1.0, 0, 0], [0, -1.0, 0]])  # columns: where i, j, k point in RAS
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag([0.9, 2.5, 1.3])
    affine[:3, 3] = [41.0, -17.5, 88.25]
    return affine


def write_ct(path) -> np.ndarray:
    rng = np.random.default_rng(3)
    hu = np.full(SHAPE, -1000, np.int16)
    hu[2:-2, 1:-1, 2:-2] = rng.integers(-100, 200, (SHAPE[0] - 4, SHAPE[1] - 2, SHAPE[2] - 4))
    nib.save(nib.Nifti1Image(hu, oblique_non_ras_affine()), str(path))
    return hu


def read_stl_independently(path):
    """Header and (F, 3, 3) triangles of a binary STL, by the format's definition (struct)."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)
    assert len(data) == 84 + 50 * count
    triangles = np.array([struct.unpack_from("<12fH", data, 84 + 50 * n)[3:12] for n in range(count)])
    return data[:80], triangles.reshape(-1, 3, 3).astype(np.float64)


def solid_centroid_and_volume(triangles: np.ndarray):
    """Centroid and signed volume of the solid a closed triangle surface bounds (tetrahedra to the origin)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    volumes = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
    return (volumes[:, None] * (a + b + c) / 4.0).sum(axis=0) / volumes.sum(), volumes.sum()


def world_centroid(mask_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask_ijk)).mean(axis=0)


def test_meshes_lie_on_the_label_map_in_world_space_and_open_aligned_in_slicer(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "ct.nii.gz"
    write_ct(path)
    out = tmp_path / "out" / "seg.nii.gz"
    records = [
        {"name": "liver", "box": BOX_A},
        {"name": "liver tumor", "box": BOX_B},
        {"name": "spleen", "text": "spleen"},
    ]  # text alone: the stand-in finds nothing
    manifest = predict_file(BoxModel((8, 32, 32)), path, out, records, mode="window", masks=True, meshes=("stl", "obj"))
    label_map = nib.load(str(out))
    labels = np.asarray(label_map.dataobj)
    folder = tmp_path / "out" / "seg_meshes"
    assert sorted(p.name for p in folder.iterdir()) == [
        "01_liver.obj",
        "01_liver.stl",
        "02_liver_tumor.obj",
        "02_liver_tumor.stl",
    ]  # no file for the empty one
    entries = manifest["meshes"]["categories"]
    assert entries["spleen"] == {"files": [], "triangles": 0, "area_mm2": 0.0, "volume_ml": 0.0}
    assert entries["liver"]["files"] == ["seg_meshes/01_liver.stl", "seg_meshes/01_liver.obj"]
    assert set(entries["liver"]["files"] + entries["liver tumor"]["files"]) <= set(manifest["outputs"])
    assert json.loads((tmp_path / "out" / "seg.json").read_text()) == manifest

    ct = sitk.ReadImage(str(path))  # ITK, as 3D Slicer reads CT files: LPS physical space
    for k, (name, box) in enumerate([("liver", BOX_A), ("liver tumor", BOX_B)]):
        stem = f"{k + 1:02d}_{name.replace(' ', '_')}"
        header, lps = read_stl_independently(folder / f"{stem}.stl")
        assert header.rstrip(b" ").endswith(b"SPACE=LPS") and not header.startswith(b"solid")
        ras = lps * [-1.0, -1.0, 1.0]
        centroid, volume = solid_centroid_and_volume(ras)
        assert volume > 0  # counter-clockwise seen from outside: normals point out

        # The surface encloses exactly this category's --masks voxels: its solid centroid is theirs, in the
        # world space of the label map's affine (a mesh off by half a voxel misses by ~0.5-1.2 mm).
        mask = np.asarray(nib.load(str(tmp_path / "out" / "seg_masks" / f"{stem}.nii.gz")).dataobj) > 0
        np.testing.assert_allclose(centroid, world_centroid(mask, label_map.affine), atol=2e-3)
        expected = np.zeros(SHAPE, bool)
        expected[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
        np.testing.assert_array_equal(mask, expected)
        if k == 0:  # where nothing overlaps it, that is the category's label-map region
            np.testing.assert_allclose(
                centroid, world_centroid(expected & ~(labels == 2) | (labels == 1), label_map.affine), atol=2e-3
            )

        # Slicer's reading: each LPS point, mapped by ITK into the CT's own index space, lies on the faces of
        # the box's outer voxels (half a voxel outside their centres), never inside the CT past them.
        index = np.array(
            [ct.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in lps.reshape(-1, 3)[::7]]
        )
        low, high = np.array(box[:3]) - 0.5, np.array(box[3:]) + 0.5
        assert (index > low - 1e-3).all() and (index < high + 1e-3).all()
        assert ((np.abs(index - low) < 1e-3) | (np.abs(index - high) < 1e-3)).any(axis=1).all()
        np.testing.assert_allclose(index.min(axis=0), low, atol=1e-3)
        np.testing.assert_allclose(index.max(axis=0), high, atol=1e-3)

        obj = (folder / f"{stem}.obj").read_text().splitlines()
        assert obj[0].startswith("#") and obj[0].endswith("SPACE=LPS")
        vertices = np.array([[float(v) for v in line.split()[1:]] for line in obj if line.startswith("v ")])
        faces = np.array([[int(v) for v in line.split()[1:]] for line in obj if line.startswith("f ")]) - 1
        np.testing.assert_allclose(vertices[faces], lps, atol=1e-3)
        assert entries[name]["triangles"] == len(lps)
        assert entries[name]["volume_ml"] == pytest.approx(volume / 1000.0, rel=1e-4)


@pytest.fixture
def stand_in_weights(monkeypatch):
    """`segvol predict` with the box stand-in instead of a checkpoint's network."""
    from segvol.infer import predict

    monkeypatch.setattr(
        predict,
        "load_model",
        lambda checkpoint, device, precision="fp32": (
            BoxModel((8, 32, 32)),
            {"checkpoint": str(checkpoint), "sha256": None},
        ),
    )


def predict_command(path, out, *extra):
    return main(
        [
            "predict",
            str(path),
            "-o",
            str(out),
            "--checkpoint",
            "stand-in",
            "--box",
            *map(str, BOX_A),
            "--mode",
            "window",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )


def test_cli_mesh_outputs_obey_continue_and_overwrite(tmp_path, capsys, stand_in_weights):
    path = tmp_path / "ct.nii.gz"
    write_ct(path)
    out = tmp_path / "seg.nii.gz"
    assert predict_command(path, out, "--mesh", "stl,obj") == 0
    stl, obj = tmp_path / "seg_meshes" / "01_prompt.stl", tmp_path / "seg_meshes" / "01_prompt.obj"
    manifest = json.loads((tmp_path / "seg.json").read_text())
    assert {"seg_meshes/01_prompt.stl", "seg_meshes/01_prompt.obj"} <= set(manifest["outputs"])
    assert manifest["meshes"]["space"].startswith("LPS")

    stamp = stl.stat().st_mtime_ns
    assert predict_command(path, out, "--mesh", "stl,obj", "--continue") == 0
    assert stl.stat().st_mtime_ns == stamp  # finished: skipped
    obj.unlink()
    assert predict_command(path, out, "--mesh", "stl,obj", "--continue") == 0
    assert obj.exists()  # a listed mesh was missing: not finished, done again

    # a file segvol did not write, where a mesh would go, is never replaced without --overwrite
    other = tmp_path / "other.nii.gz"
    (tmp_path / "other_meshes").mkdir()
    (tmp_path / "other_meshes" / "01_prompt.stl").write_bytes(b"someone's model")
    capsys.readouterr()
    assert predict_command(path, other, "--mesh", "stl") == 2
    error = capsys.readouterr().err.strip()
    assert "other_meshes/01_prompt.stl: exists and was not written by segvol predict" in error
    assert len(error.splitlines()) == 1 and not other.exists()
    assert (tmp_path / "other_meshes" / "01_prompt.stl").read_bytes() == b"someone's model"
    assert predict_command(path, other, "--mesh", "stl", "--overwrite") == 0
    assert (tmp_path / "other_meshes" / "01_prompt.stl").read_bytes()[80:84] != b""

    with pytest.raises(SystemExit) as stopped:  # argparse's own error exit
        predict_command(path, tmp_path / "third.nii.gz", "--mesh", "ply")
    assert stopped.value.code == 2
    assert "--mesh: choose stl, obj or stl,obj" in capsys.readouterr().err
