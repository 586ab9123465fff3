"""Adapters from the raw layouts of public datasets to the raw dataset contract (`dataset.json`).

Each adapter looks at an unpacked dataset folder and returns the `dataset.json` document that
describes it (see CONTRIBUTING.md, "Raw dataset contract"); files stay where the archive put
them, except per-structure masks, which are merged into one label map per case.

| layout          | source formats                                                        |
|-----------------|-----------------------------------------------------------------------|
| `m3d`           | M3D-Seg release: `<code>/<code>.json`, `image.npy`, `mask_(C, X, Y, Z).npz` |
| `paired`        | MSD tasks, nnU-Net folders, KiTS, AMOS, SegTHOR, ULS23 (zipped labels)  |
| `per_structure` | TotalSegmentator: `<case>/ct.nii.gz` + `<case>/segmentations/*.nii.gz` |
| `dicom`         | one DICOM series folder per case (+ label map template or PNG slices) |
| `volumes`       | unlabelled volumes (manifest shards)                                   |
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from segvol.download.registry import categories as registry_categories

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".ima", "")
# A single zipped label map (ULS23 ships `<case>.nii.gz.zip`) larger than this is refused.
MAX_ZIPPED_LABEL_BYTES = 4 << 30


def _visible(path: Path, root: Path) -> bool:
    """Skip macOS resource forks (`._x.nii.gz`, shipped inside the MSD tarballs) and hidden files."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


PLACEHOLDER = re.compile(r"\{(case|group)\}")


def _template_regex(template: str) -> re.Pattern:
    """Regex for a path template with `{case}` (required) and `{group}` (optional subset)."""
    if "{case}" not in template:
        raise ValueError(f"layout template {template!r} must contain {{case}}")
    pattern, seen, position = "", set(), 0
    for match in PLACEHOLDER.finditer(template):
        pattern += re.escape(template[position : match.start()])
        field = match[1]
        pattern += f"(?P={field})" if field in seen else f"(?P<{field}>[^/]+?)"
        seen.add(field)
        position = match.end()
    return re.compile("^" + pattern + re.escape(template[position:]) + "$")


def fill(template: str, fields: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: fields[m[1]], template)


def match_template(root: Path, template: str, want_dirs: bool = False) -> dict[str, tuple[Path, dict]]:
    """`{case id: (path, placeholder values)}` for paths under `root` matching `template`.

    With a `{group}` placeholder (several subsets in one dataset) the id is `<group>_<case>`.
    """
    regex = _template_regex(template)
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(root.glob(PLACEHOLDER.sub("*", template))):
        if not _visible(path, root) or path.is_dir() != want_dirs:
            continue
        match = regex.match(path.relative_to(root).as_posix())
        if match:
            fields = match.groupdict()
            case_id = f"{fields['group']}_{fields['case']}" if "group" in fields else fields["case"]
            found[case_id] = (path, fields)
    return found


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _document(name: str, entry: dict, cats: dict, cases: list[dict]) -> dict:
    if not cases:
        raise ValueError(f"{name}: no cases found for layout {entry['layout']}")
    expected = entry.get("n_cases")
    if expected and entry["role"] != "unlabelled" and len(cases) != expected:
        log.warning(
            "%s: %d cases found, the registry expects %d (another release or revision?)", name, len(cases), expected
        )
    return {
        "name": name,
        "role": entry["role"],
        "modality": entry["modality"],
        "categories": cats,
        "cases": sorted(cases, key=lambda case: case["id"]),
    }


def _filter_cases(found: dict, layout: dict) -> dict:
    pattern = layout.get("case_pattern")
    if not pattern:
        return found
    regex = re.compile(pattern)
    return {case: path for case, path in found.items() if regex.fullmatch(case)}


def _labels_from_source_json(path: Path) -> dict[str, list[int]]:
    """Label map of an MSD (`{"1": "liver"}`) or nnU-Net v2 (`{"liver": 1}`) dataset.json."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path}: cannot read a 'labels' map: {error}") from None
    result: dict[str, list[int]] = {}
    for key, value in labels.items():
        if str(key).isdigit():  # MSD: value -> name
            if int(key) != 0:
                result.setdefault(str(value), []).append(int(key))
        elif isinstance(value, list):  # nnU-Net region: name -> [values]
            result[key] = sorted(int(v) for v in value)
        elif int(value) != 0:  # nnU-Net: name -> value
            result.setdefault(key, []).append(int(value))
    return result


def _categories(root: Path, name: str, entry: dict) -> dict[str, list[int]]:
    cats = registry_categories(entry)
    source_json = entry["layout"].get("labels_from")
    if source_json:
        from_source = _labels_from_source_json(root / source_json)
        if cats and cats != from_source:
            log.warning("%s: registry labels differ from %s; using the registry", name, source_json)
        cats = cats or from_source
    if not cats:
        raise ValueError(f"{name}: no label map (set 'labels' in the registry or layout.labels_from)")
    return cats


def unzip_label(archive: Path, out_stem: Path) -> Path:
    """The one label map inside `archive` (e.g. ULS23 `labels/<case>.nii.gz.zip`) -> `<out_stem><suffix>`.

    The member's own name is never used as a path (only its suffix), so an archive cannot write
    outside `out_stem`'s folder; anything but exactly one file inside is an error.
    """
    from segvol.io.atomic import atomic_path

    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [
                i
                for i in bundle.infolist()
                if not i.is_dir() and not Path(i.filename).name.startswith((".", "__MACOSX"))
            ]
            if len(members) != 1:
                raise ValueError(f"{archive}: expected one zipped label map, found {[i.filename for i in members][:5]}")
            member = members[0]
            if member.file_size > MAX_ZIPPED_LABEL_BYTES:
                raise ValueError(f"{archive}: {member.file_size} unpacked bytes exceed the limit")
            member_name = Path(member.filename).name
            suffix = ".nii.gz" if member_name.endswith(".nii.gz") else Path(member_name).suffix
            out = out_stem.with_name(out_stem.name + suffix)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as temporary, bundle.open(member) as source, open(temporary, "wb") as target:
                shutil.copyfileobj(source, target)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: corrupt zipped label: {error}") from None
    return out


def paired(root: Path, name: str, entry: dict) -> dict:
    """Image and label found by templates such as `imagesTr/{case}_0000.nii.gz`.

    A label template ending in `.zip` (ULS23: one zipped NIfTI per case) is unpacked into
    `labels/<case id>.nii.gz`.
    """
    layout = entry["layout"]
    images = _filter_cases(match_template(root, layout["image"]), layout)
    label_template = layout.get("label")
    cases, missing = [], []
    for case, (image, fields) in images.items():
        label = None
        if label_template:
            label_path = root / fill(label_template, fields)
            if not label_path.is_file():
                missing.append(_relative(label_path, root))
                continue
            if label_path.name.lower().endswith(".zip"):
                label_path = unzip_label(label_path, root / "labels" / case)
            label = _relative(label_path, root)
        cases.append({"id": case, "image": _relative(image, root), "label": label})
    if missing:
        raise ValueError(f"{root}: {len(missing)} label file(s) missing, e.g. {missing[:3]}")
    cats = _categories(root, name, entry) if label_template else {}
    return _document(name, entry, cats, cases)


def _dicom_series_folder(case_dir: Path) -> Path | None:
    """The folder under `case_dir` holding the most DICOM-looking files (one series per case)."""
    best, best_count = None, 0
    for folder in [case_dir, *sorted(p for p in case_dir.rglob("*") if p.is_dir())]:
        count = sum(
            1
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in DICOM_SUFFIXES
        )
        if count > best_count:
            best, best_count = folder, count
    return best


def dicom(root: Path, name: str, entry: dict) -> dict:
    """One case per folder matching `layout.image` (e.g. `{case}`); the series may sit deeper.

    Labels: a label-map template (`layout.label`), or one 2-D label image per DICOM file
    (`layout.label_slices`, CHAOS) stacked into `labels/<case>.nii.gz` on the series' grid.
    """
    layout = entry["layout"]
    case_dirs = _filter_cases(match_template(root, layout["image"], want_dirs=True), layout)
    label_template = layout.get("label")
    slices_template = layout.get("label_slices")
    cases = []
    for case, (case_dir, fields) in case_dirs.items():
        series = _dicom_series_folder(case_dir)
        if series is None:
            raise ValueError(f"{case_dir}: no DICOM files found for case {case}")
        label = None
        if label_template:
            label_path = root / fill(label_template, fields)
            if not label_path.is_file():
                raise ValueError(f"{label_path}: label map of DICOM case {case} not found")
            label = _relative(label_path, root)
        elif slices_template:
            out = root / "labels" / f"{case}.nii.gz"
            stack_label_slices(series, root / fill(slices_template, fields), layout.get("label_ranges") or {}, out)
            label = _relative(out, root)
        cases.append({"id": case, "image": _relative(series, root), "label": label})
    cats = _categories(root, name, entry) if (label_template or slices_template) else {}
    return _document(name, entry, cats, cases)


def stack_label_slices(series: Path, slices: Path, ranges: dict, out: Path) -> Path:
    """Stack one 2-D label image per DICOM file of `series` (matched by file stem) into a label map.

    The images are put in the slice order SimpleITK reads the series in, row/column as the DICOM
    pixel data, and written on the series' grid (spacing, origin, direction) as NIfTI. A pixel in
    `ranges[value] = [low, high]` gets `value`; anything else is background.
    """
    import SimpleITK as sitk
    from PIL import Image

    from segvol.io.atomic import atomic_path

    if not slices.is_dir():
        raise ValueError(f"{slices}: folder of label slices not found")
    if not ranges:
        raise ValueError(f"{slices}: label_slices needs label_ranges (label value -> [low, high])")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))
    if not files:
        raise ValueError(f"{series}: no readable DICOM series")
    images = {p.stem: p for p in slices.iterdir() if p.is_file() and not p.name.startswith(".")}
    missing = [Path(f).name for f in files if Path(f).stem not in images]
    if missing:
        raise ValueError(f"{slices}: no label image for {len(missing)} DICOM file(s) of {series}, e.g. {missing[0]}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reference = reader.Execute()
    depth, height, width = sitk.GetArrayViewFromImage(reference).shape[:3]
    stack = np.zeros((depth, height, width), dtype=np.uint8)
    for index, file in enumerate(files):
        path = images[Path(file).stem]
        try:
            pixels = np.asarray(Image.open(path).convert("L"))
        except Exception as error:
            raise ValueError(f"{path}: unreadable label image ({error})") from error
        if pixels.shape != (height, width):
            raise ValueError(
                f"{path}: label image is {pixels.shape[1]}x{pixels.shape[0]}, its DICOM slice {width}x{height}"
            )
        for value, (low, high) in ranges.items():
            stack[index][(pixels >= low) & (pixels <= high)] = int(value)
    label = sitk.GetImageFromArray(stack)
    label.CopyInformation(reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        sitk.WriteImage(label, str(temporary), True)
    return out


def per_structure(root: Path, name: str, entry: dict) -> dict:
    """Merge per-structure binary masks into `labels/<case>.nii.gz` (value from the registry).

    Structures missing from the registry's label map get values after the largest registered
    one, in sorted name order, so every case of a dataset uses the same value for a name.
    Where masks overlap, the structure with the larger value wins (logged per case).
    """
    import nibabel as nib

    layout = entry["layout"]
    images = _filter_cases(match_template(root, layout["image"]), layout)
    mask_dirs = {case: root / fill(layout["masks"], fields) for case, (_, fields) in images.items()}
    value_of = {label: int(v) for v, label in (entry.get("labels") or {}).items()}
    stems = sorted(
        {
            p.name[: -len(".nii.gz")]
            for folder in mask_dirs.values()
            if folder.is_dir()
            for p in folder.glob("*.nii.gz")
            if not p.name.startswith(".")
        }
    )
    next_value = max(value_of.values(), default=0) + 1
    for stem in stems:
        if stem not in value_of:
            value_of[stem] = next_value
            next_value += 1
    (root / "labels").mkdir(exist_ok=True)
    cases = []
    for case, (image, _fields) in images.items():
        folder = mask_dirs[case]
        if not folder.is_dir():
            raise ValueError(f"{folder}: mask folder of case {case} not found")
        reference = nib.load(image)
        dtype = np.uint8 if next_value < 256 else np.uint16
        merged = np.zeros(reference.shape[:3], dtype=dtype)
        overlaps = 0
        for stem in sorted(value_of, key=value_of.get):
            mask_path = folder / f"{stem}.nii.gz"
            if not mask_path.is_file():
                continue
            mask_img = nib.load(mask_path)
            if mask_img.shape[:3] != reference.shape[:3] or not np.allclose(
                mask_img.affine, reference.affine, atol=1e-3
            ):
                raise ValueError(f"{mask_path}: grid differs from {image} (shape/affine)")
            mask = np.asarray(mask_img.dataobj) > 0
            overlaps += int(np.count_nonzero(mask & (merged > 0)))
            merged[mask] = value_of[stem]
        if overlaps:
            log.info("%s: %d voxels in more than one structure (larger value kept)", case, overlaps)
        out = root / "labels" / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(merged, reference.affine), out)
        cases.append({"id": case, "image": _relative(image, root), "label": _relative(out, root)})
    cats = {stem.replace("_", " "): [value] for stem, value in sorted(value_of.items(), key=lambda kv: kv[1])}
    return _document(name, entry, cats, cases)


def _find_m3d_json(root: Path, code: str) -> Path:
    candidates = sorted(p for p in root.rglob(f"{code}.json") if _visible(p, root))
    if not candidates:
        raise ValueError(f"{root}: M3D-Seg dataset json '{code}/{code}.json' not found")
    return candidates[0]


def _resolve_m3d_path(value: str, json_path: Path, root: Path) -> Path:
    """Paths in the release json are relative to the code folder or to its parent; try both."""
    value = value.replace("\\", "/").lstrip("./")
    for base in (json_path.parent.parent, json_path.parent, root):
        if (base / value).exists():
            return base / value
    # Absolute paths of the authors' machine: keep the last <case>/<file> components.
    tail = Path(*Path(value).parts[-2:])
    if (json_path.parent / tail).exists():
        return json_path.parent / tail
    raise ValueError(f"{json_path}: listed file {value!r} not found in the unpacked release")


def m3d(root: Path, name: str, entry: dict) -> dict:
    """M3D-Seg release: category names from `<code>.json`, one case per `image.npy` folder."""
    from segvol.io.m3d import MASK_NAME, mask_shape

    code = entry["layout"].get("code") or entry.get("m3d_code")
    json_path = _find_m3d_json(root, code)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path}: not valid JSON: {error}") from None
    labels = {int(k): str(v) for k, v in meta.get("labels", {}).items() if int(k) != 0}
    if not labels:
        raise ValueError(f"{json_path}: no 'labels' map")
    cats: dict[str, list[int]] = {}
    for value, label in sorted(labels.items()):
        cats.setdefault(label, []).append(value)
    registry = registry_categories(entry)
    if registry and registry != cats:
        log.warning("%s: registry labels differ from %s; using the release json", name, json_path)

    pairs = []
    for key in ("train", "test", "training", "validation"):
        for item in meta.get(key, []) or []:
            pairs.append((item["image"], item.get("label")))
    if not pairs:  # no lists: every folder with an image.npy is a case
        pairs = [(_relative(p, json_path.parent.parent), None) for p in sorted(json_path.parent.rglob("image.npy"))]
    cases, seen = [], set()
    for image_value, label_value in pairs:
        image = _resolve_m3d_path(image_value, json_path, root)
        case_dir = image.parent
        if label_value:
            label = _resolve_m3d_path(label_value, json_path, root)
        else:
            masks = [p for p in case_dir.iterdir() if MASK_NAME.match(p.name)]
            if len(masks) != 1:
                raise ValueError(f"{case_dir}: expected one mask_(C, X, Y, Z).npz, found {len(masks)}")
            label = masks[0]
        channels = mask_shape(label)[0]
        if channels != len(labels):
            raise ValueError(f"{label}: {channels} channels but {json_path} names {len(labels)} labels")
        case_id = _relative(case_dir, json_path.parent).replace("/", "_")
        if case_id in seen:
            continue
        seen.add(case_id)
        cases.append({"id": case_id, "image": _relative(image, root), "label": _relative(label, root)})
    return _document(name, entry, cats, cases)


def volumes(root: Path, name: str, entry: dict) -> dict:
    """Unlabelled volumes listed in `images/` (written by the manifest shard download)."""
    images = sorted(p for p in (root / "images").iterdir() if _visible(p, root))
    cases = [{"id": p.name.split(".")[0], "image": _relative(p, root), "label": None} for p in images]
    return _document(name, entry, {}, cases)


ADAPTERS = {
    "m3d": m3d,
    "paired": paired,
    "per_structure": per_structure,
    "dicom": dicom,
    "volumes": volumes,
}


def describe(root: str | Path, name: str, entry: dict) -> dict:
    """The `dataset.json` document of the unpacked dataset at `root`."""
    kind = entry["layout"]["kind"]
    return ADAPTERS[kind](Path(root), name, entry)
