"""What `segvol serve` holds for one browser: the open image, its objects and their prompts.

Segmentation runs through `segvol.infer.session.Session`, so the image embeddings are computed once
per image and reused by every edit. Everything is kept in the image's canonical (D, H, W) voxels (the
frame `segvol.infer` works in); the browser only ever sends view coordinates (`view`, column, row of
the rendered slice), mapped here by `ViewGeometry` (which refuses a slice or pixel outside the view),
and receives rendered PNG slices. Exports go through `segvol.infer.predict.predict_file`, the function
behind `segvol predict`, with the prompts mapped back to the file's own voxel indices: the same prompts
give the same files as the command line.

Views follow the radiological convention: axial slices seen from the feet (patient right on the
screen's left, anterior up), coronal from the front, sagittal from the patient's left; superior up.

Every change of an object runs inside `Workspace._edit`: the objects as they were go onto the undo
history when the change succeeds and are put back when it fails, so a refused or failed request leaves
the state exactly as it was. The history keeps each mask packed (one bit per voxel, zlib-compressed) and
shares the packed mask of an object that did not change between steps, so 50 steps cost about one
compressed mask per edit, not a full copy of every mask; it is also capped in bytes (`History`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import time
import unicodedata
import weakref
import zlib
from contextlib import contextmanager
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
MAX_NAME = 100  # characters of an object name
MAX_TEXT = 200  # characters of a text prompt
MAX_EXPORT_NAME = 120
# An export name is one plain file name on every system: letters or digits of any script, then also
# spaces and . _ + - ( ); no separators, no ':' (a Windows drive or stream), no control characters.
EXPORT_NAME = re.compile(r"\w[\w .+()-]*")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
LISTED_FILES = 10_000  # at most this many images are offered by `files()` ...
VISITED_ENTRIES = 200_000  # ... from at most this many directory entries under the root
HISTORY_STEPS = 50
HISTORY_BYTES = 256 * 2**20


def plain_text(value, what: str, max_length: int) -> str:
    """`value` as a stripped string of at most `max_length` characters without control characters."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {_json_type(value)}")
    if len(value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in value):
        raise ValueError(f"{what} contains control characters")
    return value.strip()


def _json_type(value) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def export_file_name(name) -> str:
    """The label map's file name for an export name (ValueError for anything but a plain name)."""
    name = plain_text(name, "export name", MAX_EXPORT_NAME)
    if not EXPORT_NAME.fullmatch(name) or name.endswith("."):
        raise ValueError(
            "export name: use letters, digits, spaces and . _ + - ( ) only, starting with a letter or "
            "digit (no folders, drive letters or control characters)"
        )
    if name.split(".")[0].strip().lower() in WINDOWS_RESERVED:
        raise ValueError(f"export name {name!r} is reserved on Windows; choose another")
    return name if name.endswith((".nii.gz", ".nii")) else name + ".nii.gz"


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

    def check(self, view: str, index: int, column: float, row: float) -> None:
        """ValueError unless `index` is a slice of `view` and (column, row) lies on it (edges included)."""
        count = self.slice_count(view)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise ValueError(f"{view} slice index {index!r} is outside 0..{count - 1}")
        columns, rows = self.size(view)
        for value, limit, what in ((column, columns, "x"), (row, rows, "y")):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, np.number))
                or not math.isfinite(value)
                or not 0 <= value <= limit
            ):
                raise ValueError(f"{what} = {value!r} is outside the {view} view (0..{limit})")

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
    packed: PackedMask | None = field(default=None, repr=False)  # `mask` packed, once asked for

    def prompt(self):
        from segvol.infer.prompts import Prompt

        return Prompt(
            text=self.text,
            box=self.box,
            points=self.points or None,
            point_labels=self.point_labels or None,
            name=self.name,
        )

    def has_prompt(self) -> bool:
        return bool(self.text or self.box or self.points)

    def record(self) -> dict:
        return {
            "name": self.name,
            "colour": self.colour,
            "text": self.text,
            "box": self.box,
            "points": self.points,
            "point_labels": self.point_labels,
            "voxels": 0 if self.mask is None else int(self.mask.sum()),
        }

    def snapshot(self) -> ObjectState:
        """The object as it is now, immutable; its mask is packed once and shared by later snapshots."""
        if self.mask is None:
            self.packed = None
        elif self.packed is None or not self.packed.holds(self.mask):  # masks are replaced, never changed
            self.packed = PackedMask.pack(self.mask)
        return ObjectState(
            self.name,
            self.colour,
            self.text,
            None if self.box is None else tuple(self.box),
            tuple(self.box_draft),
            tuple(tuple(p) for p in self.points),
            tuple(self.point_labels),
            self.packed,
        )

    @classmethod
    def restore(cls, state: ObjectState, masks: dict[int, np.ndarray]) -> SegmentedObject:
        """The object of a snapshot; `masks` maps id(packed) to a live mask it was packed from."""
        item = cls(
            state.name,
            state.colour,
            state.text,
            None if state.box is None else list(state.box),
            list(state.box_draft),
            [list(p) for p in state.points],
            list(state.point_labels),
        )
        if state.mask is not None:
            item.mask = masks.get(id(state.mask))
            if item.mask is None:
                item.mask = state.mask.unpack()
            state.mask.attach(item.mask)
            item.packed = state.mask
        return item


@dataclass(eq=False)
class PackedMask:
    """A boolean mask as zlib-compressed bits: 1/8 of the bytes before compression, far less for organs."""

    shape: tuple[int, ...]
    data: bytes
    _live: weakref.ref | None = field(default=None, repr=False)  # the live mask it was packed from, if any

    @classmethod
    def pack(cls, mask: np.ndarray) -> PackedMask:
        packed = cls(tuple(mask.shape), zlib.compress(np.packbits(mask, axis=None).tobytes(), 1))
        packed.attach(mask)
        return packed

    def attach(self, mask: np.ndarray) -> None:
        """Remember (weakly: the history must not keep full masks alive) the live mask this holds."""
        self._live = weakref.ref(mask)

    def holds(self, mask: np.ndarray) -> bool:
        return self._live is not None and self._live() is mask

    def unpack(self) -> np.ndarray:
        bits = np.frombuffer(zlib.decompress(self.data), np.uint8)
        return np.unpackbits(bits, count=math.prod(self.shape)).reshape(self.shape).view(bool)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ObjectState:
    """An object as one undo step keeps it (see `SegmentedObject.snapshot`)."""

    name: str
    colour: str
    text: str | None
    box: tuple[int, ...] | None
    box_draft: tuple[int, ...]
    points: tuple[tuple[int, ...], ...]
    point_labels: tuple[int, ...]
    mask: PackedMask | None


class History:
    """Undo steps, newest last: at most `steps` of them and about `max_bytes` of packed masks."""

    def __init__(self, steps: int = HISTORY_STEPS, max_bytes: int = HISTORY_BYTES) -> None:
        self.steps, self.max_bytes = steps, max_bytes
        self._steps: list[tuple[ObjectState, ...]] = []

    def push(self, step: tuple[ObjectState, ...]) -> None:
        self._steps.append(step)
        while len(self._steps) > self.steps or (len(self._steps) > 1 and self.nbytes > self.max_bytes):
            del self._steps[0]

    def pop(self) -> tuple[ObjectState, ...]:
        return self._steps.pop()

    def clear(self) -> None:
        self._steps.clear()

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct packed masks held (a mask shared by several steps counts once)."""
        distinct = {id(state.mask): state.mask.nbytes for step in self._steps for state in step if state.mask}
        return sum(distinct.values())


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
        self.history = History()
        self.last_seconds = 0.0

    # -- files -------------------------------------------------------------------------------

    def inside_root(self, relative: str) -> Path:
        """`relative` resolved inside the served folder; anything that leaves it is refused."""
        relative = plain_text(relative, "path", 4096)
        try:
            candidate = (self.root / relative).resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            raise ValueError(f"{relative}: cannot be resolved (a symlink loop?)") from None
        if candidate != self.root and self.root not in candidate.parents:
            raise PermissionError(f"{relative}: outside the served folder")
        if not candidate.exists():
            raise FileNotFoundError(f"{relative}: no such file in the served folder")
        return candidate

    def files(self) -> list[str]:
        """Images (and DICOM series folders) under the served folder, relative paths.

        Links are offered only when they lead to a place inside the folder and are never descended
        into; entries that cannot be read (no permission, a symlink loop, a broken link) are skipped.
        """
        found, visited = [], 0
        for folder, dirs, names in os.walk(self.root, followlinks=False):  # errors of a folder: skipped
            folder = Path(folder)
            dirs.sort()
            visited += len(dirs) + len(names)
            if visited > VISITED_ENTRIES or len(found) >= LISTED_FILES:
                log.warning("listing stopped after %d entries under the served folder", visited)
                break
            if folder != self.root and any(n.lower().endswith(".dcm") for n in names):
                found.append(folder.relative_to(self.root).as_posix() + "/")
            for name in dirs:
                if (folder / name).is_symlink() and self._offered(folder / name, is_dir=True):
                    found.append((folder / name).relative_to(self.root).as_posix() + "/")
            for name in names:
                if name.lower().endswith(IMAGE_SUFFIXES) and self._offered(folder / name, is_dir=False):
                    found.append((folder / name).relative_to(self.root).as_posix())
        return sorted(found, key=lambda p: p.split("/"))[:LISTED_FILES]

    def _offered(self, path: Path, is_dir: bool) -> bool:
        """Whether a file (or a linked DICOM folder) under the root can be listed."""
        try:
            if path.is_symlink():
                target = path.resolve(strict=True)
                if self.root not in target.parents:
                    return False  # a link that leads out of the folder is not offered
            else:
                target = path
            if is_dir:
                return target.is_dir() and any(p.suffix.lower() == ".dcm" for p in target.iterdir())
            return target.is_file()
        except (OSError, RuntimeError):
            return False

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
            self.objects = []
            self.history.clear()
        return self.describe()

    def describe(self) -> dict:
        with self.lock:
            if self.image is None:
                return {"open": False}
            d, h, w = self.hu.shape
            spacing = [float(s) for s in self.image.spacing]
            return {
                "open": True,
                "name": self.source.name,
                "shape": [d, h, w],
                "spacing": spacing,
                "views": {
                    v: {
                        "size": self.geometry.size(v),
                        "slices": self.geometry.slice_count(v),
                        "aspect": _aspect(v, spacing),
                    }
                    for v in VIEWS
                },
                "windows": list(WINDOWS),
                "objects": [o.record() for o in self.objects],
                "seconds": round(self.last_seconds, 3),
            }

    # -- objects and prompts ----------------------------------------------------------------

    def _require_image(self) -> None:
        if self.image is None:
            raise ValueError("no image is open")

    def _object(self, name: str) -> SegmentedObject:
        name = plain_text(name, "object", MAX_NAME)
        for item in self.objects:
            if item.name == name:
                return item
        raise ValueError(f"no object named {name!r}")

    @contextmanager
    def _edit(self):
        """One undoable change of the objects: kept on the history when it succeeds, undone when it fails."""
        before = tuple(item.snapshot() for item in self.objects)
        try:
            yield
        except BaseException:
            self.objects = self._restore(before)
            raise
        self.history.push(before)

    def _restore(self, step) -> list[SegmentedObject]:
        live = {id(o.packed): o.mask for o in self.objects if o.packed is not None and o.packed.holds(o.mask)}
        return [SegmentedObject.restore(state, live) for state in step]

    def add_object(self, name: str) -> dict:
        name = plain_text(name, "object name", MAX_NAME)
        with self.lock:
            self._require_image()
            name = name or f"object {len(self.objects) + 1}"
            if any(o.name == name for o in self.objects):
                raise ValueError(f"an object named {name!r} exists already")
            with self._edit():
                self.objects.append(SegmentedObject(name, COLOURS[len(self.objects) % len(COLOURS)]))
            return self.describe()

    def add_point(self, name: str, view: str, index: int, column: float, row: float, positive: bool) -> dict:
        if not isinstance(positive, bool):
            raise ValueError(f"positive must be true or false, not {_json_type(positive)}")
        with self.lock:
            self._require_image()
            item = self._object(name)
            self.geometry.check(view, index, column, row)
            voxel = self.geometry.voxel(view, index, column, row)
            with self._edit():
                item.points.append(list(voxel))
                item.point_labels.append(1 if positive else 0)
                return self._segment(item)

    def set_box_range(
        self, name: str, view: str, index: int, start: tuple[float, float], end: tuple[float, float]
    ) -> dict:
        """A rectangle dragged on one view sets the box's extent along that view's two axes;
        a box becomes a prompt once all three axes are set (two views)."""
        with self.lock:
            self._require_image()
            item = self._object(name)
            self.geometry.check(view, index, *start)
            self.geometry.check(view, index, *end)
            first = self.geometry.voxel(view, index, *start)
            second = self.geometry.voxel(view, index, *end)
            axes = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[view]
            with self._edit():
                for axis in axes:
                    item.box_draft[axis], item.box_draft[axis + 3] = sorted((first[axis], second[axis]))
                if min(item.box_draft) < 0:
                    return {**self.describe(), "waiting": "drag the box on a second view"}
                item.box = list(item.box_draft)
                return self._segment(item)

    def set_text(self, name: str, text: str | None) -> dict:
        text = plain_text("" if text is None else text, "text prompt", MAX_TEXT)
        with self.lock:
            self._require_image()
            item = self._object(name)
            with self._edit():
                item.text = text or None
                return self._segment(item)

    def undo(self) -> dict:
        with self.lock:
            self._require_image()
            if not len(self.history):
                raise ValueError("nothing to undo")
            self.objects = self._restore(self.history.pop())
            return self.describe()

    def _segment(self, item: SegmentedObject) -> dict:
        """Segment `item` under its current prompts (the one place a segmentation request runs)."""
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

    def render(
        self, view: str, index: int, window: str = "abdomen", cross: tuple[int, int, int] | None = None
    ) -> bytes:
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
                colour = np.array([int(item.colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)
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

        name = export_file_name(name)
        with self.lock:
            records = self.export_records()
            output = self.root / name
            description = predict_file(
                self.model, self.source, output, records, mode=self.mode, weights=getattr(self, "weights", "")
            )
            return {
                "path": output.relative_to(self.root).as_posix(),
                "records": records,
                "voxels": description.get("voxels", {}),
            }


def _aspect(view: str, spacing) -> float:
    """Height / width of a slice in millimetres per pixel ratio (rows' spacing over columns')."""
    d, h, w = spacing
    return {"axial": h / w, "coronal": d / w, "sagittal": d / h}[view]
