"""Interactive latency of the `Session` API on CPU: the first segmentation of a boxed object, then a
refinement click (one point added to that object), per model preset and encoder precision.

    python benchmarks/bench_interactive.py [--image CT.nii.gz --label LABELS.nii.gz --label-id 5]
        [--presets tiny base] [--precisions fp32 bf16] [--repeats 3] [--threads 2]

Random weights of each preset (the cost of a click does not depend on the weights). The image
defaults to the real 3 mm abdominal CT in ../shared/data when present, the object to its liver
(label 5 of its TotalSegmentator map: the box is the label's bounding box, the click its voxel
nearest the label's centre); else a synthetic 96x192x192 volume with a fixed box and click.

Each run starts a fresh `Session` (no cached embeddings): `first` = `set_box` + `logits`,
`click` = `add_point` + `logits`. Runs of all configurations are interleaved (run 1 of every
configuration, then run 2, ...) so that a change in machine load hits them alike; the medians are
printed with the encoder passes (windows encoded) and decoder passes (prompt-window pairs decoded)
of each step. Goals on 2 CPU threads (docs/architecture.md#interactive-segmentation): base fp32
click <= 1.0 s, tiny <= 0.3 s.
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
    """A [0, 1] body-like 96x192x192 volume, a box of about 20x70x70 voxels and a click inside it."""
    rng = np.random.default_rng(0)
    d, h, w = 96, 192, 192
    _, yy, xx = np.ogrid[:d, :h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 <= 1
    volume = np.where(body, 0.4 + 0.2 * rng.random((d, h, w), dtype=np.float32), 0.0).astype(np.float32)
    return volume, "synthetic 96x192x192", (38, 60, 62, 57, 129, 131), (47, 95, 96)


def real_case(image_path: Path, label_path: Path, label_id: int):
    from segvol.io.image import read_image, read_label

    image = read_image(image_path)
    labels = read_label(label_path, image).array == label_id
    if not labels.any():
        raise SystemExit(f"{label_path}: no voxel has label {label_id}")
    found = np.argwhere(labels)
    box = tuple(int(v) for v in (*found.min(axis=0), *found.max(axis=0)))
    click = tuple(int(v) for v in found[np.argmin(((found - found.mean(axis=0)) ** 2).sum(axis=1))])
    return image, f"{image_path.name} {'x'.join(map(str, image.shape))}", box, click


def one_run(model, counts, case) -> dict:
    from segvol.infer.session import Session

    image, _, box, click = case
    if not isinstance(image, np.ndarray):  # a Session may drop the image's own array: hand it a copy
        import copy

        image = copy.copy(image)
    row = {}
    session = Session(model, image)
    for step, edit in (("first", lambda: session.set_box("object", box)),
                       ("click", lambda: session.add_point("object", click))):
        counts.update(encoder=0, decoder=0, encoder_s=0.0, decoder_s=0.0)
        started = time.perf_counter()
        edit()
        mask = session.mask("object")
        row[step] = time.perf_counter() - started
        row.update({f"{step}_{key}": value for key, value in counts.items()})
        row[f"{step}_voxels"] = int(mask.sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=SHARED_CT if SHARED_CT.exists() else None,
                        help="a CT file (default: the shared 3 mm CT when present, else a synthetic volume)")
    parser.add_argument("--label", type=Path, default=SHARED_LABELS if SHARED_LABELS.exists() else None,
                        help="label map on the image's grid whose --label-id is the boxed object")
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
        args.json.write_text(json.dumps({"case": case[1], "threads": args.threads, "rows": [
            {"preset": preset, "precision": precision, "runs": runs} for (preset, precision), runs in rows.items()]},
            indent=1))


def report(rows: dict[tuple, list[dict]], case, args, load) -> None:
    print(f"Session latency on {case[1]}, box {list(case[2])}, click {list(case[3])}: median of {args.repeats} "
          f"interleaved runs, {args.threads} threads, random weights, load average {load[0]:.1f} -> {load[1]:.1f}")
    print("first = set_box + mask (a fresh session); click = add_point + mask; enc/dec = encoder windows /"
          " decoder items; dec s = seconds inside model.decode; rest = everything else of the click")
    print(f"{'preset':>6} {'prec':>5} | {'first s':>7} {'enc':>3} {'dec':>3} | {'click s':>7} {'enc':>3} {'dec':>3}"
          f" {'dec s':>6} {'rest':>6} | click s of each run")
    for (preset, precision), runs in rows.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rest = statistics.median(run["click"] - run["click_decoder_s"] - run["click_encoder_s"] for run in runs)
        print(f"{preset:>6} {precision:>5} | {med['first']:7.2f} {med['first_encoder']:3.0f} "
              f"{med['first_decoder']:3.0f} | {med['click']:7.3f} {med['click_encoder']:3.0f} "
              f"{med['click_decoder']:3.0f} {med['click_decoder_s']:6.3f} {rest:6.3f} | "
              + " ".join(f"{run['click']:.3f}" for run in runs))
    # Serve's click-to-overlay (the same click through segvol.serve.workspace, then the three
    # rendered views) goes here: one more timed step in one_run, one more column above.


if __name__ == "__main__":
    main()
