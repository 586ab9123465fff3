"""Surface meshes (segvol.io.mesh): world positions on an oblique, mirrored CT grid, closed and outward
surfaces, and STL/OBJ files that an LPS reader (3D Slicer, ITK) places on the CT."""

from __future__ import annotations

import struct

import nibabel
import numpy as np
import pytest

from segvol.io import read_image
from segvol.io.mesh import Mesh, mask_mesh, read_stl, write_category_meshes, write_obj, write_stl

SHAPE = (30, 26, 14)  # source (i, j, k)
SPACING = np.array([0.8, 2.5, 0.9])
BOX = ((8, 19), (3, 9), (4, 11))  # inclusive source-index bounds of the box mask


def source_affine() -> np.ndarray:
    """i -> left, j -> superior, k -> posterior (a left-handed grid), turned 12 degrees about z, moved."""
    turn = np.radians(12.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    axes = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # columns: where i, j, k point in RAS
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes * SPACING
    affine[:3, 3] = [-120.5, 33.25, 71.0]
    return affine


def write_ct(tmp_path, mask_ijk: np.ndarray):
    """A CT file with the source affine, read back on the canonical grid, and the mask moved onto it."""
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(ct, source_affine()), path)
    image = read_image(path)
    return path, image, image.from_original(mask_ijk)


def box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[tuple(slice(lo, hi + 1) for lo, hi in BOX)] = True
    return mask


def source_index(world_ras: np.ndarray) -> np.ndarray:
    """World RAS mm -> continuous source index, through the affine of the file (not the canonical one)."""
    inverse = np.linalg.inv(source_affine())
    return world_ras @ inverse[:3, :3].T + inverse[:3, 3]


def directed_edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def assert_closed_and_consistent(mesh: Mesh) -> None:
    """Every edge is shared by exactly two triangles that traverse it in opposite directions."""
    edges = directed_edges(mesh.faces)
    as_set = {tuple(edge) for edge in edges.tolist()}
    assert len(as_set) == len(edges), "an edge is traversed twice in the same direction"
    assert all((b, a) in as_set for a, b in as_set), "an edge has only one triangle: the surface has a hole"


def euler_characteristic(mesh: Mesh) -> int:
    undirected = {tuple(sorted(edge)) for edge in directed_edges(mesh.faces).tolist()}
    return len(mesh.vertices) - len(undirected) + len(mesh.faces)


def test_box_surface_lies_on_the_voxel_faces_in_world_space(tmp_path):
    _, image, mask = write_ct(tmp_path, box_mask())
    assert np.linalg.det(image.affine[:3, :3]) < 0 and not np.allclose(image.affine, source_affine())
    mesh = mask_mesh(mask, image.affine)
    index = source_index(mesh.vertices)
    low = np.array([lo for lo, _ in BOX]) - 0.5
    high = np.array([hi for _, hi in BOX]) + 0.5
    # The box's faces are half a voxel outside the centres of its outer voxels, along every axis.
    np.testing.assert_allclose(index.min(axis=0), low, atol=1e-6)
    np.testing.assert_allclose(index.max(axis=0), high, atol=1e-6)
    on_a_face = (np.abs(index - low) < 1e-6) | (np.abs(index - high) < 1e-6)
    assert on_a_face.any(axis=1).all()
    assert (index > low - 1e-6).all() and (index < high + 1e-6).all()

    assert_closed_and_consistent(mesh)
    assert euler_characteristic(mesh) == 2
    # Outward: the box is convex, so every triangle faces away from its centre.
    centre = ((low + high) / 2) @ source_affine()[:3, :3].T + source_affine()[:3, 3]
    facing = np.einsum("ij,ij->i", mesh.normals(), mesh.triangles.mean(axis=1) - centre)
    assert (facing > 0).all()
    box_volume = np.prod(high - low) * np.prod(SPACING)
    assert 0.85 * box_volume < mesh.volume() < box_volume  # marching cubes cuts the box's edges and corners


def test_sphere_in_world_space_is_one_closed_outward_surface(tmp_path):
    # centred off the voxel centres, inside the scan
    centre, radius = np.array([14.3, 12.6, 6.8]) @ source_affine()[:3, :3].T + source_affine()[:3, 3], 5.5
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ source_affine()[:3, :3].T + source_affine()[:3, 3]
    inside = (np.linalg.norm(world - centre, axis=1) <= radius).reshape(SHAPE)
    assert 300 < inside.sum() and not inside[[0, -1]].any() and not inside[:, :, [0, -1]].any()
    _, image, mask = write_ct(tmp_path, inside)
    mesh = mask_mesh(mask, image.affine)

    assert_closed_and_consistent(mesh)
    assert euler_characteristic(mesh) == 2
    distance = np.linalg.norm(mesh.vertices - centre, axis=1)
    # A vertex sits halfway along a voxel edge that crosses the sphere: within half the longest edge of it.
    assert np.abs(distance - radius).max() <= SPACING.max() / 2 + 1e-6
    radial = np.einsum("ij,ij->i", mesh.normals(), mesh.triangles.mean(axis=1) - centre)
    assert (radial > 0).mean() > 0.97
    assert mesh.volume() == pytest.approx(inside.sum() * np.prod(SPACING), rel=0.06)


def test_a_mask_cut_by_the_scan_border_still_gives_a_closed_surface():
    mask = np.zeros((6, 7, 8), dtype=bool)
    mask[:3, 2:, 4:] = True  # touches three faces of the volume
    mesh = mask_mesh(mask, np.diag([2.0, 1.0, 0.5, 1.0]))
    assert_closed_and_consistent(mesh)
    np.testing.assert_allclose(mesh.vertices.min(axis=0), [-1.0, 1.5, 1.75])
    np.testing.assert_allclose(mesh.vertices.max(axis=0), [5.0, 6.5, 3.75])


def test_mirroring_the_affine_keeps_the_triangles_facing_out():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:6, 3:5, 1:7] = True
    for affine in (np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0]), np.diag([1.0, -2.0, -3.0, 1.0])):
        mesh = mask_mesh(mask, affine)
        assert mesh.volume() == pytest.approx(abs(np.linalg.det(affine)) * mesh_volume_in_voxels(mask))
        assert_closed_and_consistent(mesh)


def mesh_volume_in_voxels(mask: np.ndarray) -> float:
    return mask_mesh(mask, np.eye(4)).volume()


def test_empty_mask_and_bad_input():
    mesh = mask_mesh(np.zeros((4, 4, 4), dtype=bool), np.eye(4))
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)
    with pytest.raises(ValueError, match="3-D mask"):
        mask_mesh(np.ones((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="invertible"):
        mask_mesh(np.ones((4, 4, 4)), np.zeros((4, 4)))


def parse_binary_stl(data: bytes):
    """An independent reader (struct, the format's definition): header, normals, triangles."""
    (count,) = struct.unpack_from("<I", data, 80)
    assert len(data) == 84 + 50 * count
    normals, triangles = [], []
    for number in range(count):
        values = struct.unpack_from("<12fH", data, 84 + 50 * number)
        normals.append(values[:3])
        triangles.append(np.reshape(values[3:12], (3, 3)))
    return data[:80], np.array(normals), np.array(triangles)


def test_stl_file_is_lps_tagged_and_places_the_box_on_the_ct_for_an_lps_reader(tmp_path):
    import SimpleITK as sitk

    path, image, mask = write_ct(tmp_path, box_mask())
    mesh = mask_mesh(mask, image.affine)
    stl = write_stl(mesh, tmp_path / "box.stl", name="liver tumor")
    header, normals, triangles = parse_binary_stl(stl.read_bytes())
    assert b"SPACE=LPS" in header and not header.startswith(b"solid")  # "solid" would announce ASCII STL
    np.testing.assert_allclose(triangles, mesh.triangles * [-1, -1, 1], atol=1e-4)
    from_corners = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    assert (np.einsum("ij,ij->i", normals, from_corners) > 0).all()

    # ITK (what Slicer reads CT files with) works in LPS: the file's points are on the box's voxel faces.
    ct = sitk.ReadImage(str(path))
    points = triangles.reshape(-1, 3)[:: max(1, len(triangles) // 200)]
    index = np.array([ct.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points])
    low = np.array([lo for lo, _ in BOX]) - 0.5
    high = np.array([hi for _, hi in BOX]) + 0.5
    assert (index > low - 1e-3).all() and (index < high + 1e-3).all()
    assert ((np.abs(index - low) < 1e-3) | (np.abs(index - high) < 1e-3)).any(axis=1).all()

    ours, _, our_header = read_stl(stl)
    np.testing.assert_array_equal(ours, triangles.astype(np.float32))
    assert our_header.startswith("segvol surface liver tumor") and our_header.endswith("SPACE=LPS")
    ras = write_stl(mesh, tmp_path / "ras.stl", space="RAS")
    assert read_stl(ras)[2].endswith("SPACE=RAS")
    np.testing.assert_allclose(read_stl(ras)[0], mesh.triangles, atol=1e-4)


def test_read_stl_checks_the_count_against_the_file_size(tmp_path):
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    stl = write_stl(mask_mesh(mask, np.eye(4)), tmp_path / "cube.stl")
    truncated = tmp_path / "truncated.stl"
    truncated.write_bytes(stl.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated.stl: header says .* triangles"):
        read_stl(truncated)
    (tmp_path / "tiny.stl").write_bytes(b"solid x")
    with pytest.raises(ValueError, match="tiny.stl: not a binary STL"):
        read_stl(tmp_path / "tiny.stl")


def test_obj_file_has_the_tag_first_and_the_same_surface(tmp_path):
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:4, 2:5, 1:5] = True
    affine = np.diag([1.5, 0.7, 0.7, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    mesh = mask_mesh(mask, affine)
    lines = write_obj(mesh, tmp_path / "organ.obj", name="left kidney").read_text().splitlines()
    assert lines[0].startswith("#") and lines[0].endswith("SPACE=LPS")
    vertices = np.array([[float(v) for v in line.split()[1:]] for line in lines if line.startswith("v ")])
    faces = np.array([[int(v) for v in line.split()[1:]] for line in lines if line.startswith("f ")])
    np.testing.assert_allclose(vertices, mesh.vertices * [-1, -1, 1], atol=1e-6)
    np.testing.assert_array_equal(faces, mesh.faces + 1)


def test_one_file_per_non_empty_category(tmp_path):
    masks = {
        "liver": np.zeros((6, 6, 6), dtype=bool),
        "liver tumor": np.zeros((6, 6, 6), dtype=bool),
        "spleen": np.zeros((6, 6, 6), dtype=bool),
    }
    masks["liver"][1:5, 1:5, 1:5] = True
    masks["liver tumor"][2:3, 2:3, 2:3] = True
    written = write_category_meshes(masks, np.eye(4), tmp_path / "meshes", formats=("stl", "obj"))
    assert sorted(written) == ["liver", "liver tumor"]  # the empty spleen gets no file
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == [
        "liver.obj",
        "liver.stl",
        "liver_tumor.obj",
        "liver_tumor.stl",
    ]
    assert read_stl(written["liver tumor"][0])[0].shape == (8, 3, 3)  # one voxel: an octahedron
    with pytest.raises(ValueError, match="share a mesh file name"):
        write_category_meshes({"a b": masks["liver"], "a/b": masks["liver"]}, np.eye(4), tmp_path / "x")
    with pytest.raises(ValueError, match="mesh formats"):
        write_category_meshes(masks, np.eye(4), tmp_path / "x", formats=("ply",))
    assert not (tmp_path / "x").exists()
