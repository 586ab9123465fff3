"""Segment CT files with prompts: the library behind `segvol predict` (and `segvol serve`'s exports).

- `load_model(checkpoint, device, precision)`: the model and a description of its weights for the manifest.
- `predict_files(inputs, output, records, checkpoint=...)`: many inputs, the model loaded once, after the
  first image and the prompts have been checked; `resume` skips finished inputs.
- `predict_file(model, input, output, records)`: one image file, outputs checked and written.
- `predict_image(model, image, prompts, canonical, plan)`: one image already read.

Prompt records are dicts `{"name", "text", "box", "points", "point_labels"}` in 0-based voxel indices of the
input file (RAS+ mm with `world=True`); `segvol.infer.prompts` converts them, `segvol.infer.outputs` plans,
checks and writes what comes out. A record's `"init_mask": "LABELS:ID"` starts that category from label ID of
a label file on the image's grid (`Session.set_mask`): alone, the category is that label exactly; with other
prompts, they refine it as clicks do in `segvol serve`.
"""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

from segvol.infer.memory import trace
from segvol.infer.outputs import (
    LabelMapBuilder,
    OutputPlan,
    build_manifest,
    check_outputs,
    finished,
    label_paths,
    plan_outputs,
    same_file,
    write_manifest,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def load_model(checkpoint: str | None, device, precision: str = "fp32"):
    """The model of `checkpoint` (ours .safetensors, SegVol_v1.pth, pytorch_model.bin or hf://BAAI/SegVol)
    in eval mode on `device`, and a description of its weights (for the manifest)."""
    import torch

    if not checkpoint:
        raise ValueError("no weights: give --checkpoint PATH|hf://BAAI/SegVol")
    from segvol.model.checkpoint import load, resolve
    from segvol.provenance import sha256_file

    path = resolve(checkpoint)
    weights = {"checkpoint": str(checkpoint), "sha256": sha256_file(Path(path))}
    model = load(path)
    model.image_encoder.set_precision(precision)
    if (
        precision == "bf16"
        and device.type == "cpu"
        and not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)()
    ):
        log.warning("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16/AMX); expect it slower than fp32")
    return model.to(device).eval(), weights


def expand_inputs(specs: list[str]) -> list[Path]:
    """Input paths from files, DICOM folders, folders of image files and globs, in order, once each."""
    found: list[Path] = []
    for spec in specs:
        if any(c in spec for c in "*?[") and not Path(spec).exists():
            matches = sorted(glob.glob(spec))
            if not matches:
                raise FileNotFoundError(f"{spec}: no file matches this pattern")
            found.extend(Path(m) for m in matches)
            continue
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such image file or DICOM folder")
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            found.extend(images or [path])  # no image files: a DICOM series folder
        else:
            found.append(path)
    unique = []
    for path in found:
        if not any(same_file(path, seen) for seen in unique):
            unique.append(path)
    return unique


def predict_files(
    inputs: list[str],
    output: str | Path,
    records: list[dict],
    *,
    checkpoint: str | None,
    device: str | None = None,
    precision: str = "fp32",
    world: bool = False,
    mode: str = "zoom",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    box_limits: bool = True,
    masks: bool = False,
    probabilities: bool = False,
    dicom_seg: bool = False,
    meshes: tuple[str, ...] = (),
    overwrite: bool = False,
    resume: bool = False,
    protected: list[Path] = (),
    progress: bool = True,
) -> int:
    """Segment every input (files, folders, globs) for the prompt records; returns how many were segmented.

    `output`: the label map for one input, a folder for several. Everything a user can get wrong (prompts,
    inputs, every output path) is checked before the model (seconds, GBs) is loaded; `protected` adds
    paths never to be written (the prompt file). `resume` skips inputs whose manifest says they are finished.
    `meshes`: formats ("stl", "obj") of one surface mesh per category (`segvol.infer.outputs`).
    """
    from segvol.device import resolve_device
    from segvol.infer.prompts import parse_init_mask, prompts_from_records, without_coordinates

    started = time.perf_counter()
    checked = prompts_from_records(records if not world else without_coordinates(records), source="prompts")
    names = [p.label for p in checked]
    paths = expand_inputs(inputs)
    label_files = [parse_init_mask(p.init_mask)[0] for p in checked if p.init_mask is not None]
    if label_files and len(paths) > 1:
        raise ValueError(f"--init-mask: {label_files[0]} lies on one image's grid; give one input, not {len(paths)}")
    protected = [*paths, *protected, *label_files]
    protected += [Path(checkpoint)] if checkpoint and "://" not in str(checkpoint) else []
    plans = [
        plan_outputs(path, label, names, masks, probabilities, dicom_seg, meshes)
        for path, label in zip(paths, label_paths(paths, output))
    ]
    todo = []
    for plan in plans:
        if resume and finished(plan):
            log.info("skipping %s: finished (%s)", plan.input, plan.manifest)
            continue
        check_outputs(plan, protected, overwrite)
        todo.append(plan)
    if not todo:
        log.info("nothing to do: every input is finished")
        return 0
    log.info(
        "%d input(s) to segment (%d finished before); %d categor%s",
        len(todo),
        len(plans) - len(todo),
        len(names),
        "y" if len(names) == 1 else "ies",
    )
    device = resolve_device(device)  # imports torch: after the first line the user sees
    model = weights = None
    for number, plan in enumerate(todo, 1):
        log.info("[%d/%d] reading %s", number, len(todo), plan.input)
        image, prompts, canonical = prepare(plan.input, records, world)
        starts = init_masks_on(image, prompts)
        trace("reading")
        if model is None:
            loading = time.perf_counter()
            model, weights = load_model(checkpoint, device, precision)
            log.info("model loaded in %.1f s", time.perf_counter() - loading)
            from segvol.infer.text import release_text_backbone

            release_text_backbone(model, [p.text for p in checked if p.text is not None])
            trace("loading the model")
        predict_image(
            model,
            image,
            prompts,
            canonical,
            plan,
            mode=mode,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            weights=weights,
            box_limits=box_limits,
            world=world,
            progress=progress,
            starts=starts,
        )
    log.info("%d input(s) done in %.1f s", len(todo), time.perf_counter() - started)
    return len(todo)


def prepare(input_path: Path, records: list[dict], world: bool):
    """Read one image and put the prompts on it: (image, prompts in file voxels, canonical prompts)."""
    from segvol.infer.prompts import prompts_on_image
    from segvol.io import read_image

    image = read_image(input_path)
    return (image, *prompts_on_image(records, image, world))


def init_masks_on(image, prompts, given: dict | None = None) -> list:
    """Per prompt, the canonical bool mask it starts from (None for a prompt without ``init_mask``):
    ``given[name]`` when there (an array on the canonical grid), else read from its ``LABELS:ID`` file."""
    from segvol.infer.prompts import read_init_mask

    given = given or {}
    starts = []
    for prompt in prompts:
        if prompt.label in given:
            starts.append(given[prompt.label])
        elif prompt.init_mask is not None:
            starts.append(read_init_mask(prompt.init_mask, image))
        else:
            starts.append(None)
    return starts


def predict_file(
    model,
    input_path,
    output,
    records: list[dict],
    world: bool = False,
    mode: str = "zoom",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    masks: bool = False,
    probabilities: bool = False,
    dicom_seg: bool = False,
    weights: dict | str | None = None,
    box_limits: bool = True,
    overwrite: bool = False,
    meshes: tuple[str, ...] = (),
    init_masks: dict | None = None,
) -> dict:
    """Segment one image file for prompt records (input-file coordinates) and write the outputs.

    Writes the label map ``output`` (NIfTI on the input grid), its manifest ``<stem>.json`` and
    the requested extras (`segvol.infer.outputs`); all or nothing. Returns the manifest.
    `init_masks`: category name -> canonical bool mask, instead of reading the record's ``init_mask`` file
    (`segvol serve` exports the label it imported).
    """
    from segvol.infer.prompts import parse_init_mask, prompts_from_records, without_coordinates

    input_path, output = Path(input_path), Path(output)
    checked = prompts_from_records(without_coordinates(records), source="prompts")
    names = [p.label for p in checked]
    plan = plan_outputs(input_path, output, names, masks, probabilities, dicom_seg, meshes)
    given = init_masks or {}
    label_files = [parse_init_mask(p.init_mask)[0] for p in checked if p.init_mask and p.label not in given]
    check_outputs(plan, [input_path, *label_files], overwrite)
    image, prompts, canonical = prepare(input_path, records, world)
    starts = init_masks_on(image, prompts, init_masks)
    return predict_image(
        model,
        image,
        prompts,
        canonical,
        plan,
        mode=mode,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        weights=weights,
        box_limits=box_limits,
        world=world,
        starts=starts,
    )


def predict_image(
    model,
    image,
    prompts,
    canonical,
    plan: OutputPlan,
    mode="zoom",
    overlap=0.5,
    sw_batch_size=2,
    weights=None,
    box_limits=True,
    world=False,
    progress=True,
    starts=None,
) -> dict:
    """Segment `image` (a `segvol.io` image) for `canonical` prompts (`prompts` in its file voxels, for the
    manifest) and write what `plan` lists, category by category; all or nothing. Returns the manifest.
    `starts`: per prompt, None or the canonical bool mask the category starts from (`init_masks_on`)."""
    import numpy as np
    import torch

    from segvol.infer.geometry import box_slices
    from segvol.infer.session import Session
    from segvol.io import write_like

    timings = {"inference": 0.0, "write": 0.0}
    started = time.perf_counter()
    session = Session(
        model, image, mode=mode, overlap=overlap, sw_batch_size=sw_batch_size, box_limits=box_limits, progress=progress
    )
    timings["normalize"] = round(time.perf_counter() - started, 3)
    trace("normalizing")
    device = next(model.parameters()).device
    log.info(
        "segmenting %d categor%s of %s (%s) on %s, mode %s",
        len(prompts),
        "y" if len(prompts) == 1 else "ies",
        plan.input,
        "x".join(map(str, session.volume.shape)),
        device,
        mode,
    )
    builder = LabelMapBuilder(session.volume.shape, len(prompts))
    written: list[Path] = []
    surfaces: dict[str, dict] = {}
    folders = {
        path.parent
        for path in [*plan.masks, *plan.probabilities, *(p for ps in plan.meshes for p in ps)]
        if not path.parent.exists()
    }
    try:
        # One category at a time (image embeddings cached by the session): peak memory holds one
        # category's logits, not K of them; per-category files are written as they come.
        for k, prompt in enumerate(canonical):
            step = time.perf_counter()
            if starts is not None and starts[k] is not None:
                region, logits = refined_from_mask(session, prompt, starts[k])
            else:
                region, logits = session.segment_region([prompt])
                logits = logits[0]
            timings["inference"] += time.perf_counter() - step
            step = time.perf_counter()
            builder.add(k, logits, region)
            where = box_slices(region)  # outside it the logits are OUTSIDE_LOGIT: probability 0
            if plan.masks:
                mask = np.zeros(builder.labels.shape, np.uint8)
                mask[where] = (logits > 0).numpy()
                write_like(mask, image, plan.masks[k])
                written.append(plan.masks[k])
                del mask
            if plan.probabilities:
                probability = np.zeros(builder.labels.shape, np.float32)
                probability[where] = torch.sigmoid(logits).numpy()
                write_like(probability, image, plan.probabilities[k], dtype=np.float32)
                written.append(plan.probabilities[k])
                del probability
            if plan.meshes:
                surfaces[prompt.label] = write_meshes(
                    (logits > 0).numpy(), image.affine, region, plan.meshes[k], prompt.label
                )
                written += surfaces[prompt.label]["files"]
            del logits
            timings["write"] += time.perf_counter() - step
            trace(f"category {k + 1}")
        labels = builder.labels
        del session, builder
        step = time.perf_counter()
        if plan.dicom_seg is not None:
            from segvol.io.dicom_seg import write_dicom_seg

            write_dicom_seg(labels, image, plan.input, [p.label for p in prompts], plan.dicom_seg)
            written.append(plan.dicom_seg)
        write_like(labels, image, plan.label_map)
        written.append(plan.label_map)
        trace("writing the label map")
        timings = {key: round(value, 3) for key, value in timings.items()}
        timings["write"] = round(timings["write"] + time.perf_counter() - step, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        for path in (p for paths in plan.meshes for p in paths if p not in written):
            path.unlink(missing_ok=True)  # an empty category's mesh of an earlier run (checked: ours, or --overwrite)
        manifest = build_manifest(
            plan,
            image,
            prompts,
            labels,
            written,
            mode=mode,
            overlap=overlap,
            box_limits=box_limits,
            weights=weights,
            device=device,
            world=world,
            seconds=timings,
            precision=getattr(getattr(model, "image_encoder", None), "precision", "fp32"),
            meshes=surfaces if plan.meshes else None,
        )
        write_manifest(plan, manifest)
        trace("writing the manifest")
    except BaseException:
        for path in written:  # all or nothing
            path.unlink(missing_ok=True)
        for folder in folders:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    for prompt in prompts:
        log.info("%s: %d voxels", prompt.label, manifest["voxels"][prompt.label])
    log.info("wrote %s (+ %s) in %.1f s", plan.label_map, plan.manifest.name, timings["total"])
    return manifest


def refined_from_mask(session, prompt, mask) -> tuple:
    """``(region, logits)`` of the category `prompt` started from the canonical bool `mask` and refined by
    the prompt's text, box and points, as `segvol serve` edits an imported label (`Session.set_mask`)."""
    name = prompt.label
    session.set_mask(name, mask)
    if prompt.text is not None:
        session.add_text(name, prompt.text)
    if prompt.box is not None:
        session.set_box(name, prompt.box)
    for point, label in zip(*(() if prompt.points is None else (prompt.points, prompt.point_labels))):
        session.add_point(name, point, positive=bool(label))
    region, logits = session.region_logits(name)
    session.remove(name)  # what the session kept for it: one category at a time, as the lean path
    return region, logits


def write_meshes(mask, affine, region, paths: list[Path], name: str) -> dict:
    """The surface of one category's mask, in world coordinates, to each of `paths` (STL/OBJ by suffix).

    mask: (d, h, w) bool over the inclusive canonical box `region` (the rest of the volume is outside the
    category); affine: the canonical (d, h, w) -> RAS+ mm affine of the whole volume. An empty mask writes
    no file (an empty surface is no model a viewer can show). Returns the manifest entry.
    """
    import numpy as np

    from segvol.io.mesh import mask_mesh, write_obj, write_stl

    to_region = np.eye(4)
    to_region[:3, 3] = np.asarray(region[:3], dtype=np.float64)
    mesh = mask_mesh(mask, np.asarray(affine, dtype=np.float64) @ to_region)
    entry = {
        "files": [],
        "triangles": int(len(mesh.faces)),
        "area_mm2": round(mesh.area(), 3),
        "volume_ml": round(mesh.volume() / 1000.0, 6),
    }
    if len(mesh.faces) == 0:
        log.warning("%s: empty mask, no mesh written", name)
        return entry
    writers = {".stl": write_stl, ".obj": write_obj}
    entry["files"] = [writers[path.suffix](mesh, path, name=name) for path in paths]
    return entry
