"""Rotation robustness: Dice per organ before and after rotating the volume (45 deg about z, ~5.7 deg about
x and y by default), optionally next to SegVol with the equivariant embedding.

Example:
  segvol evaluate rotation --checkpoint M --zarr data/zarr/ext_organs.zarr --out results/rotation.csv \\
      --per-case results/rotation_per_case.parquet --png results/figures/rotation.png
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
        "--equivariant",
        default=None,
        metavar="ADAPTER",
        help="also score SegVol with this equivariant-embedding adapter (segvol finetune-equivariant)",
    )
    parser.add_argument("--split", default="all", choices=["all", "test"], help="cases of each store")
    evaluation_flags(parser)


def rotate_case(case, degrees_z: float, degrees_x: float, degrees_y: float):
    """The case rotated in voxel index space: about z (the H-W plane), then x (D-H), then y (D-W).

    Intensities are linearly interpolated, labels by nearest neighbour; outside is 0 (air after
    normalization). Rotations happen in index space, so on anisotropic grids the physical tilt
    about x/y differs from the nominal angle; the per-case rows record the spacing.
    """
    from scipy import ndimage

    image, labels = case.image, case.labels.astype(np.uint8)
    for angle, axes in ((degrees_z, (1, 2)), (degrees_x, (0, 1)), (degrees_y, (0, 2))):
        if angle:
            image = ndimage.rotate(image, angle, axes=axes, reshape=False, order=1, mode="constant", cval=0.0)
            labels = ndimage.rotate(
                labels, angle, axes=(axes[0] + 1, axes[1] + 1), reshape=False, order=0, mode="constant", cval=0
            )
    return replace(case, image=np.clip(image, 0, 1).astype(np.float32), labels=labels > 0)


def rotation_effect(per_case, seed: int):
    """Per category (and "all"): paired Dice difference equivariant - SegVol on the same cases,
    unrotated and rotated, with the median's bootstrap CI and the paired Wilcoxon test."""
    import pandas as pd

    from segvol.evaluate.methods import EQUIVARIANT
    from segvol.evaluate.statistics import median_interval, paired_wilcoxon

    wide = per_case.pivot_table(
        index=["dataset", "case", "category", "variant"], columns="method", values="dice", aggfunc="first"
    ).reset_index()
    rows = []
    for category, group in [*wide.groupby("category", sort=True), ("all", wide)]:
        row = {"category": category}
        for variant in ("original", "rotated"):
            block = group[group["variant"] == variant]
            ours, theirs = block[EQUIVARIANT].to_numpy(float), block["SegVol"].to_numpy(float)
            interval = median_interval(ours - theirs, seed=seed)
            test = paired_wilcoxon(ours, theirs)
            row.update(
                {
                    f"{variant}_difference": interval.median,
                    f"{variant}_ci_low": interval.low,
                    f"{variant}_ci_high": interval.high,
                    f"{variant}_p_value": test.p_value,
                    f"{variant}_pairs": test.n,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def effect_verdict(low: float, high: float) -> str:
    """Plain words for a paired difference's confidence interval (ours - SegVol)."""
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "made no measurable difference"


def run(args, settings) -> int:
    """Median Dice per category, unrotated and rotated; with `--equivariant`, for both models and
    with the paired effect of the equivariant embedding (columns `equivariant_*`, `*_difference`)."""
    import pandas as pd

    from segvol.evaluate import plots
    from segvol.evaluate.cases import score_store, write_parquet
    from segvol.evaluate.methods import EQUIVARIANT, SegVolMethod, load_segvol, load_segvol_with_adapter
    from segvol.evaluate.tables import write_csv

    angles = settings["rotation_degrees"]
    methods = [
        SegVolMethod(
            load_segvol(args.checkpoint, device=args.device),
            prompt=settings["prompt"],
            mode="zoom",
            overlap=settings["overlap"],
        )
    ]
    if args.equivariant:
        methods.append(
            SegVolMethod(
                load_segvol_with_adapter(args.checkpoint, args.equivariant, device=args.device),
                prompt=settings["prompt"],
                mode="zoom",
                name=EQUIVARIANT,
                overlap=settings["overlap"],
            )
        )
    frames = []
    for store in args.zarr:
        for variant, transform in (
            ("original", None),
            ("rotated", lambda c: rotate_case(c, angles["z"], angles["x"], angles["y"])),
        ):
            rows, _ = score_store(
                store,
                methods,
                seed=args.seed,
                split=args.split,
                limit=settings.get("max_cases"),
                tolerance_mm=settings["nsd_tolerance_mm"],
                transform=transform,
            )
            frames.append(rows.assign(variant=variant))
    per_case = pd.concat(frames, ignore_index=True)
    medians = per_case.groupby(["method", "category", "variant"])["dice"].median().unstack("variant")
    medians = medians.reindex(columns=["original", "rotated"])
    summary = medians.loc["SegVol"].reset_index()
    summary["dice_drop"] = summary["original"] - summary["rotated"]
    title = f"Rotation robustness: {angles['z']} deg about z, {angles['x']}/{angles['y']} deg about x/y"
    series = {"original": "SegVol", "rotated": "SegVol"}
    if args.equivariant:
        ours = medians.loc[EQUIVARIANT].add_prefix("equivariant_").reset_index()
        summary = summary.merge(ours, on="category", how="outer")
        pooled = per_case.groupby(["method", "variant"])["dice"].median()
        summary = pd.concat(
            [
                summary,
                pd.DataFrame(
                    [
                        {
                            "category": "all",
                            "original": pooled["SegVol", "original"],
                            "rotated": pooled["SegVol", "rotated"],
                            "equivariant_original": pooled[EQUIVARIANT, "original"],
                            "equivariant_rotated": pooled[EQUIVARIANT, "rotated"],
                        }
                    ]
                ),
            ],
            ignore_index=True,
        )
        summary["dice_drop"] = summary["original"] - summary["rotated"]
        summary["equivariant_dice_drop"] = summary["equivariant_original"] - summary["equivariant_rotated"]
        summary = summary.merge(rotation_effect(per_case, args.seed), on="category", how="left")
        total = summary.set_index("category").loc["all"]
        title += (
            f"\nequivariant embedding {effect_verdict(total.rotated_ci_low, total.rotated_ci_high)}"
            f" on rotated cases: median dDice {total.rotated_difference:+.3f}"
            f" (95% CI {total.rotated_ci_low:+.3f} to {total.rotated_ci_high:+.3f},"
            f" p={total.rotated_p_value:.2g}, n={int(total.rotated_pairs)});"
            f" unrotated {total.original_difference:+.3f}"
        )
        series.update({"equivariant_original": "equivariant", "equivariant_rotated": "equivariant"})
    write_parquet(per_case, args.per_case, {"rotation_degrees": angles})
    write_csv(summary, args.out)
    bars = summary[summary["category"] != "all"]
    long = bars.melt(id_vars="category", value_vars=list(series), var_name="variant", value_name="median_dice")
    long["variant"] = long["variant"].map(lambda v: f"{series[v]}, {v.removeprefix('equivariant_')}")
    plots.grouped_bars(
        long,
        "category",
        "variant",
        "median_dice",
        args.png,
        title,
        "median Dice",
        palette={
            "SegVol, original": "#c0392b",
            "SegVol, rotated": "#2c3e50",
            "equivariant, original": "#e67e22",
            "equivariant, rotated": "#2980b9",
        },
    )
    return 0
