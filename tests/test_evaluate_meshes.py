"""`segvol evaluate meshes`: the 3-D rendering of one predicted case, its STL files in world space, its picture."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import segvol.infer
from segvol.cli import main
from segvol.evaluate import methods as methods_module
from segvol.io.mesh import read_stl
from tests.test_evaluate import Prompt, ball, box_segment

SHAPE = (14, 20, 18)  # canonical (D, H, W)
CATEGORIES = ["liver", "spleen", "tumor"]
LIVER = (slice(2, 9), slice(3, 12), slice(4, 10))


def canonical_affine() -> np.ndarray:
    """(d, h, w) -> RAS+: mirrored (as every canonical affine is), anisotropic, turned 10 degrees, moved."""
    turn = np.radians(10.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    axes = np.array([[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])  # d -> S, h -> A, w -> R
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag([2.5, 0.8, 0.9])
    affine[:3, 3] = [-60.0, 25.5, -310.0]
    return affine


def write_store(path):
    """Three cases; case_001 is the one with all three categories present (the tumour only there)."""
    root = zarr.open_group(str(path), mode="w")
    cases = ["case_000", "case_001", "case_002"]
    for index, case in enumerate(cases):
        labels = np.zeros((len(CATEGORIES), *SHAPE), np.uint8)
        labels[0][LIVER] = 1
        labels[1] = ball(SHAPE, (7, 14 + index % 2, 13), 3)
        if case == "case_001":
            labels[2, 4:6, 6:8, 6:8] = 1
        image = (0.2 + 0.5 * labels[0] + 0.3 * labels[1]).astype(np.float32)
        group = root.create_group(case)
        group.create_array("image", data=image)
        group.create_array("labels", data=labels)
        group.attrs.update(
            {
                "spacing": [2.5, 0.8, 0.9],
                "affine": canonical_affine().tolist(),
                "categories_present": [c for c, m in zip(CATEGORIES, labels) if m.any()],
            }
        )
    root.attrs.update(
        {
            "dataset": "ext_tiny",
            "role": "external",
            "modality": "CT",
            "categories": CATEGORIES,
            "cases": cases,
            "format_version": 1,
        }
    )
    return path


@pytest.fixture
def stub_segvol(monkeypatch):
    """SegVol's stand-in predicts each prompt's box: the spleen (a ball) comes out as its bounding box."""
    monkeypatch.setattr(segvol.infer, "segment", box_segment, raising=False)
    monkeypatch.setattr(segvol.infer, "Prompt", Prompt, raising=False)
    monkeypatch.setattr(methods_module, "load_segvol", lambda checkpoint, settings=None, device=None: object())


def world(points_dhw) -> np.ndarray:
    affine = canonical_affine()
    return np.asarray(points_dhw, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def solid_centroid(triangles: np.ndarray) -> np.ndarray:
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    volumes = np.einsum("ij,ij->i", a, np.cross(b, c))
    return (volumes[:, None] * (a + b + c) / 4.0).sum(axis=0) / volumes.sum()


def test_meshes_of_the_fullest_case_in_world_space_and_a_readable_picture(tmp_path, stub_segvol):
    store = write_store(tmp_path / "ext_tiny.zarr")
    out, png = tmp_path / "meshes", tmp_path / "figures" / "meshes.png"
    assert (
        main(
            [
                "evaluate",
                "meshes",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out-dir",
                str(out),
                "--png",
                str(png),
                "--params",
                '{"prompt": "box+text"}',
                "--quiet",
            ]
        )
        == 0
    )
    folder = out / "ext_tiny_case_001"  # the case with the tumour: three categories
    assert sorted(p.name for p in out.iterdir()) == ["ext_tiny_case_001"]
    for kind in ("truth", "segvol"):
        assert sorted(p.name for p in (folder / kind).iterdir()) == ["liver.stl", "spleen.stl", "tumor.stl"]

    # The files are in LPS; back in RAS each solid's centroid is its voxels' centroid through the store's affine.
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    liver = np.zeros(SHAPE, bool)
    liver[LIVER] = True
    spleen = ball(SHAPE, (7, 15, 13), 3)
    spleen_box = np.zeros(SHAPE, bool)
    spleen_box[tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(spleen))] = True
    expected = {("truth", "liver"): liver, ("segvol", "liver"): liver, ("segvol", "spleen"): spleen_box}
    for (kind, name), mask in expected.items():
        triangles, _, header = read_stl(folder / kind / f"{name}.stl")
        assert header.endswith("SPACE=LPS")
        ras = triangles.astype(np.float64) * lps_to_ras
        np.testing.assert_allclose(solid_centroid(ras), world(np.argwhere(mask)).mean(axis=0), atol=2e-3)
        # the box's faces: half a voxel past its outer voxel centres, along every canonical axis
        index = (ras.reshape(-1, 3) - canonical_affine()[:3, 3]) @ np.linalg.inv(canonical_affine()[:3, :3]).T
        occupied = np.argwhere(mask)
        np.testing.assert_allclose(index.min(axis=0), occupied.min(axis=0) - 0.5, atol=1e-3)
        np.testing.assert_allclose(index.max(axis=0), occupied.max(axis=0) + 0.5, atol=1e-3)
    truth_spleen = read_stl(folder / "truth" / "spleen.stl")[0].astype(np.float64) * lps_to_ras
    index = (truth_spleen.reshape(-1, 3) - canonical_affine()[:3, 3]) @ np.linalg.inv(canonical_affine()[:3, :3]).T
    assert np.linalg.norm(index * [2.5, 0.8, 0.9] - np.array([7, 15, 13]) * [2.5, 0.8, 0.9], axis=1).max() < 4 * 2.5

    # The picture: a PNG with both panels drawn (the liver's blue, shaded, in the left and the right half).
    from matplotlib.image import imread

    assert png.read_bytes()[:4] == b"\x89PNG" and png.with_name("meshes.png.provenance.json").is_file()
    pixels = imread(png)[..., :3]
    bluish = (pixels[..., 2] > pixels[..., 0] + 0.25) & (pixels[..., 2] > pixels[..., 1] + 0.1)
    middle = pixels.shape[1] // 2
    assert bluish[:, :middle].sum() > 500 and bluish[:, middle:].sum() > 500


def test_a_store_without_labelled_categories_gives_a_figure_that_says_so(tmp_path, stub_segvol):
    store = write_store(tmp_path / "ext_tiny.zarr")
    root = zarr.open_group(str(store), mode="r+")
    for case in root.attrs["cases"]:
        root[case].attrs["categories_present"] = []
    out, png = tmp_path / "meshes", tmp_path / "meshes.png"
    assert (
        main(
            [
                "evaluate",
                "meshes",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out-dir",
                str(out),
                "--png",
                str(png),
                "--quiet",
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG" and out.is_dir() and not any(out.iterdir())
