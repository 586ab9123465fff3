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

A prompt change is recorded at once, then segmented (one segmentation at a time: the `Session` is not
thread-safe); the latest request for an object wins. A request whose object changed again while it waited
or ran (a newer click, an undo, another image) is answered `Superseded` and its result is dropped; one still
waiting when a newer one comes does no work at all, so fast clicks never queue stale segmentations. The state
lock is held only to read or change prompts and masks, never while the model runs: slices render meanwhile.

A label map (`load_labels`: a file of the served folder or an upload, read like an image and checked to lie
on the open image's grid) is kept while the image is open; `import_label` makes one of its labels an object
(`Session.set_mask`) that clicks then edit, and export hands that label to `segvol predict`'s init-mask path.
"""

from __future__ import annotations

import io
import json
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
LISTED_LABELS = 1000  # label values offered by `load_labels`
SIDECAR_BYTES = 1 << 20  # a label-name sidecar is read only up to this size


class Superseded(Exception):
    """A request whose object changed again before its segmentation was shown: its result is dropped."""


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
    start: object | None = field(default=None, repr=False)  # the imported label it starts from (a MaskPrompt)
    start_source: str | None = None  # where that label came from ("labels.nii.gz:5")
    edits: int = field(default=0, repr=False)  # prompt changes so far: tells a request it was superseded

    def prompt(self):
        from segvol.infer.prompts import Prompt

        return Prompt(
            text=self.text,
            box=self.box,
            points=self.points or None,
            point_labels=self.point_labels or None,
            name=self.name,
            init_mask=self.start_source if self.start is not None else None,
        )

    def has_prompt(self) -> bool:
        return bool(self.text or self.box or self.points or self.start is not None)

    def start_mask(self, shape) -> np.ndarray | None:
        """The imported label as a (D, H, W) bool mask of the whole volume, or None."""
        if self.start is None:
            return None
        from segvol.infer.geometry import box_slices

        mask = np.zeros(shape, dtype=bool)
        mask[box_slices(self.start.region)] = self.start.values.numpy()
        return mask

    def record(self) -> dict:
        return {
            "name": self.name,
            "colour": self.colour,
            "text": self.text,
            "box": self.box,
            "points": self.points,
            "point_labels": self.point_labels,
            "start": self.start_source,
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
            self.start,
            self.start_source,
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
            start=state.start,
            start_source=state.start_source,
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
    start: object | None = None  # shared, never changed: a MaskPrompt
    start_source: str | None = None


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
        self.lock = threading.RLock()  # the state: prompts, masks, the open image
        self.computing = threading.Lock()  # the session: one segmentation at a time
        self.edits = 0  # changes of objects and masks so far (a failed request undoes its own only if none since)
        self.labels = None  # the loaded label map: {"array", "source", "names"}
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
            self.labels = None
            self.history.clear()
            self.edits += 1
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
                "labels": None if self.labels is None else self.labels["source"],
                "version": self.edits,  # grows with every change: an answer with a lower one is older
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
            yield before
        except BaseException:
            self.objects = self._restore(before)
            raise
        self.history.push(before)
        self.edits += 1

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
            with self._edit() as before:
                item.points.append(list(voxel))
                item.point_labels.append(1 if positive else 0)
            request = self._request(item, before)
        return self._segment(request)

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
            with self._edit() as before:
                for axis in axes:
                    item.box_draft[axis], item.box_draft[axis + 3] = sorted((first[axis], second[axis]))
                if min(item.box_draft) >= 0:
                    item.box = list(item.box_draft)
            if min(item.box_draft) < 0:
                return {**self.describe(), "waiting": "drag the box on a second view"}
            request = self._request(item, before)
        return self._segment(request)

    def set_text(self, name: str, text: str | None) -> dict:
        text = plain_text("" if text is None else text, "text prompt", MAX_TEXT)
        with self.lock:
            self._require_image()
            item = self._object(name)
            with self._edit() as before:
                item.text = text or None
            request = self._request(item, before)
        return self._segment(request)

    def undo(self) -> dict:
        with self.lock:
            self._require_image()
            if not len(self.history):
                raise ValueError("nothing to undo")
            self.objects = self._restore(self.history.pop())
            self.edits += 1
            return self.describe()

    def _request(self, item: SegmentedObject, before: tuple) -> dict:
        """A segmentation request for `item`'s prompts as they are now (call with the lock held)."""
        item.edits += 1
        return {"item": item, "edit": item.edits, "before": before, "version": self.edits}

    def _check_current(self, request: dict) -> None:
        """Superseded unless the request's object is still shown and has not changed since (lock held)."""
        item = request["item"]
        if item.edits != request["edit"] or not any(o is item for o in self.objects):
            raise Superseded(f"superseded: a newer request for object {item.name!r} came in")

    def _segment(self, request: dict) -> dict:
        """Segment a request's object under its prompts (the one place a segmentation runs) and show it,
        unless a newer request for that object came in meanwhile (`Superseded`, before any work if it can)."""
        import torch

        from segvol.infer.geometry import box_slices

        item = request["item"]
        with self.computing:
            with self.lock:
                self._check_current(request)
                session = self.session
                prompts = dict(
                    text=item.text,
                    box=item.box,
                    points=[list(p) for p in item.points],
                    labels=list(item.point_labels),
                    mask=item.start,
                )
            started = time.perf_counter()
            try:
                mask = None
                if item.has_prompt():
                    session.set_prompts(item.name, **prompts)
                    with torch.inference_mode():  # the session keeps embeddings and decodes between edits
                        region, logits = session.region_logits(item.name)
                    mask = np.zeros(tuple(session.volume.shape), dtype=bool)
                    mask[box_slices(region)] = (logits > 0).numpy()
            except BaseException:
                with self.lock:
                    if self.edits == request["version"]:  # nothing else changed since: undo this change
                        self.objects = self._restore(request["before"])
                        self.history.pop()
                        self.edits += 1
                raise
            seconds = time.perf_counter() - started
            with self.lock:
                self._check_current(request)
                item.mask = mask
                self.edits += 1
                self.last_seconds = seconds
                log.info("%s: %d voxels in %.2f s", item.name, 0 if mask is None else int(mask.sum()), seconds)
                return self.describe()

    # -- label maps ---------------------------------------------------------------------------

    def load_labels(self, path: str | Path, source: str | None = None) -> dict:
        """Read a label map (already checked to be allowed) on the open image's grid and keep it;
        returns its label values (with names from a sidecar when there is one) and voxel counts.
        `source`: how it is named to the user (default: its path relative to the served folder)."""
        from segvol.io import read_label

        path = Path(path)
        with self.lock:
            self._require_image()
            image = self.image
        try:
            labels = read_label(path, image)
        except ValueError as error:  # the first line says what is wrong; the rest lists affines
            raise ValueError(str(error).splitlines()[0].rstrip(":")) from None
        array = labels.array
        values, counts = np.unique(array[array != 0], return_counts=True)
        if len(values) == 0:
            raise ValueError(f"{path}: the label map has no label (every voxel is 0)")
        if source is None:
            source = path.resolve().relative_to(self.root).as_posix()
        names = label_names(path, self.root)  # none for an upload (outside the served folder)
        listed = [
            {"value": int(v), "voxels": int(n), "name": names.get(int(v))}
            for v, n in zip(values[:LISTED_LABELS], counts[:LISTED_LABELS])
        ]
        with self.lock:
            if self.image is not image:
                raise Superseded("superseded: another image was opened")
            self.labels = {"array": array, "source": source, "names": names}
            return {"source": source, "labels": listed, "more": max(0, len(values) - LISTED_LABELS)}

    def import_label(self, value: int, name: str = "") -> dict:
        """A new object started from label `value` of the loaded label map: its mask is that label, and
        clicks, a box or a text then edit it (`Session.set_mask`)."""
        from segvol.infer.mask_prompts import MaskPrompt

        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"label must be an integer, not {_json_type(value)}")
        name = plain_text(name, "object name", MAX_NAME)
        with self.lock:
            self._require_image()
            if self.labels is None:
                raise ValueError("no label map is loaded: open or upload one first")
            mask = self.labels["array"] == value
            start = MaskPrompt.from_mask(mask)
            if start is None:
                raise ValueError(f"{self.labels['source']}: has no voxel of label {value}")
            name = name or self.labels["names"].get(int(value)) or f"label {value}"
            name = plain_text(name, "object name", MAX_NAME)
            taken = {o.name for o in self.objects}
            unique, number = name, 2
            while unique in taken:
                unique, number = f"{name} ({number})", number + 1
            with self._edit():
                item = SegmentedObject(unique, COLOURS[len(self.objects) % len(COLOURS)])
                item.start, item.start_source = start, f"{self.labels['source']}:{int(value)}"
                item.mask = mask  # the object is the label until a prompt edits it
                self.objects.append(item)
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
                # the crosshair's row and column on this picture (the slice's own axes, flipped as shown)
                d, h, w = (int(np.clip(c, 0, n - 1)) for c, n in zip(cross, self.hu.shape))
                rows, columns = picture.shape
                row_of, column_of = {"axial": (h, w), "coronal": (d, w), "sagittal": (d, h)}[view]
                line = np.zeros((rows, columns), dtype=bool)
                line[rows - 1 - row_of, :] = line[:, columns - 1 - column_of] = True
                rgb[line] = 0.5 * rgb[line] + 0.5 * np.array([255, 230, 0], dtype=np.float32)
            picture = rgb.astype(np.uint8)
        buffer = io.BytesIO()  # encoded outside the lock: a slow PNG holds no one up
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
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
                if item.start is not None:
                    record["init_mask"] = item.start_source
                records.append(record)
            if not records:
                raise ValueError("no object has a prompt yet")
            return records

    def export(self, name: str) -> dict:
        """Write `<name>.nii.gz` and its JSON into the served folder, exactly as `segvol predict` would."""
        from segvol.infer.predict import predict_file

        name = export_file_name(name)
        with self.computing:  # the model, not the state: slices render meanwhile
            with self.lock:
                records = self.export_records()
                source, output, shape = self.source, self.root / name, self.hu.shape
                starts = {o.name: o.start_mask(shape) for o in self.objects if o.start is not None}
            description = predict_file(
                self.model,
                source,
                output,
                records,
                mode=self.mode,
                weights=getattr(self, "weights", ""),
                init_masks=starts,
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


def label_names(path: Path, root: Path) -> dict[int, str]:
    """Names of a label map's values from a sidecar next to it, when there is one: ``<stem>.json`` (the
    manifest `segvol predict` writes, ``{"labels": {"1": "liver"}}``, or a plain ``{"1": "liver"}``) or
    ``labels.txt`` (lines ``ID NAME``, or ITK-SNAP's ``ID R G B A VIS MESH "NAME"``). Only files inside
    `root` are read (no link out of it), at most `SIDECAR_BYTES`; a sidecar that cannot be read is ignored."""
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    for sidecar in (path.with_name(stem + ".json"), path.with_name("labels.txt")):
        try:
            resolved = sidecar.resolve(strict=True)
            if root not in resolved.parents or not resolved.is_file() or resolved.stat().st_size > SIDECAR_BYTES:
                continue
            text = resolved.read_text(encoding="utf-8")
        except (OSError, RuntimeError, UnicodeDecodeError):
            continue
        names = _json_names(text) if sidecar.suffix == ".json" else _text_names(text)
        if names:
            return names
    return {}


def _clean_name(value) -> str | None:
    try:
        name = plain_text(value, "label name", MAX_NAME)
    except ValueError:
        return None
    return name or None


def _json_names(text: str) -> dict[int, str]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict):
        return {}
    names = {}
    for key, value in data.items():
        if isinstance(key, str) and re.fullmatch(r"[0-9]{1,9}", key) and int(key) != 0:
            name = _clean_name(value)
            if name:
                names[int(key)] = name
    return names


def _text_names(text: str) -> dict[int, str]:
    names = {}
    for line in text.splitlines()[:100_000]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        quoted = re.fullmatch(r"([0-9]{1,9})\s+(?:[-0-9.]+\s+){6}\"(.*)\"", line)  # ITK-SNAP
        plain = quoted or re.fullmatch(r"([0-9]{1,9})[\s:=,]+(.+)", line)
        if plain and int(plain[1]) != 0:
            name = _clean_name(plain[2])
            if name:
                names[int(plain[1])] = name
    return names
