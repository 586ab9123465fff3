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

Serve's click-to-overlay (`serve_run`): a real `segvol serve` (SegVolServer + Workspace) on 127.0.0.1
with its launch token, over the same image file, model and prompts: the box dragged on the axial then the
coronal view, then the same two clicks, each timed from the POST /api/point to the three rendered slices
(axial, coronal, sagittal through the click, fetched at once as the page does). Printed next to the
Session's click with the difference (goal: serve within 0.2 s of the Session) and the Session seconds the
server itself reports for the click (the rest is HTTP, JSON, rendering and PNG encoding).
The synthetic case is written to a temporary NIfTI first, so that both read the same file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
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


def synthetic_case(folder: Path):
    """A body-like 96x192x192 CT (written to `folder` as NIfTI, canonical = stored order reversed), a
    40x100x100 box and two clicks inside it."""
    import nibabel as nib

    from segvol.io.image import read_image

    rng = np.random.default_rng(0)
    d, h, w = 96, 192, 192
    _, yy, xx = np.ogrid[:d, :h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 <= 1
    hu = np.where(body, 20 + 80 * rng.random((d, h, w), dtype=np.float32), -1000.0).astype(np.int16)
    path = folder / "synthetic_ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), np.eye(4)), str(path))  # RAS: canonical (S, A, R)
    box = (28, 46, 46, 67, 145, 145)
    clicks = clicks_in(np.argwhere(np.ones((40, 100, 100), bool)) + box[:3])
    return read_image(path), "synthetic 96x192x192", box, clicks, path


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
    return image, f"{image_path.name} {'x'.join(map(str, image.shape))}", box, clicks_in(found), image_path


def one_run(model, counts, case) -> dict:
    from segvol.infer.session import Session

    image, _, box, (centre, end), _ = case
    import copy

    image = copy.copy(image)  # a Session may drop the image's own array: hand it a copy
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
    return row


def serve_run(model, counts, case) -> dict:
    """The box and the two clicks through a real `segvol serve` on loopback: each click timed from the
    POST to the three rendered slices through it (fetched concurrently, as the page loads its views)."""
    from concurrent.futures import ThreadPoolExecutor

    from segvol.serve.server import SegVolServer
    from segvol.serve.workspace import Workspace

    _, _, box, clicks, path = case
    row = {}
    with tempfile.TemporaryDirectory() as uploads:
        server = SegVolServer(("127.0.0.1", 0), Workspace(model, path.parent), 1 << 20, upload_dir=uploads)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        try:
            depth, height, width = _call(server, "/api/open", {"path": path.name})["shape"]
            _call(server, "/api/object", {"name": "object"})
            d0, h0, w0, d1, h1, w1 = box
            across = {"x0": width - w1 - 0.5, "x1": width - w0 - 0.5}  # pixel centres of the flipped columns
            drags = [
                ("axial", d0, {**across, "y0": height - h1 - 0.5, "y1": height - h0 - 0.5}),
                ("coronal", h0, {**across, "y0": depth - d1 - 0.5, "y1": depth - d0 - 0.5}),
            ]
            centre_of_box = tuple((box[a] + box[a + 3]) // 2 for a in range(3))
            for step, (d, h, w) in (
                ("serve_first", centre_of_box),
                ("serve_click", clicks[0]),
                ("serve_click2", clicks[1]),
            ):
                counts.update(encoder=0, decoder=0, encoder_s=0.0, decoder_s=0.0)
                started = time.perf_counter()
                if step == "serve_first":
                    _call(
                        server,
                        "/api/box",
                        {"object": "object", "view": drags[0][0], "index": drags[0][1], **drags[0][2]},
                    )
                    state = _call(
                        server,
                        "/api/box",
                        {"object": "object", "view": drags[1][0], "index": drags[1][1], **drags[1][2]},
                    )
                else:
                    click = {"view": "axial", "index": d, "x": width - w - 0.5, "y": height - h - 0.5}
                    state = _call(server, "/api/point", {"object": "object", **click})
                slices = [
                    f"/api/slice?view={v}&index={i}&window=abdomen&d={d}&h={h}&w={w}"
                    for v, i in (("axial", d), ("coronal", h), ("sagittal", w))
                ]
                with ThreadPoolExecutor(3) as pool:
                    pictures = list(pool.map(lambda url: _call(server, url), slices))
                row[step] = time.perf_counter() - started
                assert all(picture[:4] == b"\x89PNG" for picture in pictures)
                row[f"{step}_session"] = state["seconds"]  # what the server's own Session took
                row[f"{step}_encoder"], row[f"{step}_decoder"] = counts["encoder"], counts["decoder"]
                row[f"{step}_voxels"] = state["objects"][0]["voxels"]
            assert state["objects"][0]["box"] == list(box), (state["objects"][0]["box"], box)
        finally:
            server.shutdown()
            server.server_close()
    return row


def _call(server, path: str, payload: dict | None = None):
    """One API call with the launch's token, as the page makes it: JSON in and out, or a PNG."""
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    headers = {"X-SegVol-Token": server.token, "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{server.port}{path}"
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=600) as response:
        body = response.read()
        return json.loads(body) if response.headers["Content-Type"] == "application/json" else body


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
    parser.add_argument("--no-serve", action="store_true", help="skip serve's click-to-overlay")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO))
    from segvol.model import build_model, model_config

    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory()
    if args.synthetic or args.image is None or args.label is None:
        case = synthetic_case(Path(scratch.name))
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
            if not args.no_serve:
                rows[key][-1].update(serve_run(model, counts, case))
    report(rows, case, args, (load_before, os.getloadavg()[0]))
    scratch.cleanup()
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
    if "serve_click" not in rows[next(iter(rows))][0]:
        return
    print(
        "serve: click-to-overlay through segvol serve on 127.0.0.1 (POST /api/point + the 3 slices' PNGs); "
        "its session = the Session seconds the server reports; - Session = serve minus the Session API's click"
    )
    print(f"{'preset':>6} {'prec':>5} |{'serve first':>12} |{'serve click (centre)':>37} |{'serve click2 (end)':>37} |")
    print(
        f"{'':>6} {'':>5} | {'s':>10} |" + f" {'s':>6} {'its session':>11} {'- Session':>9} {'enc':>3} {'dec':>3} |" * 2
    )
    for (preset, precision), runs in rows.items():
        line = f"{preset:>6} {precision:>5} | {statistics.median(run['serve_first'] for run in runs):10.2f} |"
        for step in ("click", "click2"):
            serve = f"serve_{step}"
            line += (
                f" {statistics.median(run[serve] for run in runs):6.3f}"
                f" {statistics.median(run[serve + '_session'] for run in runs):11.3f}"
                f" {statistics.median(run[serve] - run[step] for run in runs):+9.3f}"
                f" {statistics.median(run[serve + '_encoder'] for run in runs):3.0f}"
                f" {statistics.median(run[serve + '_decoder'] for run in runs):3.0f} |"
            )
        same = all(run[f"serve_{step}_voxels"] == run[f"{step}_voxels"] for run in runs for step in ("click", "click2"))
        print(line + ("  same masks as the Session" if same else "  MASKS DIFFER from the Session's"))


if __name__ == "__main__":
    main()
