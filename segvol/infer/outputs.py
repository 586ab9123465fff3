"""What `segvol predict` writes for one input: the output plan, the safety checks, the label map and the manifest.

Per input, next to each other: the label map `<stem>.nii.gz` on exactly the input's grid (category i -> value
i+1; where categories overlap the most probable wins), the run manifest `<stem>.json` and, on request, one
binary mask, one probability map and one surface mesh per category (`<stem>_meshes/NN_<name>.stl|.obj`,
`segvol.io.mesh`: world coordinates, LPS as 3D Slicer reads them) and a DICOM Segmentation. An existing output
is replaced only when the manifest next to it says segvol wrote it (or with `overwrite`); an input never is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_FORMAT = "segvol-predict-manifest"
MESH_FORMATS = ("stl", "obj")  # `segvol.io.mesh.FORMATS`, without importing scikit-image for --help


def mesh_formats(text: str) -> tuple[str, ...]:
    """`--mesh` values: "stl", "obj" or both ("stl,obj"), in the order given, once each."""
    formats = tuple(dict.fromkeys(part.strip().lower() for part in str(text).split(",") if part.strip()))
    unknown = [f for f in formats if f not in MESH_FORMATS]
    if unknown or not formats:
        raise ValueError(f"--mesh {text!r}: choose stl, obj or stl,obj")
    return formats


def mesh_option(text: str) -> tuple[str, ...]:
    """`mesh_formats` as an argparse `type`: a bad value is argparse's one-line usage error."""
    import argparse

    try:
        return mesh_formats(text)
    except ValueError:
        raise argparse.ArgumentTypeError("choose stl, obj or stl,obj") from None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class OutputPlan:
    """Every path `predict` writes for one input; `files` in writing order, manifest last."""

    input: Path
    label_map: Path
    manifest: Path
    masks: list[Path] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    meshes: list[list[Path]] = field(default_factory=list)  # per category: one path per mesh format
    dicom_seg: Path | None = None

    @property
    def files(self) -> list[Path]:
        extra = [self.dicom_seg] if self.dicom_seg else []
        meshes = [path for paths in self.meshes for path in paths]
        return [*self.masks, *self.probabilities, *meshes, *extra, self.label_map, self.manifest]


def plan_outputs(
    input_path: Path,
    label_map: Path,
    names: list[str],
    masks: bool,
    probabilities: bool,
    dicom_seg: bool,
    meshes: tuple[str, ...] = (),
) -> OutputPlan:
    """Every path to write for one input; `meshes`: mesh formats (`MESH_FORMATS`), none for no meshes."""
    if not label_map.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{label_map}: the label map is written as NIfTI; use a .nii.gz name")
    stem = _stem(label_map)
    category_stems = [f"{k + 1:02d}_{_safe_name(name)}" for k, name in enumerate(names)]
    per_category = [name + ".nii.gz" for name in category_stems]
    plan = OutputPlan(input_path, label_map, label_map.with_name(stem + ".json"))
    if masks:
        plan.masks = [label_map.with_name(stem + "_masks") / name for name in per_category]
    if probabilities:
        plan.probabilities = [label_map.with_name(stem + "_probabilities") / name for name in per_category]
    if meshes:
        formats = mesh_formats(",".join(meshes))
        folder = label_map.with_name(stem + "_meshes")
        plan.meshes = [[folder / f"{name}.{kind}" for kind in formats] for name in category_stems]
    if dicom_seg:
        if not input_path.is_dir():
            raise ValueError(f"{input_path}: --dicom-seg needs a DICOM series folder as input")
        plan.dicom_seg = label_map.with_name(stem + ".seg.dcm")
    return plan


def read_manifest(path: Path) -> dict | None:
    """The manifest at ``path`` when it is one that segvol predict wrote, else None."""
    try:
        if path.stat().st_size > 50_000_000:
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def writable_folder_problem(path: Path) -> str | None:
    """None when the folder of `path` exists or can be made and a file can be created in it, else
    why not. Probes the nearest existing folder with a temporary file (removed at once): permission
    bits alone mislead (root, read-only mounts, /proc)."""
    import tempfile

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".segvol-write-check-", dir=folder)
    except OSError as error:
        return f"cannot create files in {folder} ({error.strerror or error})"
    os.close(handle)
    os.unlink(probe)
    return None


def check_outputs(plan: OutputPlan, protected: list[Path], overwrite: bool) -> None:
    """Refuse (ValueError, nothing written) any output that would replace something not ours.

    ``protected``: paths never written (every input image, the prompt file, the checkpoint).
    Without ``overwrite`` an existing file is replaced only when the manifest next to it was
    written by segvol predict and lists it.
    """
    manifest = read_manifest(plan.manifest) if plan.manifest.exists() else None
    ours = set()
    if manifest is not None:
        ours = {plan.manifest.name, *(str(name) for name in manifest.get("outputs", []))}
    probed: dict[Path, str | None] = {}
    for path in plan.files:
        for kept in protected:
            if same_file(path, kept) or _inside(path, kept):
                raise ValueError(f"{path}: output would overwrite the input {kept}; choose another -o")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"{path}: cannot write there, {parent} is a file, not a folder")
        if path.is_dir() and not path.is_symlink():
            raise ValueError(f"{path}: is an existing folder; refusing to replace it with a file")
        if path.parent not in probed:
            probed[path.parent] = writable_folder_problem(path)
        if probed[path.parent]:
            raise ValueError(f"{path}: cannot be written: {probed[path.parent]}; choose another -o")
        if (path.exists() or path.is_symlink()) and not overwrite:
            relative = os.path.relpath(path, plan.manifest.parent)
            if relative not in ours:
                raise ValueError(
                    f"{path}: exists and was not written by segvol predict; "
                    "remove it, choose another -o, or pass --overwrite"
                )


def label_paths(inputs: list[Path], output: str) -> list[Path]:
    """The label map path of each input: ``-o`` itself for one input, ``<-o>/<stem>.nii.gz`` for several."""
    target = Path(output)
    if len(inputs) == 1 and target.name.endswith((".nii", ".nii.gz")):
        return [target]
    if target.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{target}: {len(inputs)} inputs need a folder as -o, not a file name")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file; -o must be a folder for several inputs")
    paths = [target / (_stem(path) + ".nii.gz") for path in inputs]
    names = [p.name for p in paths]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"inputs {clash} would write the same output name in {target}; run them separately")
    return paths


def finished(plan: OutputPlan) -> bool:
    """Whether a previous run finished this input: its manifest is ours, names this input and
    every output it lists still exists."""
    manifest = read_manifest(plan.manifest) if plan.manifest.exists() else None
    if manifest is None or manifest.get("status") != "finished":
        return False
    if not same_file(Path(manifest.get("input", "")), plan.input):
        return False
    return all((plan.manifest.parent / name).exists() for name in manifest.get("outputs", []))


class LabelMapBuilder:
    """Builds the label map one category at a time (0 background, k+1 where category k is the
    most probable of those with probability > 0.5; on exact ties the earlier category wins).

    Memory: the label map plus the best logit so far, kept only inside the bounding box of the
    voxels some category has claimed (logit > 0). Elsewhere the best is implicitly 0, the
    threshold a logit must beat, so a full-volume float32 best-logit array (629 MB for
    600x512x512) is never needed: organ-sized boxes cost megabytes.
    """

    SLAB = 16  # slices per step: no full-volume temporaries

    def __init__(self, shape, categories: int) -> None:
        import numpy as np

        self.labels = np.zeros(shape, dtype=np.uint8 if categories < 255 else np.int16)
        self.best = None  # float32 tensor over `best_box` (inclusive, volume voxels)
        self.best_box = None

    def add(self, k: int, logits, region=None) -> None:
        """Category ``k``'s logits ``(D, H, W)`` float32, over the whole volume or the inclusive box ``region``."""
        import numpy as np

        from segvol.infer.geometry import box_slices

        start = np.zeros(3, np.int64) if region is None else np.asarray(region[:3], np.int64)
        claimed = self._positive_box(logits)
        if claimed is None:
            return
        claimed = claimed + np.tile(start, 2)
        self._cover(claimed)
        inner = box_slices(claimed - np.tile(start, 2))
        logits = logits[inner]
        labels = self.labels[box_slices(claimed)]
        best_all = self.best[box_slices(claimed - np.tile(self.best_box[:3], 2))]
        for first in range(0, logits.shape[0], self.SLAB):
            part, best = logits[first : first + self.SLAB], best_all[first : first + self.SLAB]
            wins = part > best
            best[wins] = part[wins]
            labels[first : first + self.SLAB][wins.numpy()] = k + 1

    def _positive_box(self, logits):
        """Inclusive bounding box of ``logits > 0`` (None when empty), slab by slab."""
        import numpy as np
        import torch

        hits = [torch.zeros(n, dtype=torch.bool) for n in logits.shape]
        for first in range(0, logits.shape[0], self.SLAB):
            part = logits[first : first + self.SLAB] > 0
            hits[0][first : first + self.SLAB] = part.flatten(1).any(dim=1)
            hits[1] |= part.any(dim=0).any(dim=1)
            hits[2] |= part.any(dim=0).any(dim=0)
        if not hits[0].any():
            return None
        found = [torch.nonzero(h).flatten() for h in hits]
        return np.array([int(f[0]) for f in found] + [int(f[-1]) for f in found], dtype=np.int64)

    def _cover(self, box) -> None:
        """Grow the best-logit array to cover ``box`` (new voxels start at 0)."""
        import numpy as np
        import torch

        from segvol.infer.geometry import box_slices

        if self.best_box is not None:
            grown = np.concatenate([np.minimum(self.best_box[:3], box[:3]), np.maximum(self.best_box[3:], box[3:])])
            if np.array_equal(grown, self.best_box):
                return
            box = grown
        best = torch.zeros(tuple(int(n) for n in box[3:] - box[:3] + 1), dtype=torch.float32)
        if self.best is not None:
            best[box_slices(self.best_box - np.tile(box[:3], 2))] = self.best
        self.best, self.best_box = best, box


def label_counts(labels, categories: int, slab: int = 16) -> list[int]:
    """Voxels per value 0..categories of a label map, slab by slab (no full-volume temporaries:
    a comparison per category would make a 157 MB mask each for 600x512x512)."""
    import numpy as np

    counts = np.zeros(categories + 1, dtype=np.int64)
    for first in range(0, labels.shape[0], slab):
        counts += np.bincount(labels[first : first + slab].ravel(), minlength=categories + 1)[: categories + 1]
    return [int(n) for n in counts]


def build_manifest(
    plan: OutputPlan,
    image,
    prompts: list,
    labels,
    written: list[Path],
    *,
    mode: str,
    overlap: float,
    box_limits: bool,
    weights,
    device,
    precision: str,
    world: bool,
    seconds: dict,
    meshes: dict | None = None,
) -> dict:
    """The run manifest of one input: labels, prompts in voxel and world coordinates, settings, weights,
    device, voxel counts, timings, the files written, the meshes (`meshes`: category -> its surface's
    files, triangles, area and volume) and the provenance record of the label map."""
    from segvol import provenance

    extra = {}
    if meshes is not None:
        extra["meshes"] = {
            "surface": "0.5 iso-surface of each category's mask (probability > 0.5, overlaps kept), marching cubes",
            "space": "LPS mm (x, y of RAS+ negated), tagged SPACE=LPS in each file: 3D Slicer places it on the input",
            "categories": {
                name: {**entry, "files": [os.path.relpath(p, plan.manifest.parent) for p in entry["files"]]}
                for name, entry in meshes.items()
            },
        }
    return {
        "format": MANIFEST_FORMAT,
        "status": "finished",
        "segvol_version": _version(),
        "input": str(plan.input),
        "labels": {"0": "background", **{str(k + 1): p.label for k, p in enumerate(prompts)}},
        "prompts": [_prompt_record(p, image) for p in prompts],
        "coordinates": "0-based input voxel indices (i, j, k)"
        + (", converted from RAS+ mm" if world else "")
        + "; 'world': RAS+ mm of the same voxels",
        "mode": mode,
        "overlap": overlap,
        "box_limits": box_limits,
        "weights": weights if isinstance(weights, dict) else {"checkpoint": weights, "sha256": None},
        "device": str(device),
        "precision": precision,
        "voxels": dict(zip([p.label for p in prompts], label_counts(labels, len(prompts))[1:])),
        "seconds": seconds,
        "outputs": [os.path.relpath(path, plan.manifest.parent) for path in written],
        **extra,
        # what made it (code commit, packages, device, inputs' sha256), as every other output records
        "provenance": provenance.record(plan.label_map, inputs=[plan.input]),
    }


def write_manifest(plan: OutputPlan, manifest: dict) -> None:
    from segvol.io.atomic import atomic_path

    with atomic_path(plan.manifest) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n")


def _version() -> str:
    from segvol import __version__

    return __version__


def _prompt_record(prompt, image) -> dict:
    import numpy as np

    affine = np.asarray(image.original_affine, dtype=np.float64)

    def world(points):
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.round(points @ affine[:3, :3].T + affine[:3, 3], 3).tolist()

    record = {"name": prompt.label}
    if prompt.text is not None:
        record["text"] = prompt.text
    if prompt.box is not None:
        record["box"] = [int(v) for v in prompt.box]
        record["box_world"] = [c for corner in world(np.reshape(prompt.box, (2, 3))) for c in corner]
    if prompt.points is not None:
        record["points"] = [[float(c) for c in point] for point in prompt.points]
        record["points_world"] = world(prompt.points)
        record["point_labels"] = [int(v) for v in prompt.point_labels]
    if getattr(prompt, "init_mask", None) is not None:
        record["init_mask"] = prompt.init_mask
    return record
