"""Surface meshes of segmentation masks in world coordinates, written as binary STL or Wavefront OBJ.

    mesh = mask_mesh(mask, image.affine)           # mask on a CanonicalImage's (D, H, W) grid
    write_stl(mesh, "liver.stl", name="liver")     # LPS millimetres, tagged SPACE=LPS
    paths = write_category_meshes({"liver": m1, "liver tumor": m2}, image.affine, "meshes/", formats=("stl", "obj"))

Surface. The mesh is the 0.5 iso-surface of the mask (`skimage.measure.marching_cubes`, Lewiner's
variant). Its vertices lie halfway between an inside and an outside voxel centre, i.e. on the faces of
the mask's voxels, so the mesh encloses what the mask labels. The mask is padded with one voxel of
background first, so that a structure cut by the edge of the scan still gives a closed surface.

World coordinates. `affine` maps a voxel index (d, h, w) -- the voxel's centre -- to RAS+ millimetres
(`CanonicalImage.affine`); marching cubes runs in index space and every vertex goes through the whole
affine, so spacing, origin, axis flips and oblique directions are all honoured (marching cubes' own
`spacing` argument could express only the first).

Files. Vertices are written in LPS (x and y negated from RAS) with `SPACE=LPS` in the STL header and in
the OBJ's first comment line. That is the convention of 3D Slicer since 4.11: it reads model files as
LPS unless the file says `SPACE=RAS` in exactly those places, and it reads images (NIfTI, DICOM) in
their own world frame, so a mesh written here lies on the CT it came from. `space="RAS"` writes RAS
coordinates, tagged as such. Triangles are wound counter-clockwise seen from outside (normals point out
of the structure), also when the affine mirrors: every canonical affine does, since (D, H, W) =
(S, A, R) is a left-handed index order; the winding is checked by the sign of the enclosed volume.

Why scikit-image: its marching cubes is the maintained, compiled implementation of the field, with
Lewiner's disambiguation of the ambiguous cube cases (no cracks between cubes) and shared vertices; the
alternative is VTK, a large dependency for one filter. The writers are a few lines of numpy each: both
formats are fixed, simple layouts, and a mesh library would add nothing that is tested here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.measure import marching_cubes

from segvol.io.atomic import atomic_path

SPACES = ("LPS", "RAS")
FORMATS = ("stl", "obj")
STL_HEADER_BYTES = 80
STL_TRIANGLE = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Mesh:
    """A triangle surface. vertices: (V, 3) float64 RAS+ mm; faces: (F, 3) int64 vertex indices, each
    triangle counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def triangles(self) -> np.ndarray:
        """(F, 3, 3): the corners of every triangle."""
        return self.vertices[self.faces]

    def normals(self) -> np.ndarray:
        """(F, 3) outward unit normals (zero for a degenerate triangle)."""
        corners = self.triangles
        cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        length = np.linalg.norm(cross, axis=1, keepdims=True)
        return np.divide(cross, length, out=np.zeros_like(cross), where=length > 0)

    def volume(self) -> float:
        """Enclosed volume in mm^3 (divergence theorem); positive when the triangles face outwards."""
        corners = self.triangles
        return float(np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0)

    def area(self) -> float:
        corners = self.triangles
        return float(
            np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1).sum() / 2.0
        )


def mask_mesh(mask: np.ndarray, affine: np.ndarray) -> Mesh:
    """The closed surface of a binary 3-D mask, vertices in world (RAS+) mm through `affine`.

    mask: (D, H, W) binary, on the grid that `affine` (4, 4; voxel index -> RAS+ mm) describes.
    An empty mask gives a mesh without vertices or faces.
    """
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3:
        raise ValueError(f"a surface mesh needs a 3-D mask, got shape {mask.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got {affine.tolist()}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    # Only the mask's bounding box, padded with one background voxel on every side.
    starts = []
    window = []
    for axis in range(3):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        starts.append(int(occupied[0]))
        window.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    padded = np.pad(mask[tuple(window)].astype(np.float32), 1)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    index = vertices.astype(np.float64) + (np.asarray(starts, dtype=np.float64) - 1.0)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    mesh = Mesh(world, faces.astype(np.int64))
    if mesh.volume() < 0:
        mesh = Mesh(world, mesh.faces[:, ::-1].copy())
    return mesh


def _file_vertices(mesh: Mesh, space: str) -> np.ndarray:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    return mesh.vertices * RAS_TO_LPS if space == "LPS" else mesh.vertices


def _label(name: str) -> str:
    """A name safe inside a header or comment line (printable ASCII, one line)."""
    return re.sub(r"[^ -~]", "_", name).strip()


def write_stl(mesh: Mesh, path: str | os.PathLike, *, name: str = "", space: str = "LPS") -> Path:
    """Binary STL (80-byte header, uint32 count, 50 bytes per triangle), coordinates in `space` mm."""
    vertices = _file_vertices(mesh, space)
    header = f"segvol surface {_label(name)} SPACE={space}".encode("ascii")
    if len(header) > STL_HEADER_BYTES:  # keep the tag: cut the name instead
        header = header[: STL_HEADER_BYTES - len(f" SPACE={space}")] + f" SPACE={space}".encode("ascii")
    records = np.zeros(len(mesh.faces), dtype=STL_TRIANGLE)
    file_mesh = Mesh(vertices, mesh.faces)
    records["normal"] = file_mesh.normals()
    records["vertices"] = file_mesh.triangles
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(header.ljust(STL_HEADER_BYTES, b" "))
        handle.write(np.uint32(len(records)).astype("<u4").tobytes())
        handle.write(records.tobytes())
    return path


def read_stl(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """(triangles (F, 3, 3) float32, normals (F, 3) float32, header) of a binary STL file.

    The triangle count is checked against the file's size before anything is read.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(STL_HEADER_BYTES + 4)
        if len(head) < STL_HEADER_BYTES + 4:
            raise ValueError(f"{path}: not a binary STL file ({size} bytes, shorter than its header)")
        count = int(np.frombuffer(head[STL_HEADER_BYTES:], dtype="<u4")[0])
        if size != STL_HEADER_BYTES + 4 + count * STL_TRIANGLE.itemsize:
            raise ValueError(f"{path}: header says {count} triangles, which does not match the file size {size}")
        records = np.frombuffer(handle.read(), dtype=STL_TRIANGLE, count=count)
    return records["vertices"], records["normal"], head[:STL_HEADER_BYTES].decode("ascii", "replace").rstrip(" \0")


def write_obj(mesh: Mesh, path: str | os.PathLike, *, name: str = "", space: str = "LPS") -> Path:
    """Wavefront OBJ: a `SPACE=` comment first, then `v x y z` (mm, 6 decimals) and 1-based `f a b c` lines."""
    vertices = _file_vertices(mesh, space)
    path = Path(path)
    label = _label(name) or path.stem
    with atomic_path(path) as temporary, open(temporary, "w", encoding="ascii", newline="\n") as handle:
        handle.write(f"# segvol surface {label} SPACE={space}\n")
        handle.write(f"o {label.replace(' ', '_')}\n")
        np.savetxt(handle, vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(handle, mesh.faces + 1, fmt="f %d %d %d")
    return path


def file_stem(category: str) -> str:
    """The file name of a category's mesh: `liver tumor` -> `liver_tumor`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", category.strip()).strip("._")
    if not stem:
        raise ValueError(f"category name {category!r} gives no usable file name")
    return stem


def write_category_meshes(
    masks: Mapping[str, np.ndarray],
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = ("stl",),
    space: str = "LPS",
) -> dict[str, list[Path]]:
    """One mesh file per category and format, `<out_dir>/<category>.<format>`; category -> paths written.

    Categories whose mask is empty get no file (an empty surface is not a model a viewer can show).
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"mesh formats must be among {FORMATS}, got {list(formats)}")
    stems = {category: file_stem(category) for category in masks}
    clashes = sorted({stem for stem in stems.values() if list(stems.values()).count(stem) > 1})
    if clashes:
        raise ValueError(f"categories {sorted(c for c, s in stems.items() if s in clashes)} share a mesh file name")
    out_dir = Path(out_dir)
    written = {}
    for category, mask in masks.items():
        mesh = mask_mesh(mask, affine)
        if len(mesh.faces) == 0:
            continue
        writers = {"stl": write_stl, "obj": write_obj}
        written[category] = [
            writers[kind](mesh, out_dir / f"{stems[category]}.{kind}", name=category, space=space) for kind in formats
        ]
    return written
