"""Paper evaluations: per-case scores, Table 2, Table 3 and the figures of the ablations.

Subcommands (each writes atomically; per-case scores are tidy parquet files):
  cases    per-case Dice/NSD of SegVol and the baselines on one store
  table2   median Dice per (dataset, category) and method from `cases` outputs
  table3   resize vs sliding window vs zoom-out-zoom-in on the same cases
  fig2, fig3a, fig3b, fig5, table6, rotation, mri: the paper's figures and ablations
           (see `segvol evaluate <name> --help`)
  meshes   3-D rendering of one predicted case: surface meshes (STL) of SegVol and the ground truth

Example:
  segvol evaluate cases --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/ext_organs.zarr --out results/cases/ext_organs.parquet
  segvol evaluate table2 --cases results/cases/*.parquet --out results/table2.csv \\
      --per-case results/table2_per_case.parquet --methods results/table2_methods.json \\
      --lesions results/table2_lesions.csv
"""

from __future__ import annotations

import argparse
import logging

from segvol.cli_options import add_common_arguments

log = logging.getLogger("segvol.evaluate")


def _common(parser, model: bool = True):
    """The shared flags of an evaluation; one that runs a model also gets --device/--threads/--seed/--quiet."""
    add_common_arguments(parser, params="evaluate", model=model, device=model, threads=model, quiet=model,
                         seed="seed of the ground-truth point prompts" if model else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    fmt = argparse.RawDescriptionHelpFormatter

    cases = commands.add_parser(
        "cases", formatter_class=fmt, help="per-case Dice/NSD of every method on one store",
        description="Score SegVol (prompt `evaluate.prompt`, zoom-out-zoom-in) and every baseline of\n"
        "`evaluate.methods` that has a checkpoint on each (case, category) of a store.\n\nExample:\n"
        "  segvol evaluate cases --checkpoint models/finetune/segvol/model.safetensors \\\n"
        "      --zarr data/zarr/ext_organs.zarr --out results/cases/ext_organs.parquet",
    )
    cases.add_argument("--checkpoint", required=True, help="SegVol checkpoint (safetensors or official)")
    cases.add_argument("--zarr", required=True, help="dataset store (CONTRIBUTING.md contract)")
    cases.add_argument("--out", required=True, help="per-case parquet to write")
    cases.add_argument("--split", default="all", choices=["all", "test", "train"],
                       help="cases to score: all (external sets) or the stored test split")
    cases.add_argument("--prompts", default=None,
                       help="comma-separated SegVol prompt kinds (Fig 3b), e.g. text,point,box,point+text,box+text;"
                       " default: evaluate.prompt")
    cases.add_argument("--label", default="SegVol", help="method name of SegVol's rows (e.g. the run: first2)")
    cases.add_argument("--segvol-only", action="store_true", help="skip the baselines (ablations)")
    _common(cases)

    t2 = commands.add_parser(
        "table2", formatter_class=fmt, help="Table 2: median Dice per category and method",
        description="Merge per-case parquet files into Table 2.\n\nExample:\n"
        "  segvol evaluate table2 --cases results/cases/*.parquet --out results/table2.csv \\\n"
        "      --per-case results/table2_per_case.parquet --methods results/table2_methods.json \\\n"
        "      --lesions results/table2_lesions.csv",
    )
    t2.add_argument("--cases", nargs="+", required=True, help="outputs of `segvol evaluate cases`")
    t2.add_argument("--out", required=True, help="table CSV")
    t2.add_argument("--per-case", required=True, help="all per-case rows, one parquet")
    t2.add_argument("--methods", required=True, help="JSON sidecar: per column ran/not run and why, means")
    t2.add_argument("--lesions", default=None,
                    help="CSV of the lesion rows, lesion-wise: detected/missed lesions, false positives, sensitivity,"
                    " precision, F1 per method (segvol.evaluate.lesions); not written when omitted")
    _common(t2, model=False)

    t3 = commands.add_parser(
        "table3", formatter_class=fmt, help="Table 3: resize vs sliding window vs zoom-out-zoom-in",
        description="Run the three inference strategies on the same cases in one process (box+text)\n"
        "and report median Dice and milliseconds per case.\n\nExample:\n"
        "  segvol evaluate table3 --checkpoint models/finetune/segvol/model.safetensors \\\n"
        "      --zarr data/zarr/ext_organs.zarr data/zarr/ext_lesions.zarr --out results/table3.csv",
    )
    t3.add_argument("--checkpoint", required=True)
    t3.add_argument("--zarr", nargs="+", required=True)
    t3.add_argument("--out", required=True, help="table CSV")
    t3.add_argument("--per-case", default=None, help="per-case parquet (default: <out>_per_case.parquet)")
    t3.add_argument("--limit", type=int, default=None, help="at most this many cases per store")
    _common(t3)

    from segvol.evaluate import ablations

    ablations.add_subcommands(commands, _common)
    from segvol.evaluate import task_specific

    task_specific.add_subcommands(commands, _common)
    from segvol.evaluate import meshes

    meshes.add_subcommand(commands, _common)


def run(args) -> int:
    from segvol.settings import stage_settings

    settings = stage_settings("evaluate", args.params)
    if getattr(args, "model", None) is not None:
        stage_settings("model", args.model, flag="--model")  # validates; the checkpoint carries the architecture
    if getattr(args, "device", None) is not None:
        from segvol.device import resolve_device

        args.device = resolve_device(args.device)  # a missing device fails here, before any store is read
    handler = {"cases": run_cases, "table2": run_table2, "table3": run_table3}.get(args.evaluation)
    if args.evaluation == "meshes":
        from segvol.evaluate import meshes

        handler = meshes.run
    if handler is None:
        from segvol.evaluate import ablations, task_specific

        handler = {**ablations.HANDLERS, **task_specific.HANDLERS}[args.evaluation]
    return handler(args, settings)


def run_cases(args, settings) -> int:
    from pathlib import Path

    from segvol.evaluate.baselines import build_baselines
    from segvol.evaluate.cases import score_store, write_parquet
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
            methods.append(SegVolMethod(model, prompt=kind.strip(), mode="zoom", name=args.label,
                                        overlap=settings["overlap"]))
        reasons[args.label] = f"ran: {args.checkpoint} ({', '.join(kinds)}, zoom-out-zoom-in, {args.device})"
    if not args.segvol_only:
        baselines, baseline_reasons = build_baselines(settings["methods"], settings["baseline_checkpoints"],
                                                       device=args.device)
        methods += baselines
        reasons.update(baseline_reasons)
    for column, reason in reasons.items():
        log.info("%s: %s", column, reason)
    rows, skipped = score_store(args.zarr, methods, seed=args.seed, split=args.split,
                                tolerance_mm=settings["nsd_tolerance_mm"], progress=not args.quiet)
    metadata = {"store": str(Path(args.zarr)), "methods": reasons, "skipped": skipped.to_dict("records"),
                "settings": settings}
    write_parquet(rows, args.out, metadata)
    log.info("wrote %d rows (%d skipped pairs) to %s", len(rows), len(skipped), args.out)
    return 0


def run_table2(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate.cases import read_parquet_metadata, write_parquet
    from segvol.evaluate.metrics import summarize
    from segvol.evaluate.tables import table2, table_columns, write_csv, write_json

    columns = table_columns(settings["methods"])
    frames, reasons, skipped = [], {}, []
    for path in args.cases:
        frames.append(pd.read_parquet(path))
        meta = read_parquet_metadata(path)
        for column, reason in meta.get("methods", {}).items():
            reasons.setdefault(column, {})[meta.get("store", path)] = reason
        skipped += meta.get("skipped", [])
    per_case = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table = table2(per_case, columns)
    sidecar = {
        "columns": {c: reasons.get(c, {"-": "not run: not evaluated"}) for c in columns},
        "skipped": skipped,
        "aggregation": "cell = median Dice over cases; Average = mean of the dataset's category medians;"
                       " both-empty masks are skipped (NaN), see segvol.evaluate.metrics",
        "means": summarize(per_case, ["dataset", "category", "method"]).to_dict("records") if len(per_case) else [],
        "nsd_medians": summarize(per_case, ["dataset", "category", "method"], "nsd").to_dict("records")
        if len(per_case) else [],
    }
    write_parquet(per_case, args.per_case)
    write_json(sidecar, args.methods)
    if args.lesions:
        from segvol.evaluate.lesions import write_lesion_table

        lesions = write_lesion_table(per_case, columns, args.lesions)
        log.info("Table 2, lesion-wise:\n%s", lesions.to_string(index=False))
    write_csv(table, args.out)
    log.info("Table 2:\n%s", table.to_string(index=False))
    return 0


def run_table3(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.tables import table3, write_csv

    model = load_segvol(args.checkpoint, device=args.device)
    methods = [SegVolMethod(model, prompt="box+text", mode=mode, name=f"SegVol {mode}", overlap=settings["overlap"])
               for mode in ("resize", "window", "zoom")]
    frames = []
    for store in args.zarr:
        rows, _ = score_store(store, methods, seed=args.seed, tolerance_mm=settings["nsd_tolerance_mm"],
                              limit=args.limit or settings["max_cases"], progress=not args.quiet)
        frames.append(rows)
    per_case = pd.concat(frames, ignore_index=True)
    table = table3(per_case)
    write_parquet(per_case, args.per_case or _sibling(args.out, "_per_case.parquet"))
    write_csv(table, args.out)
    log.info("Table 3:\n%s", table.to_string(index=False))
    return 0


def _sibling(path, suffix: str):
    from pathlib import Path

    path = Path(path)
    return path.with_name(path.name.removesuffix(path.suffix) + suffix)
