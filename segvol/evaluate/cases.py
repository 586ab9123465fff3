"""Per-case scores: every (case, category) of a store, every method, one tidy row each.

`segvol evaluate cases` scores SegVol (prompt `evaluate.prompt`, zoom-out-zoom-in) and every baseline of
`evaluate.methods` that has a checkpoint on each (case, category) of a store; the tables and figures are made
from these rows.

Example:
  segvol evaluate cases --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/ext_organs.zarr --out results/cases/ext_organs.parquet
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segvol.evaluate.lesions import LESION_COLUMNS, case_columns

if TYPE_CHECKING:
    from segvol.evaluate.methods import Method

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset",
    "case",
    "category",
    "method",
    "prompt",
    "mode",
    "dice",
    "dice_official",
    "nsd",
    "seconds",
    "case_seconds",
    "voxels_truth",
    "voxels_pred",
    *LESION_COLUMNS,  # lesion-wise counts of a lesion category (segvol.evaluate.lesions), NaN for the others
]


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True, help="SegVol checkpoint (safetensors or official)")
    parser.add_argument("--zarr", required=True, help="dataset store (CONTRIBUTING.md contract)")
    parser.add_argument("--out", required=True, help="per-case parquet to write")
    parser.add_argument(
        "--split",
        default="all",
        choices=["all", "test", "train"],
        help="cases to score: all (external sets) or the stored test split",
    )
    parser.add_argument(
        "--prompts",
        default=None,
        help="comma-separated SegVol prompt kinds (Fig 3b), e.g. text,point,box,point+text,box+text;"
        " default: evaluate.prompt",
    )
    parser.add_argument("--label", default="SegVol", help="method name of SegVol's rows (e.g. the run: first2)")
    parser.add_argument("--segvol-only", action="store_true", help="skip the baselines (ablations)")
    evaluation_flags(parser)


def score_store(
    store: str | Path,
    methods: Sequence[Method],
    *,
    seed: int = 2023,
    split: str = "all",
    tolerance_mm: float = 1.0,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = False,
    transform=None,
):
    """Score `methods` on the cases of `store`. Returns (rows DataFrame, skipped DataFrame).

    Every method sees the same ground-truth prompt per (case, category) (seeded per pair).
    Categories with an empty mask in a case are not prompted; they appear in `skipped`.
    `transform(case) -> case` may alter a case first (rotation robustness).
    """
    import pandas as pd

    from segvol.evaluate.metrics import dice, dice_official, normalized_surface_dice
    from segvol.evaluate.prompts import category_seed, prompt_from_truth
    from segvol.evaluate.stores import iter_cases
    from segvol.progress import progress_bar

    rows, skipped = [], []
    cases = iter_cases(store, split=split, limit=limit)
    for case in progress_bar(cases, desc=f"evaluate {Path(store).name}", disable=not progress, unit="case"):
        if transform is not None:
            case = transform(case)
        wanted = [c for c in case.categories if categories is None or c in categories]
        for method in methods:
            prompts, names, truths = [], [], []
            for category in wanted:
                truth = case.labels[case.categories.index(category)]
                rng = np.random.default_rng(category_seed(seed, case.case, category))
                prompt = prompt_from_truth(method.prompt, category, truth, rng)
                if prompt is None:
                    if method is methods[0]:
                        skipped.append(
                            {
                                "dataset": case.dataset,
                                "case": case.case,
                                "category": category,
                                "reason": "empty ground truth",
                            }
                        )
                    continue
                prompts.append(prompt)
                names.append(category)
                truths.append(truth)
            if not prompts:
                continue
            started = time.perf_counter()
            masks = method.predict_many(case.image, case.spacing, prompts)
            case_seconds = time.perf_counter() - started
            seconds = case_seconds / len(prompts)
            for category, truth, mask in zip(names, truths, masks):
                mask = np.asarray(mask, dtype=bool)
                rows.append(
                    {
                        "dataset": case.dataset,
                        "case": case.case,
                        "category": category,
                        "method": method.name,
                        "prompt": method.prompt,
                        "mode": getattr(method, "mode", ""),
                        "dice": dice(mask, truth),
                        "dice_official": dice_official(mask, truth),
                        "nsd": normalized_surface_dice(mask, truth, case.spacing, tolerance_mm),
                        "seconds": seconds,
                        "case_seconds": case_seconds,
                        "voxels_truth": int(truth.sum()),
                        "voxels_pred": int(mask.sum()),
                        **case_columns(mask, truth, category),
                    }
                )
            log.info(
                "%s %s %s: mean Dice %.3f",
                case.dataset,
                case.case,
                method.name,
                float(np.nanmean([r["dice"] for r in rows[-len(names) :]])),
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame, pd.DataFrame(skipped, columns=["dataset", "case", "category", "reason"])


def write_parquet(frame, path: str | Path, metadata: dict | None = None) -> None:
    """Atomically write a tidy frame; `metadata` goes into the parquet schema as JSON."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from segvol.io.atomic import atomic_path

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged[b"segvol"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    from segvol.provenance import write_sidecar

    write_sidecar(path)


def read_parquet_metadata(path: str | Path) -> dict:
    import json

    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"segvol")
    return json.loads(raw) if raw else {}


def run(args, settings) -> int:
    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.stores import open_store

    open_store(args.zarr)  # fail early on a bad store, before loading models
    methods, reasons = [], {}
    kinds = [k.strip() for k in args.prompts.split(",")] if args.prompts else [settings["prompt"]]
    from segvol.evaluate.prompts import PROMPT_KINDS

    unknown = [k for k in kinds if k not in PROMPT_KINDS]
    if unknown:
        raise ValueError(f"unknown prompt kind(s) {unknown}; choose from {', '.join(PROMPT_KINDS)}")
    if "SegVol" in settings["methods"] or args.segvol_only:
        model = load_segvol(args.checkpoint, device=args.device)
        for kind in kinds:
            methods.append(
                SegVolMethod(model, prompt=kind.strip(), mode="zoom", name=args.label, overlap=settings["overlap"])
            )
        reasons[args.label] = f"ran: {args.checkpoint} ({', '.join(kinds)}, zoom-out-zoom-in, {args.device})"
    if not args.segvol_only:
        baselines, baseline_reasons = build_baselines(
            settings["methods"], settings["baseline_checkpoints"], device=args.device
        )
        methods += baselines
        reasons.update(baseline_reasons)
    for column, reason in reasons.items():
        log.info("%s: %s", column, reason)
    rows, skipped = score_store(
        args.zarr,
        methods,
        seed=args.seed,
        split=args.split,
        tolerance_mm=settings["nsd_tolerance_mm"],
        progress=not args.quiet,
    )
    metadata = {
        "store": str(Path(args.zarr)),
        "methods": reasons,
        "skipped": skipped.to_dict("records"),
        "settings": settings,
    }
    write_parquet(rows, args.out, metadata)
    log.info("wrote %d rows (%d skipped pairs) to %s", len(rows), len(skipped), args.out)
    return 0
