"""Write a synthetic dataset folder following the raw dataset contract (CONTRIBUTING.md).

    <out>/dataset.json
    <out>/images/case_000.nii.gz      int16 HU
    <out>/labels/case_000.nii.gz      uint8 label map (absent for unlabelled datasets)

The whole folder is written to a temporary sibling and renamed at the end, so a failure leaves
nothing at `<out>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from segvol.io.atomic import atomic_path
from segvol.settings import stage_settings
from segvol.synth.appearance import DOMAINS, ROLE_DOMAIN
from segvol.synth.labels import LESION_CATEGORIES, canonical_name, label_space, validate_categories
from segvol.synth.phantom import case_rng, make_phantom

log = logging.getLogger(__name__)

ROLES = ("train", "external", "unlabelled")
ORIENTATIONS = ("RAS", "LAS", "LPS", "RPS")


def dataset_spec(settings: dict, name: str) -> dict:
    """The validated `synth.datasets[name]` entry: role, n_cases, labels, domain (default: by role),
    shape_max (optional)."""
    datasets = settings.get("datasets") or {}
    if name not in datasets:
        known = ", ".join(sorted(datasets)) or "none"
        raise ValueError(f"synth: dataset {name!r} is not in synth.datasets (configured: {known})")
    spec = dict(datasets[name])
    where = f"synth.datasets.{name}"
    unknown = sorted(set(spec) - {"role", "n_cases", "labels", "domain", "shape_max"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if spec.get("role") not in ROLES:
        raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}, got {spec.get('role')!r}")
    n_cases = spec.get("n_cases")
    if not isinstance(n_cases, int) or isinstance(n_cases, bool) or n_cases < 1:
        raise ValueError(f"{where}: n_cases must be a positive integer, got {n_cases!r}")
    labels = spec.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise ValueError(f"{where}: labels must be a list of category names")
    validate_categories(labels, where)
    if spec["role"] == "unlabelled" and labels:
        raise ValueError(f"{where}: an unlabelled dataset cannot list labels ({', '.join(labels)})")
    if spec["role"] != "unlabelled" and not labels:
        raise ValueError(f"{where}: a {spec['role']} dataset needs at least one label name")
    spec["labels"] = labels
    spec["domain"] = spec.get("domain") or ROLE_DOMAIN[spec["role"]]
    if spec["domain"] not in DOMAINS:
        raise ValueError(f"{where}: domain must be one of {', '.join(DOMAINS)}, got {spec['domain']!r}")
    return spec


def _shape_max(settings: dict, spec: dict, name: str) -> tuple[int, int, int]:
    """The dataset's own `shape_max` if it has one, else `synth.shape_max`."""
    shape, key = (
        (spec["shape_max"], f"synth.datasets.{name}.shape_max")
        if spec.get("shape_max")
        else (settings.get("shape_max"), "synth.shape_max")
    )
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 16 for n in shape)
    ):
        raise ValueError(f"{key} must be three integers >= 16 (slices, rows, cols), got {shape!r}")
    return tuple(shape)


def _orientation(settings: dict, seed: int, name: str) -> str:
    choices = settings.get("orientations") or ["RAS"]
    bad = [c for c in choices if c not in ORIENTATIONS]
    if bad:
        raise ValueError(f"synth.orientations: unsupported axis codes {bad}; use {', '.join(ORIENTATIONS)}")
    return choices[int(case_rng(seed, name, 0, "orientation").integers(len(choices)))]


def to_nifti(array: np.ndarray, canonical_affine: np.ndarray, orientation: str = "RAS"):
    """A NIfTI image of a canonical (D, H, W) = (S, A, R) array, stored with `orientation` codes.

    The array becomes a NIfTI (x, y, z) = (R, A, S) array and is then flipped to the requested
    axis codes; the affine follows, so every voxel keeps its world position.
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    affine = np.eye(4)
    affine[:3, :3] = canonical_affine[:3, [2, 1, 0]]  # columns in (w, h, d) = (x, y, z) order
    affine[:3, 3] = canonical_affine[:3, 3]
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image = image.as_reoriented(ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(orientation))))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def _single_threaded_blas():
    """The phantoms' small matrix products lose badly to thread contention on shared CPUs, so
    keep BLAS on one thread while generating (when threadpoolctl is installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def synthesize_dataset(name: str, out, seed: int, params=None, progress: bool = True) -> Path:
    """Write dataset `name` of the `synth` settings `params` (dict or JSON) to folder `out`."""
    import nibabel as nib

    from segvol.progress import progress_bar

    settings = stage_settings("synth", params)
    spec = dataset_spec(settings, name)
    shape_max = _shape_max(settings, spec, name)
    orientation = _orientation(settings, seed, name)
    labelled = spec["role"] != "unlabelled"
    categories, lookup = label_space(spec["labels"]) if labelled else ({}, None)
    required = tuple(kind for kind in LESION_CATEGORIES if kind in {canonical_name(n) for n in spec["labels"]})
    domain = DOMAINS[spec["domain"]]
    out = Path(out)
    log.info(
        "synth %s: %d %s cases, labels %s, orientation %s -> %s",
        name,
        spec["n_cases"],
        spec["role"],
        spec["labels"],
        orientation,
        out,
    )

    cases = []
    with _single_threaded_blas(), atomic_path(out) as folder:
        (folder / "images").mkdir(parents=True)
        if labelled:
            (folder / "labels").mkdir()
        for index in progress_bar(range(spec["n_cases"]), desc=f"synth {name}", unit="case", disable=not progress):
            case_id = f"case_{index:03d}"
            phantom = make_phantom(case_rng(seed, name, index), domain, shape_max, require_lesion=required)
            entry = {"id": case_id, "image": f"images/{case_id}.nii.gz", "label": None}
            nib.save(to_nifti(phantom.hu, phantom.affine, orientation), folder / entry["image"])
            if labelled:
                entry["label"] = f"labels/{case_id}.nii.gz"
                nib.save(to_nifti(lookup[phantom.tissue], phantom.affine, orientation), folder / entry["label"])
            cases.append(entry)
        description = {
            "name": name,
            "role": spec["role"],
            "modality": "CT",
            "categories": categories,
            "cases": cases,
            "description": (f"Procedural abdominal CT phantoms ({domain.name} population) written by `segvol synth`."),
            "synth": {"seed": int(seed), "orientation": orientation, "shape_max": list(shape_max)},
        }
        (folder / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return out
