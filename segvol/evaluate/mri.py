"""MRI generalization: Dice on MR (a labelled MR store, or the demo's MR-like stand-in) next to CT.

Example:
  segvol evaluate mri --checkpoint M --zarr data/zarr/ext_organs.zarr --stand-in --out results/mri.csv \\
      --per-case results/mri_per_case.parquet --png results/figures/mri.png
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary CSV")
    parser.add_argument("--per-case", required=True, help="tidy per-case parquet")
    parser.add_argument("--png", required=True)
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="the stores are CT: score them as CT and through the MR-like intensity map",
    )
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def mr_like(image: np.ndarray) -> np.ndarray:
    """The demo's MR stand-in: a non-monotonic intensity map plus a smooth bias field.

    CT intensities are reordered (sin maps mid-grey tissue brightest and dense tissue darker,
    as T2-weighted MR reorders water, fat and bone) and multiplied by a 30 % linear coil-bias
    ramp along the rows; air stays 0. It tests robustness to a new contrast, not real MR.
    """
    remapped = np.sin(np.pi * np.clip(image, 0, 1)) * 0.8 + 0.2 * image**2
    ramp = np.linspace(0.85, 1.15, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(remapped * ramp, 0, 1).astype(np.float32)


def run(args, settings) -> int:
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.tables import write_csv

    model = load_segvol(args.checkpoint, device=args.device)
    method = SegVolMethod(model, prompt=settings["prompt"], mode="zoom", overlap=settings["overlap"])
    variants = (
        [("CT", None), ("MR-like stand-in", lambda c: replace(c, image=mr_like(c.image)))]
        if args.stand_in
        else [("MR", None)]
    )
    frames = []
    for store in args.zarr:
        for variant, transform in variants:
            rows, _ = score_store(
                store,
                [method],
                seed=args.seed,
                split=args.split,
                limit=settings.get("max_cases"),
                tolerance_mm=settings["nsd_tolerance_mm"],
                transform=transform,
            )
            frames.append(rows.assign(modality=variant))
    per_case = pd.concat(frames, ignore_index=True)
    summary = (
        per_case.groupby(["category", "modality"], sort=False)["dice"]
        .agg(median_dice="median", mean_dice="mean", scores="count")
        .reset_index()
    )
    write_parquet(per_case, args.per_case, {"stand_in": bool(args.stand_in)})
    write_csv(summary, args.out)
    plots.grouped_bars(
        summary,
        "category",
        "modality",
        "median_dice",
        args.png,
        "MRI generalization" + (" (demo: MR-like intensity stand-in)" if args.stand_in else ""),
        "median Dice",
        palette={"CT": "#c0392b", "MR-like stand-in": "#2980b9", "MR": "#2980b9"},
    )
    return 0
