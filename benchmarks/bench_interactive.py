"""Interactive latency of the `Session` API on CPU: the first segmentation of a boxed object, then
refinement clicks (one point added to that object each), per model preset and encoder precision.

    python benchmarks/bench_interactive.py [--image CT.nii.gz --label LABELS.nii.gz --label-id 5]
        [--synthetic] [--presets tiny base] [--precisions fp32 bf16] [--repeats 3] [--threads 2] [--json out.json]

Random weights of each preset (the cost of a click does not depend on the weights). The image
defaults to the real 3 mm abdominal CT in ../shared/data when present, the object to its liver
(label 5 of its TotalSegmentator map, the box its bounding box); else (or with --synthetic) a
synthetic 96x192x192 volume with a 40x100x100 box. Clicks: `click` at the voxel of the object
nearest its centre (inside every zoom-in window of a small object: the worst case), then `click2`
near the middle of its lowest slices (a correction near one end, inside fewer windows).

Each run starts a fresh `Session` (no cached embeddings): `first` = `set_box` + `mask`, each click
= `add_point` + `mask`. Runs of all configurations are interleaved (run 1 of every configuration,
then run 2, ...) so that a change in machine load hits them alike; medians are printed with the
encoder passes (windows encoded) and decoder passes (prompt-window pairs decoded) of each step, the
seconds spent inside `model.decode` and the rest (stitching, resampling, copies, Python). Goals
on 2 CPU threads (docs/architecture.md#interactive-segmentation): base fp32 click <= 1.0 s, tiny <= 0.3 s.

Not measured yet: serve's click-to-overlay (the same two clicks through `segvol serve`, then the
rendered views; goal: within 0.2 s of the Session's click). Its place is marked in `one_run`
(one more timed step) and `report` (one more column group).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "totalsegmentator" / "abdomen_ct_3mm"
SHARED_CT, SHARED_LABELS, LIVER = SHARED / "example_ct.nii.gz", SHARED / "example_seg_fast_force_split.nii.gz", 5


def count_calls(model):
    """Count the model's encoder windows and decoder items, and the seconds spent in each (wraps
    the bound methods in place)."""
    counts = {"encoder": 0, "decoder": 0, "encoder_s": 0.0, "decoder_s": 0.0}

    def counted(method, key):
        @functools.wraps(method)
        def wrapper(tensor, *args, **kwargs):
            counts[key] += tensor.shape[0] if key == "encoder" else _decode_batch(tensor, kwargs)
            started = time.perf_counter()
            try:
                return method(tensor, *args, **kwargs)
            finally:
                counts[key + "_s"] += time.perf_counter() - started

        return wrapper

    model.encode_image = counted(model.encode_image, "encoder")
    model.decode = counted(model.decode, "decoder")
    return counts


def _decode_batch(embedding, prompts) -> int:
    for value in (prompts.get("text"), prompts.get("boxes"), (prompts.get("points") or (None,))[0]):
        if value is not None:
            return int(value.shape[0])
    return int(embedding.shape[0])


def synthetic_case():
    """A [0, 1] body-like 96x192x192 volume, a 40x100x100 box and two clicks inside it."""
    rng = np.random.default_rng(0)
    d, h, w = 96, 192, 192
    _, yy, xx = np.ogrid[:d, :h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 <= 1
    volume = np.where(body, 0.4 + 0.2 * rng.random((d, h, w), dtype=np.float32), 0.0).astype(np.float32)
    box = (28, 46, 46, 67, 145, 145)
    return volume, "synthetic 96x192x192", box, clicks_in(np.argwhere(np.ones((40, 100, 100), bool)) + box[:3])


def clicks_in(found: np.ndarray) -> tuple:
    """Two clicks on an object's voxels ``found`` (N, 3): nearest its centre, and nearest the centre
    of its lowest 5 slices (a correction near an end: it lies in fewer zoom-in windows)."""
    centre = found.mean(axis=0)
    end = found[found[:, 0] <= found[:, 0].min() + 4].mean(axis=0)
    return tuple(
        tuple(int(v) for v in found[np.argmin(((found - target) ** 2).sum(axis=1))]) for target in (centre, end)
    )


def real_case(image_path: Path, label_path: Path, label_id: int):
    from segvol.io.image import read_image, read_label

    image = read_image(image_path)
    labels = read_label(label_path, image).array == label_id
    if not labels.any():
        raise SystemExit(f"{label_path}: no voxel has label {label_id}")
    found = np.argwhere(labels)
    box = tuple(int(v) for v in (*found.min(axis=0), *found.max(axis=0)))
    return image, f"{image_path.name} {'x'.join(map(str, image.shape))}", box, clicks_in(found)


def one_run(model, counts, case) -> dict:
    from segvol.infer.session import Session

    image, _, box, (centre, end) = case
    if not isinstance(image, np.ndarray):  # a Session may drop the image's own array: hand it a copy
        import copy

        image = copy.copy(image)
    row = {}
    session = Session(model, image)
    for step, edit in (
        ("first", lambda: session.set_box("object", box)),
        ("click", lambda: session.add_point("object", centre)),
        ("click2", lambda: session.add_point("object", end)),
    ):
        counts.update(encoder=0, decoder=0, encoder_s=0.0, decoder_s=0.0)
        started, cpu = time.perf_counter(), time.process_time()
        edit()
        mask = session.mask("object")
        row[step] = time.perf_counter() - started
        row[f"{step}_cpu"] = time.process_time() - cpu
        row.update({f"{step}_{key}": value for key, value in counts.items()})
        row[f"{step}_voxels"] = int(mask.sum())
    # Serve's click-to-overlay goes here: the same two clicks through segvol serve's own session
    # (add the point, then render the views it shows), timed as steps "serve_click" and "serve_click2".
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--image",
        type=Path,
        default=SHARED_CT if SHARED_CT.exists() else None,
        help="a CT file (default: the shared 3 mm CT when present, else a synthetic volume)",
    )
    parser.add_argument(
        "--label",
        type=Path,
        default=SHARED_LABELS if SHARED_LABELS.exists() else None,
        help="label map on the image's grid whose --label-id is the boxed object",
    )
    parser.add_argument("--label-id", type=int, default=LIVER)
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic 96x192x192 volume")
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO))
    from segvol.model import build_model, model_config

    torch.set_num_threads(args.threads)
    if args.synthetic or args.image is None or args.label is None:
        case = synthetic_case()
    else:
        case = real_case(args.image, args.label, args.label_id)
    configs = {}
    for preset in args.presets:
        for precision in args.precisions:
            torch.manual_seed(0)
            model = build_model(model_config(preset)).eval()
            model.image_encoder.set_precision(precision)
            configs[(preset, precision)] = (model, count_calls(model))
    rows: dict[tuple, list[dict]] = {key: [] for key in configs}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for key, (model, counts) in configs.items():
            rows[key].append(one_run(model, counts, case))
    report(rows, case, args, (load_before, os.getloadavg()[0]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "case": case[1],
                    "threads": args.threads,
                    "rows": [
                        {"preset": preset, "precision": precision, "runs": runs}
                        for (preset, precision), runs in rows.items()
                    ],
                },
                indent=1,
            )
        )


def report(rows: dict[tuple, list[dict]], case, args, load) -> None:
    print(
        f"Session latency on {case[1]}, box {list(case[2])}, clicks {[list(c) for c in case[3]]}: median of "
        f"{args.repeats} interleaved runs, {args.threads} threads, random weights, load average {load[0]:.1f} -> "
        f"{load[1]:.1f}"
    )
    print(
        "s = seconds of set_box/add_point + mask; cpu = CPU seconds of this process meanwhile (all threads: "
        "less sensitive to other load); enc/dec = encoder windows/decoder items; in dec = seconds inside "
        "model.decode; rest = the other seconds (stitching, resampling, copies)"
    )
    print(f"{'preset':>6} {'prec':>5} |{'first':>15} |{'click (centre)':>35} |{'click2 (end)':>35} |")
    print(
        f"{'':>6} {'':>5} | {'s':>6} {'enc':>3} {'dec':>3} |" + f" {'s':>6} {'cpu':>6} {'enc':>3} {'dec':>3} "
        f"{'in dec':>6} {'rest':>5} |" * 2
    )
    for (preset, precision), runs in rows.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        line = (
            f"{preset:>6} {precision:>5} | {med['first']:6.2f} {med['first_encoder']:3.0f} "
            f"{med['first_decoder']:3.0f} |"
        )
        for step in ("click", "click2"):
            rest = statistics.median(run[step] - run[f"{step}_decoder_s"] - run[f"{step}_encoder_s"] for run in runs)
            line += (
                f" {med[step]:6.3f} {med[step + '_cpu']:6.3f} {med[step + '_encoder']:3.0f}"
                f" {med[step + '_decoder']:3.0f} {med[step + '_decoder_s']:6.3f} {rest:5.3f} |"
            )
        print(line + "  clicks of each run: " + " ".join(f"{run['click']:.2f}/{run['click2']:.2f}" for run in runs))
    # Serve's click-to-overlay goes here: one more column group per serve step timed in one_run.


if __name__ == "__main__":
    main()
