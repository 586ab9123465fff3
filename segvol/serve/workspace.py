"""What `segvol serve` holds for one browser: the open image, its objects and their prompts.

Segmentation runs through `segvol.infer.session.Session`, so the image embeddings are computed once
per image and reused by every edit. Everything is kept in the image's canonical (D, H, W) voxels (the
frame `segvol.infer` works in);
the browser only ever sends view coordinates (`view`, column, row of the rendered slice), mapped
here by `ViewGeometry`, and receives rendered PNG slices. Exports go through
`segvol.infer.cli.predict_file`, the function behind `segvol predict`, with the prompts mapped back
to the file's own voxel indices: the same prompts give the same files as the command line.

Views follow the radiological convention: axial slices seen from the feet (patient right on the
screen's left, anterior up), coronal from the front, sagittal from the patient's left; superior up.
"""

from __future__ import annotations

import copy
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VIEWS = ("axial", "coronal", "sagittal")
WINDOWS = {  # (level, width) in HU
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
COLOURS = ["#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55"]
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class ViewGeometry:
    """Maps between the three rendered views and canonical (d, h, w) voxels of a volume shape."""

    def __init__(self, shape) -> None:
        self.shape = tuple(int(n) for n in shape)

    def size(self, view: str) -> tuple[int, int]:
        """(columns, rows) of a rendered slice."""
        depth, height, width = self.shape
        return {"axial": (width, height), "coronal": (width, depth), "sagittal": (height, depth)}[_check(view)]

    def slice_count(self, view: str) -> int:
        return self.shape[VIEWS.index(_check(view))]

    def slice(self, array: np.ndarray, view: str, index: int) -> np.ndarray:
        """The (rows, columns) picture of `array` (..., D, H, W) on slice `index` of `view`."""
        view = _check(view)
        if view == "axial":
            picture = array[..., index, :, :]
        elif view == "coronal":
            picture = array[..., :, index, :]
        else:
            picture = array[..., :, :, index]
        return np.flip(picture, axis=(-2, -1))

    def voxel(self, view: str, index: int, column: float, row: float) -> tuple[int, int, int]:
        """The canonical voxel under pixel (column, row) of slice `index` of `view`."""
        depth, height, width = self.shape
        columns, rows = self.size(view)
        column = int(np.clip(np.floor(column), 0, columns - 1))
        row = int(np.clip(np.floor(row), 0, rows - 1))
        if view == "axial":
            return int(index), height - 1 - row, width - 1 - column
        if view == "coronal":
            return depth - 1 - row, int(index), width - 1 - column
        return depth - 1 - row, height - 1 - column, int(index)


def _check(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    return view


@dataclass
class SegmentedObject:
    """One named object: its prompts (canonical voxels) and its current mask."""

    name: str
    colour: str
    text: str | None = None
    box: list[int] | None = None  # (d0, h0, w0, d1, h1, w1), inclusive; set once all three axes are
    box_draft: list[int] = field(default_factory=lambda: [-1] * 6)  # axes dragged so far (-1: not yet)
    points: list[list[int]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    mask: np.ndarray | None = field(default=None, repr=False)

    def prompt(self):
        from segvol.infer.prompts import Prompt

        return Prompt(text=self.text, box=self.box, points=self.points or None,
                      point_labels=self.point_labels or None, name=self.name)

    def has_prompt(self) -> bool:
        return bool(self.text or self.box or self.points)

    def record(self) -> dict:
        return {"name": self.name, "colour": self.colour, "text": self.text, "box": self.box,
                "points": self.points, "point_labels": self.point_labels,
                "voxels": 0 if self.mask is None else int(self.mask.sum())}


class Workspace:
    """The open image and its objects; every method is safe to call from the server's threads."""

    def __init__(self, model, root: str | Path, mode: str = "zoom") -> None:
        self.model = model
        self.root = Path(root).resolve()
        self.mode = mode
        self.lock = threading.RLock()
        self.image = None
        self.source: Path | None = None
        self.hu: np.ndarray | None = None
        self.session = None
        self.geometry: ViewGeometry | None = None
        self.objects: list[SegmentedObject] = []
        self.history: list[list[SegmentedObject]] = []
        self.last_seconds = 0.0

    # -- files -------------------------------------------------------------------------------

    def inside_root(self, relative: str) -> Path:
        """`relative` resolved inside the served folder; anything that leaves it is refused."""
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise PermissionError(f"{relative}: outside the served folder")
        if not candidate.exists():
            raise FileNotFoundError(f"{relative}: no such file in the served folder")
        return candidate

    def files(self) -> list[str]:
        """Images (and DICOM series folders) under the served folder, relative paths."""
        found = []
        for path in sorted(self.root.rglob("*")):
            resolved = path.resolve()
            if self.root not in resolved.parents:
                continue  # a link that leads out of the folder is not offered
            if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
                found.append(path.relative_to(self.root).as_posix())
            elif path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir() if p.is_file()):
                found.append(path.relative_to(self.root).as_posix() + "/")
        return found

    def open(self, path: str | Path) -> dict:
        """Read an image (already checked to be allowed) and start afresh on it."""
        from segvol.infer.session import Session
        from segvol.io import read_image

        image = read_image(path)
        hu = np.array(image.array, dtype=np.float32)  # the session releases the image's own array
        session = Session(self.model, image, mode=self.mode)
        with self.lock:
            self.image, self.source = image, Path(path)
            self.hu = hu
            self.session = session
            self.geometry = ViewGeometry(self.hu.shape)
            self.objects, self.history = [], []
        return self.describe()

    def describe(self) -> dict:
        with self.lock:
            if self.image is None:
                return {"open": False}
            d, h, w = self.hu.shape
            spacing = [float(s) for s in self.image.spacing]
            return {
                "open": True, "name": self.source.name, "shape": [d, h, w], "spacing": spacing,
                "views": {v: {"size": self.geometry.size(v), "slices": self.geometry.slice_count(v),
                              "aspect": _aspect(v, spacing)} for v in VIEWS},
                "windows": list(WINDOWS), "objects": [o.record() for o in self.objects],
                "seconds": round(self.last_seconds, 3),
            }

    # -- objects and prompts ----------------------------------------------------------------

    def _require_image(self) -> None:
        if self.image is None:
            raise ValueError("no image is open")

    def _object(self, name: str) -> SegmentedObject:
        for item in self.objects:
            if item.name == name:
                return item
        raise ValueError(f"no object named {name!r}")

    def _remember(self) -> None:
        self.history.append(copy.deepcopy(self.objects))
        del self.history[:-50]

    def add_object(self, name: str) -> dict:
        with self.lock:
            self._require_image()
            name = (name or "").strip() or f"object {len(self.objects) + 1}"
            if any(o.name == name for o in self.objects):
                raise ValueError(f"an object named {name!r} exists already")
            self._remember()
            self.objects.append(SegmentedObject(name, COLOURS[len(self.objects) % len(COLOURS)]))
            return self.describe()

    def add_point(self, name: str, view: str, index: int, column: float, row: float, positive: bool) -> dict:
        with self.lock:
            self._require_image()
            voxel = self.geometry.voxel(view, int(index), column, row)
            item = self._object(name)
            self._remember()
            item.points.append(list(voxel))
            item.point_labels.append(1 if positive else 0)
            return self._segment(item)

    def set_box_range(self, name: str, view: str, index: int, start: tuple[float, float],
                      end: tuple[float, float]) -> dict:
        """A rectangle dragged on one view sets the box's extent along that view's two axes;
        a box becomes a prompt once all three axes are set (two views)."""
        with self.lock:
            self._require_image()
            first = self.geometry.voxel(view, int(index), *start)
            second = self.geometry.voxel(view, int(index), *end)
            item = self._object(name)
            self._remember()
            axes = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[_check(view)]
            for axis in axes:
                item.box_draft[axis], item.box_draft[axis + 3] = sorted((first[axis], second[axis]))
            if min(item.box_draft) < 0:
                return {**self.describe(), "waiting": "drag the box on a second view"}
            item.box = list(item.box_draft)
            return self._segment(item)

    def set_text(self, name: str, text: str) -> dict:
        with self.lock:
            self._require_image()
            item = self._object(name)
            self._remember()
            item.text = (text or "").strip() or None
            return self._segment(item)

    def undo(self) -> dict:
        with self.lock:
            self._require_image()
            if not self.history:
                raise ValueError("nothing to undo")
            self.objects = self.history.pop()
            return self.describe()

    def _segment(self, item: SegmentedObject) -> dict:
        import torch

        if not item.has_prompt():
            item.mask = None
            return self.describe()
        prompt = item.prompt()
        started = time.perf_counter()
        with torch.inference_mode():  # the session keeps every view's image embedding between edits
            logits = self.session.segment([prompt])
        item.mask = (logits[0] > 0).numpy()
        self.last_seconds = time.perf_counter() - started
        log.info("%s: %d voxels in %.2f s", item.name, int(item.mask.sum()), self.last_seconds)
        return self.describe()

    # -- pictures -----------------------------------------------------------------------------

    def render(self, view: str, index: int, window: str = "abdomen", cross: tuple[int, int, int] | None = None) -> bytes:
        """A PNG of one slice: windowed image, every object's mask, the crosshair."""
        from PIL import Image

        with self.lock:
            self._require_image()
            if window not in WINDOWS:
                raise ValueError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)}")
            index = int(np.clip(int(index), 0, self.geometry.slice_count(view) - 1))
            level, width = WINDOWS[window]
            picture = self.geometry.slice(self.hu, view, index)
            grey = np.clip((picture - (level - width / 2)) / width, 0, 1)
            rgb = np.repeat((grey * 255).astype(np.float32)[..., None], 3, axis=-1)
            for item in self.objects:
                if item.mask is None:
                    continue
                mask = self.geometry.slice(item.mask, view, index)
                colour = np.array([int(item.colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)
                rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
            if cross is not None:
                columns, rows = self.geometry.size(view)
                marker = np.zeros(self.hu.shape, dtype=bool)
                d, h, w = (int(np.clip(c, 0, n - 1)) for c, n in zip(cross, self.hu.shape))
                if view == "axial":
                    marker[index, h, :] = marker[index, :, w] = True
                elif view == "coronal":
                    marker[d, index, :] = marker[:, index, w] = True
                else:
                    marker[d, :, index] = marker[:, h, index] = True
                line = self.geometry.slice(marker, view, index)
                rgb[line] = 0.5 * rgb[line] + 0.5 * np.array([255, 230, 0], dtype=np.float32)
            buffer = io.BytesIO()
            Image.fromarray(rgb.astype(np.uint8)).save(buffer, format="PNG")
            return buffer.getvalue()

    # -- export -------------------------------------------------------------------------------

    def export_records(self) -> list[dict]:
        """The objects' prompts in the file's own voxel indices, as `segvol predict --prompts` reads them."""
        from segvol.infer.geometry import VoxelMap

        with self.lock:
            self._require_image()
            to_file = VoxelMap.from_affines(self.image.affine, self.image.original_affine)
            records = []
            for item in self.objects:
                if not item.has_prompt():
                    continue
                mapped = item.prompt().mapped(to_file, self.image.original_shape)
                record = {"name": item.name}
                if mapped.text:
                    record["text"] = mapped.text
                if mapped.box is not None:
                    record["box"] = [int(v) for v in mapped.box]
                if mapped.points is not None:
                    record["points"] = [[int(round(c)) for c in p] for p in np.asarray(mapped.points)]
                    record["point_labels"] = [int(v) for v in mapped.point_labels]
                records.append(record)
            if not records:
                raise ValueError("no object has a prompt yet")
            return records

    def export(self, name: str) -> dict:
        """Write `<name>.nii.gz` and its JSON into the served folder, exactly as `segvol predict` would."""
        from segvol.infer.predict import predict_file

        name = (name or "").strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{name!r}: give a plain file name (no folders)")
        if not name.endswith((".nii.gz", ".nii")):
            name += ".nii.gz"
        with self.lock:
            records = self.export_records()
            output = self.root / name
            description = predict_file(self.model, self.source, output, records, mode=self.mode,
                                       weights=getattr(self, "weights", ""))
            return {"path": output.relative_to(self.root).as_posix(), "records": records,
                    "voxels": description.get("voxels", {})}


def _aspect(view: str, spacing) -> float:
    """Height / width of a slice in millimetres per pixel ratio (rows' spacing over columns')."""
    d, h, w = spacing
    return {"axial": h / w, "coronal": d / w, "sagittal": d / h}[view]
