"""What the user asks for: one `Prompt` per category, in voxel indices of a given volume."""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segvol.infer.geometry import VoxelMap, box_is_empty

MAX_PROMPT_FILE_BYTES = 8 << 20
MAX_POINTS = 100_000
MAX_NAME_LENGTH = 1000
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxstring, _BRIEF.maxother = 2, 6, 60, 40
_brief = _BRIEF.repr  # a bounded repr, whatever the value (reprlib looks at a few items per level)


@dataclass
class Prompt:
    """Text, box and points for one category; any combination, at least one of them.

    Coordinates are voxel indices of the volume the prompt is given with.

    - ``text``: category name, e.g. ``"liver"`` (the model wraps it in its template).
    - ``box``: 6 ints ``(d0, h0, w0, d1, h1, w1)``, inclusive.
    - ``points``: ``(N, 3)`` voxel indices; ``point_labels``: ``(N,)`` with 1 = inside the
      object, 0 = outside it.
    - ``name``: how outputs call the category (defaults to the text, else ``"prompt<i>"``).
    - ``init_mask``: ``"LABELS:ID"``, the category starts from label ID of that label file (`read_init_mask`)
      and the other prompts, if any, refine it; the only prompt a category may have alone besides the three.
    """

    text: str | None = None
    box: Sequence[int] | None = None
    points: Sequence[Sequence[float]] | np.ndarray | None = None
    point_labels: Sequence[int] | np.ndarray | None = None
    name: str | None = field(default=None, compare=False)
    init_mask: str | None = None

    def __post_init__(self) -> None:
        _check_nesting(self.box, self.points, self.point_labels)
        if self.text is not None:
            if not isinstance(self.text, str) or not self.text.strip():
                raise ValueError(f"text prompt must be a non-empty string, got {_kind(self.text)}")
            self.text = self.text.strip()
        if self.box is not None:
            box = np.asarray(self.box)
            if box.shape != (6,) or not np.all(np.isfinite(box.astype(np.float64))):
                raise ValueError(f"box must be 6 numbers (d0, h0, w0, d1, h1, w1), got {_brief(self.box)}")
            if not np.all(box == np.round(box)):
                raise ValueError(f"box must be integer voxel indices, got {_brief(self.box)}")
            box = box.astype(np.int64)
            if box_is_empty(box):
                axes = [a for a in range(3) if box[a] > box[a + 3]]
                detail = ", ".join(f"axis {a}: {box[a]} > {box[a + 3]}" for a in axes)
                raise ValueError(
                    f"box {box.tolist()} is inverted ({detail}); give the lower corner first, "
                    "i.e. (first0, first1, first2, last0, last1, last2), inclusive"
                )
            self.box = box
        if self.points is not None:
            points = np.asarray(self.points, dtype=np.float64)
            if points.ndim == 1 and points.size == 3:
                points = points[None]
            if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
                raise ValueError(f"points must be (N, 3) voxel indices, got shape {points.shape}")
            if not np.all(np.isfinite(points)):
                raise ValueError("points contain NaN or infinite coordinates")
            labels = np.ones(len(points), np.int64) if self.point_labels is None else np.asarray(self.point_labels)
            if labels.shape != (len(points),):
                raise ValueError(f"{len(points)} points need {len(points)} point labels, got shape {labels.shape}")
            if not np.all(np.isin(labels, (0, 1))):
                raise ValueError(f"point labels must be 1 (inside) or 0 (outside), got {np.unique(labels).tolist()}")
            self.points = points
            self.point_labels = labels.astype(np.int64)
        elif self.point_labels is not None:
            raise ValueError("point labels were given without points")
        if self.text is None and self.box is None and self.points is None and self.init_mask is None:
            raise ValueError("a prompt needs at least one of text, box or points")

    @property
    def label(self) -> str:
        return self.name or self.text or "prompt"

    def check_inside(self, shape: Sequence[int], where: str = "the volume") -> None:
        """Raise ValueError when the box or a point lies outside a grid of ``shape``."""
        shape = np.asarray(shape, dtype=np.int64)
        if self.box is not None:
            box = np.asarray(self.box)
            if np.any(box[:3] < 0) or np.any(box[3:] >= shape):
                raise ValueError(
                    f"prompt '{self.label}': box {box.tolist()} reaches outside {where} of shape {shape.tolist()}"
                )
        if self.points is not None:
            outside = np.any((self.points < -0.5) | (self.points > shape - 0.5), axis=1)
            if outside.any():
                raise ValueError(
                    f"prompt '{self.label}': point {self.points[outside][0].tolist()} lies outside "
                    f"{where} of shape {shape.tolist()}"
                )

    def mapped(self, voxel_map: VoxelMap, shape: Sequence[int]) -> Prompt:
        """The same prompt in another grid (box covered, points rounded, both clipped to ``shape``)."""
        box = None if self.box is None else voxel_map.map_box(self.box, shape)
        if box is not None and box_is_empty(box):
            raise ValueError(f"prompt '{self.label}': box {list(self.box)} falls outside the target grid")
        points = None if self.points is None else voxel_map.map_points(self.points, shape)
        return Prompt(
            text=self.text,
            box=box,
            points=points,
            point_labels=self.point_labels,
            name=self.name,
            init_mask=self.init_mask,
        )


def parse_init_mask(spec) -> tuple[Path, int]:
    """``"LABELS:ID"`` (``--init-mask``) -> (the label file, the label value); ValueError/FileNotFoundError
    in one line otherwise. The last ':' separates them, so a path may hold ':' itself."""
    match = re.fullmatch(r"(.+):(-?[0-9]{1,9})", spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"--init-mask {_brief(spec)}: expected LABELS:ID, a label file and one of its label values "
            "(e.g. labels.nii.gz:5)"
        )
    path, label = Path(match[1]), int(match[2])
    if label < 1:
        raise ValueError(f"--init-mask {spec}: label {label} is not an object (0 is the background); give an ID >= 1")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file (--init-mask {spec})")
    return path, label


def read_init_mask(spec: str, image) -> np.ndarray:
    """The ``(D, H, W)`` bool mask of label ID of the ``"LABELS:ID"`` file, on the canonical grid of
    `image` (a `segvol.io` image); the file must lie on the image's grid and hold that label."""
    from segvol.io import read_label

    path, label = parse_init_mask(spec)
    try:
        labels = read_label(path, image)
    except ValueError as error:  # the first line says what differs; the rest lists both affines
        raise ValueError(str(error).splitlines()[0].rstrip(":")) from None
    mask = labels.array == label
    if not mask.any():
        present = np.unique(labels.array)
        present = [int(v) for v in present[present != 0]]
        raise ValueError(
            f"{path}: has no voxel of label {label} (--init-mask {spec}); its labels: {_brief(present) or 'none'}"
        )
    return mask


def prompts_from_records(records: Any, source: str = "prompt file") -> list[Prompt]:
    """Prompts from a list of dicts ``{"name", "text", "box", "points", "point_labels"}``.

    A dict keyed by name (``{"liver": {...}}``) is accepted too. Unknown keys are an error;
    ``_origin`` (where the record came from, e.g. "--box/--point") only names it in errors.
    """
    records = _as_record_list(records, source)
    allowed = {"name", "text", "box", "points", "point_labels", "init_mask"}
    prompts = []
    for index, record in enumerate(records):
        check_record_types(record, f"{source}: prompt {index}")
        described = describe_record(record, index)
        record = {key: value for key, value in record.items() if key != "_origin"}
        unknown = sorted(set(record) - allowed)
        if unknown:
            raise ValueError(f"{source}: {described} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        try:
            prompts.append(Prompt(**record))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {described}: {error}") from None
    names = [p.label for p in prompts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: duplicate prompt names {duplicates}; give each entry a unique 'name'")
    return prompts


def _as_record_list(records: Any, source: str) -> list[dict]:
    """A list of record mappings from a list, or from a mapping name -> record."""
    if isinstance(records, dict):
        if not all(value is None or isinstance(value, dict) for value in records.values()):
            raise ValueError(f"{source}: expected a mapping of prompt name -> prompt (a mapping)")
        if not all(isinstance(name, str) for name in records):
            raise ValueError(f"{source}: prompt names (the mapping's keys) must be strings")
        records = [{"name": name, **(value or {})} for name, value in records.items()]
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{source}: expected a non-empty list of prompts (mappings)")
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _kind(value) -> str:
    """What a value is, in a few words, without converting it (it may be huge)."""
    if isinstance(value, Mapping):
        return f"a mapping of {len(value)} keys"
    if _is_list(value):
        return f"a list of {len(value)} items"
    if isinstance(value, str):
        return f"the text {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if _is_number(value) or isinstance(value, bool) or value is None:
        return repr(value)
    return type(value).__name__


def _scalar_like(value) -> bool:
    return not isinstance(value, (list, tuple, Mapping, str, bytes))


def _check_nesting(box, points, point_labels) -> None:
    """Cheap structural checks before numpy converts `box` and `points`: a deeply nested list
    (e.g. of shared references) would cost minutes and gigabytes to convert or print."""
    if isinstance(box, (list, tuple)) and not (len(box) == 6 and all(_scalar_like(v) for v in box)):
        raise ValueError(f"box must be 6 numbers (d0, h0, w0, d1, h1, w1), got {_kind(box)}")
    if isinstance(points, (list, tuple)):
        flat = len(points) == 3 and all(_scalar_like(v) for v in points)
        if not flat and not (
            len(points) <= MAX_POINTS
            and all(_scalar_like(p) or (len(p) == 3 and all(_scalar_like(v) for v in p)) for p in points)
        ):
            raise ValueError(f"points must be (N, 3) voxel indices (N <= {MAX_POINTS:,}), got {_kind(points)}")
    if isinstance(point_labels, (list, tuple)) and not (
        len(point_labels) <= MAX_POINTS and all(_scalar_like(v) for v in point_labels)
    ):
        raise ValueError(f"point labels must be 1 (inside) or 0 (outside), got {_kind(point_labels)}")


def check_record_types(record: dict, where: str) -> None:
    """Refuse (one-line ValueError) a record whose values have the wrong types, before anything is
    converted or printed: `name`/`text` strings, `box` 6 numbers, `points` (N, 3) numbers,
    `point_labels` N zeros and ones."""
    for key in ("name", "text", "_origin", "init_mask"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: '{key}' must be a string, got {_kind(value)}")
        if isinstance(value, str) and len(value) > MAX_NAME_LENGTH:
            raise ValueError(f"{where}: '{key}' is {len(value)} characters long (at most {MAX_NAME_LENGTH})")
    box = record.get("box")
    if box is not None and not (_is_list(box) and len(box) == 6 and all(_is_number(v) for v in box)):
        raise ValueError(f"{where}: 'box' must be 6 numbers (d0, h0, w0, d1, h1, w1), got {_kind(box)}")
    points = record.get("points")
    if points is not None:
        if _is_list(points) and len(points) == 3 and all(_is_number(v) for v in points):
            points = [points]  # one point given flat
        if not (
            _is_list(points)
            and 0 < len(points) <= MAX_POINTS
            and all(_is_list(p) and len(p) == 3 and all(_is_number(v) for v in p) for p in points)
        ):
            raise ValueError(
                f"{where}: 'points' must be a list of up to {MAX_POINTS:,} points of 3 numbers, got {_kind(points)}"
            )
    labels = record.get("point_labels")
    if labels is not None and not (
        _is_list(labels) and len(labels) <= MAX_POINTS and all(_is_number(v) and v in (0, 1) for v in labels)
    ):
        raise ValueError(f"{where}: 'point_labels' must be a list of 1 (inside) or 0 (outside), got {_kind(labels)}")


def describe_record(record: dict, index: int) -> str:
    """How an error names a prompt: its position, name or text, and the flags that gave it."""
    label = record.get("name") or record.get("text")
    where = record.get("_origin")
    parts = [f"prompt {index}"]
    if isinstance(label, str) and label:
        parts.append(f"'{label[:60]}'")
    if isinstance(where, str) and where:
        parts.append(f"(from {where})")
    return " ".join(parts)


def _no_aliases_loader():
    """A YAML safe loader that refuses anchors and aliases (no "billion laughs" expansion)."""
    import yaml

    class PromptLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not allowed in prompt files", event.start_mark
                )
            return super().compose_node(parent, index)

    return PromptLoader


def read_prompt_records(path: str | Path) -> list[dict]:
    """The raw records of a JSON or YAML prompt file (a list, or a mapping name -> record)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise ValueError(
            f"prompt file {path} is {path.stat().st_size:,} bytes; prompt files are at most {MAX_PROMPT_FILE_BYTES:,}"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            records = yaml.load(text, Loader=_no_aliases_loader())  # noqa: S506 - a safe loader, aliases refused
        else:
            records = json.loads(text)
    except Exception as error:  # parser errors differ between json and yaml (and span lines)
        raise ValueError(f"prompt file {path} cannot be parsed: {' '.join(str(error).split())}") from None
    records = _as_record_list(records, f"prompt file {path}")
    for index, record in enumerate(records):
        check_record_types(record, f"prompt file {path}: prompt {index}")
    return records


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts from a JSON or YAML file (see `prompts_from_records`)."""
    return prompts_from_records(read_prompt_records(path), source=f"prompt file {path}")


# ------------------------------------------------------------------------------- records of `segvol predict`


def command_line_records(
    text: Sequence[str] = (),
    box: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] = (),
    negative_points: Sequence[Sequence[float]] = (),
    prompt_file: str | Path | None = None,
    strict: bool = False,
    checkpoint: str | Path | None = None,
    init_mask: str | None = None,
) -> list[dict]:
    """Prompt records from `segvol predict`'s --text/--box/--point/--negative-point/--prompts, coordinates as given.

    Text outside the vocabulary (plus what a local `checkpoint` records it was trained on) warns (`strict`:
    raises, with the closest names). `init_mask` (--init-mask LABELS:ID) starts the one category from that
    label; alone, it is the category (named "label ID").
    """
    records = []
    if prompt_file:
        for record in read_prompt_records(prompt_file):
            if "init_mask" in record:  # a file must not make us read other files
                raise ValueError(f"prompt file {prompt_file}: 'init_mask' is a command-line option (--init-mask)")
            records.append({**record, "_origin": f"prompt file {prompt_file}"})
    if box is not None or points or negative_points:
        if len(text) > 1:
            raise ValueError(
                "--box/--point describe one category: give at most one --text with them "
                "(use --prompts FILE for several)"
            )
        record = {"text": text[0] if text else None, "box": box, "_origin": "--box/--point/--negative-point"}
        if points or negative_points:
            record["points"] = [*points, *negative_points]
            record["point_labels"] = [1] * len(points) + [0] * len(negative_points)
        records.append(record)
    else:
        records.extend({"text": name, "_origin": "--text"} for name in text)
    if init_mask is not None:
        _, label = parse_init_mask(init_mask)
        if len(records) > 1:
            raise ValueError(
                f"--init-mask starts one category, but the prompts give {len(records)}; "
                "give the prompts of that one category only"
            )
        if not records:
            records.append({"name": f"label {label}", "_origin": "--init-mask"})
        records[0]["init_mask"] = init_mask
    if not records:
        raise ValueError("no prompt given: use --text, --box, --point or --prompts FILE")
    from segvol.vocabulary import check_text_prompt, known_categories

    local = [checkpoint] if checkpoint and "://" not in str(checkpoint) else []
    vocabulary = known_categories(checkpoints=local) if any(r.get("text") for r in records) else None
    for record in records:
        if record.get("text"):
            check_text_prompt(record["text"], strict=strict, vocabulary=vocabulary)
    return records


def without_coordinates(records: list[dict]) -> list[dict]:
    """Records with placeholder coordinates, to check everything else before an image gives them a meaning
    (world coordinates are converted, and every box and point is checked, per image)."""
    stripped = []
    for record in records:
        record = dict(record)
        if record.get("box") is not None:
            record["box"] = [0, 0, 0, 0, 0, 0]
        if record.get("points") is not None:
            record["points"] = [[0.0, 0.0, 0.0]] * len(record["points"])
        stripped.append(record)
    return stripped


def world_to_voxel_records(records: list[dict], image) -> list[dict]:
    """Replace RAS+ mm coordinates by voxel indices (i, j, k) of the input file of `image` (a `segvol.io` image).

    A world box is the axis-aligned box between two RAS+ corners; on an oblique grid its image
    in voxel space is a rotated box, so all eight corners are mapped and the voxel box covering
    them is used (two corners alone cut off parts of the object).
    """
    world_to_file = VoxelMap(np.linalg.inv(np.asarray(image.original_affine, dtype=np.float64)))
    converted = []
    for record in records:
        record = dict(record)
        if record.get("box") is not None:
            box = np.asarray(record["box"], dtype=np.float64)
            if box.shape != (6,) or not np.all(np.isfinite(box)):
                raise ValueError(f"box must be 6 numbers, got {record['box']!r}")
            low, high = np.minimum(box[:3], box[3:]), np.maximum(box[:3], box[3:])
            corners = np.array([[(high if (c >> a) & 1 else low)[a] for a in range(3)] for c in range(8)])
            voxels = world_to_file.apply(corners)
            # Voxels whose centre lies inside the world box: round inwards by less than half a voxel.
            first = np.floor(voxels.min(axis=0) + 0.5).astype(np.int64)
            last = np.floor(voxels.max(axis=0) + 0.5).astype(np.int64)
            record["box"] = np.concatenate([first, last]).tolist()
        if record.get("points") is not None:
            points = np.asarray(record["points"], dtype=np.float64).reshape(-1, 3)
            record["points"] = world_to_file.apply(points).tolist()
        converted.append(record)
    return converted


def to_canonical_prompts(prompts: list[Prompt], image) -> list[Prompt]:
    """Prompts in input-file voxels -> prompts in the canonical (D, H, W) voxels of `image`.

    The file-to-canonical map is the reorientation the reader applied, derived from the two
    affines (a pure axis permutation/flip), so a voxel index lands on the same physical voxel.
    """
    file_to_canonical = VoxelMap.from_affines(image.original_affine, image.affine)
    canonical = []
    for prompt in prompts:
        prompt.check_inside(image.original_shape, where=f"the image {image.source}")
        canonical.append(prompt.mapped(file_to_canonical, image.shape))
    return canonical


def prompts_on_image(records: list[dict], image, world: bool = False) -> tuple[list[Prompt], list[Prompt]]:
    """Records (input-file voxels, or RAS+ mm with `world`) -> (prompts in file voxels, canonical prompts)."""
    if world:
        records = world_to_voxel_records(records, image)
    prompts = prompts_from_records(records, source="prompts")
    return prompts, to_canonical_prompts(prompts, image)
