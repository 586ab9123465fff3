"""Your labelled CTs as a dataset: an nnU-Net v2 raw folder, or images/ + labels/ plus a names file.

Two layouts are read (docs/own-data.md#input):

- nnU-Net v2 raw dataset (the format most labelled CT collections already have):
  `dataset.json` with `channel_names` (one channel, `{"0": "CT"}`), `labels` (`{"background": 0,
  "liver": 1, ...}`; a list of ids is a region, as in nnU-Net's region-based training), `file_ending`
  and `numTraining`; `imagesTr/<case>_0000<file_ending>` and `labelsTr/<case><file_ending>`.
- a folder with `images/<case><ending>` and `labels/<case><ending>` (same names; NIfTI, NRRD or MHA)
  plus a names file (YAML or JSON `{name: id or [ids]}`, or an nnU-Net `dataset.json` whose `labels` it
  takes).

`read_source` checks everything that needs no image read (file pairs, names, channels, case ids, that no
file lies outside the folder) and returns the dataset in the shape `segvol.normalize.convert.load_dataset`
gives, so the normalize stage's writer turns it into a store; the checks that need the voxels (label grid
against image grid, label ids against the names) run there, before the store is renamed into place.
Every problem is one line naming the file. Why not nnU-Net's own `verify_dataset_integrity`: it asserts
(tracebacks, not a message naming the file), reads every image up front and knows nothing of SegVol's
single CT channel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from segvol.normalize.convert import CASE_ID
from segvol.vocabulary import canonical_name

# File endings our readers take (segvol.io.readers); nnU-Net's `file_ending` must be one of them.
FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
NNUNET_KEYS = ("channel_names", "labels", "file_ending")


def read_source(source: str | Path, names: str | Path | None = None) -> dict:
    """The dataset of `source` (either layout): {"name", "role": "train", "modality": "CT",
    "categories": {canonical name: sorted ids}, "cases": [{"id", "image", "label"}] sorted by id}."""
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: own-data source folder not found")
    if (folder / "dataset.json").is_file() and (folder / "imagesTr").exists():
        if names:
            raise ValueError(
                f"{names}: an nnU-Net dataset names its labels in {folder / 'dataset.json'}; give no names file"
            )
        return nnunet_dataset(folder)
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        if not names:
            raise ValueError(f"{folder}: a folder of images/ and labels/ needs a names file (own_data.names)")
        return paired_dataset(folder, Path(names))
    raise ValueError(
        f"{folder}: neither an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/) "
        "nor a folder of images/ and labels/"
    )


# ----------------------------------------------------------------------------------------- nnU-Net v2


def nnunet_dataset(folder: Path) -> dict:
    """An nnU-Net v2 raw dataset folder (module docstring)."""
    manifest = folder / "dataset.json"
    spec = _read_mapping(manifest)
    if "modality" in spec and "channel_names" not in spec:
        raise ValueError(
            f"{manifest}: an nnU-Net v1 dataset.json ('modality'); convert it with nnU-Net v2's "
            "nnUNetv2_convert_old_nnUNet_dataset first"
        )
    for key in NNUNET_KEYS:
        if key not in spec:
            raise ValueError(f"{manifest}: missing key '{key}' (nnU-Net v2 dataset.json)")
    if "dataset" in spec:
        raise ValueError(
            f"{manifest}: explicit file lists ('dataset') are not supported; put the files in imagesTr/ and labelsTr/"
        )
    _check_channels(spec["channel_names"], manifest)
    ending = spec["file_ending"]
    if ending not in FILE_ENDINGS:
        raise ValueError(
            f"{manifest}: file_ending {ending!r} is not a 3-D format SegVol reads ({', '.join(FILE_ENDINGS)})"
        )
    categories = label_categories(spec["labels"], manifest, background=True)
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for directory in (images_dir, labels_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: folder not found (nnU-Net v2 raw dataset)")
    images = {}
    for path in _files(images_dir, ending, folder):
        match = CHANNEL.match(path.name[: -len(ending)])
        if not match:
            raise ValueError(f"{path}: not named <case>_0000{ending} (nnU-Net's channel suffix)")
        if match["channel"] != "0000":
            raise ValueError(
                f"{path}: channel {match['channel']}: SegVol fine-tunes on one CT channel (<case>_0000{ending} only)"
            )
        images[match["case"]] = path
    labels = {path.name[: -len(ending)]: path for path in _files(labels_dir, ending, folder)}
    for case, path in sorted(images.items()):
        if case not in labels:
            raise FileNotFoundError(f"{labels_dir / (case + ending)}: label map of {path.name} not found")
    for case, path in sorted(labels.items()):
        if case not in images:
            raise FileNotFoundError(f"{images_dir / (case + '_0000' + ending)}: image of {path.name} not found")
    if not images:
        raise ValueError(f"{images_dir}: no training cases (<case>_0000{ending} files)")
    expected = spec.get("numTraining")
    if expected is not None and expected != len(images):
        raise ValueError(f"{manifest}: numTraining is {expected} but imagesTr/ holds {len(images)} case(s)")
    name = str(spec.get("name") or spec.get("dataset_name") or folder.name)
    return _dataset(name, categories, {case: (images[case], labels[case]) for case in images}, images_dir)


def _check_channels(channels, manifest: Path) -> None:
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f'{manifest}: channel_names must map a channel index to its name, e.g. {{"0": "CT"}}')
    if len(channels) > 1:
        listed = ", ".join(map(str, channels.values()))
        raise ValueError(
            f"{manifest}: channel_names lists {len(channels)} channels ({listed}); SegVol fine-tunes on one CT channel"
        )
    ((index, name),) = channels.items()
    if str(index) not in ("0", "0000"):
        raise ValueError(f'{manifest}: channel_names: the one channel must be "0", got {index!r}')
    if str(name).casefold() != "ct":
        raise ValueError(f"{manifest}: channel 0 is {name!r}, not CT; SegVol is a CT model (intensities in HU)")


# ----------------------------------------------------------------------------------------- image/label pairs


def paired_dataset(folder: Path, names: Path) -> dict:
    """`images/<case><ending>` + `labels/<case><ending>` and a names file (module docstring)."""
    if not names.is_file():
        raise FileNotFoundError(f"{names}: names file not found")
    spec = _read_mapping(names)
    table = spec["labels"] if isinstance(spec.get("labels"), dict) else spec
    categories = label_categories(table, names, background=False)
    images_dir, labels_dir = folder / "images", folder / "labels"
    images = {_case_of(path): path for path in _files(images_dir, FILE_ENDINGS, folder)}
    labels = {_case_of(path): path for path in _files(labels_dir, FILE_ENDINGS, folder)}
    for case, path in sorted(images.items()):
        if case not in labels:
            raise FileNotFoundError(
                f"{labels_dir / path.name}: label map of {path.name} not found "
                "(labels/ must hold a file of the same name)"
            )
    for case, path in sorted(labels.items()):
        if case not in images:
            raise FileNotFoundError(f"{images_dir / path.name}: image of label map {path.name} not found")
    if not images:
        raise ValueError(f"{images_dir}: no image files ({', '.join(FILE_ENDINGS)})")
    return _dataset(folder.name, categories, {case: (images[case], labels[case]) for case in images}, images_dir)


def _case_of(path: Path) -> str:
    return next(path.name[: -len(ending)] for ending in FILE_ENDINGS if path.name.endswith(ending))


# ----------------------------------------------------------------------------------------- shared


def label_categories(table, where: Path, background: bool) -> dict[str, list[int]]:
    """{canonical name: sorted ids} of a `{name: id or [ids]}` table. `background`: the table must
    map "background" to 0 (nnU-Net); otherwise a background entry of 0 is allowed and dropped."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where}: labels must map each category name to its label id(s)")
    categories: dict[str, set[int]] = {}
    for name, values in table.items():
        if str(name).strip().lower() == "background":
            if values != 0:
                raise ValueError(f"{where}: 'background' must be label 0, got {values!r}")
            continue
        if str(name).strip().lower() == "ignore":
            raise ValueError(
                f"{where}: nnU-Net's 'ignore' label (sparse annotations) is not supported: SegVol's "
                "loss treats every unlabelled voxel as background"
            )
        values = [values] if isinstance(values, int) and not isinstance(values, bool) else values
        if (
            not isinstance(values, (list, tuple))
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            raise ValueError(f"{where}: label {name!r} needs a positive id or a list of them, got {values!r}")
        try:
            canonical = canonical_name(str(name))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        categories.setdefault(canonical, set()).update(values)
    if background and not any(str(name).strip().lower() == "background" for name in table):
        raise ValueError(f'{where}: labels must include "background": 0 (nnU-Net v2)')
    if not categories:
        raise ValueError(f"{where}: no category besides the background")
    return {name: sorted(values) for name, values in categories.items()}


def _files(directory: Path, endings, root: Path) -> list[Path]:
    """The files of `directory` ending in `endings` (hidden ones skipped), each checked to lie inside `root`
    (a link out of the dataset folder is refused, never followed)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: folder not found")
    endings = (endings,) if isinstance(endings, str) else tuple(endings)
    inside = root.resolve()
    found = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(endings):
            continue
        if not path.resolve().is_relative_to(inside):
            raise ValueError(f"{path}: links outside the dataset folder {root}; copy the file in instead")
        if not path.is_file():
            raise ValueError(f"{path}: not a file")
        found.append(path)
    return found


def _read_mapping(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML/JSON'} ({' '.join(str(error).split())})"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return value


def _dataset(name: str, categories: dict, pairs: dict, images_dir: Path) -> dict:
    cases = []
    for case in sorted(pairs):
        if not CASE_ID.match(case):
            raise ValueError(
                f"{pairs[case][0]}: case id {case!r} has characters other than letters, digits, "
                "'_', '-', '.' (or does not start with a letter or digit)"
            )
        image, label = pairs[case]
        cases.append({"id": case, "image": image, "label": label})
    return {"name": name, "role": "train", "modality": "CT", "categories": categories, "cases": cases}
