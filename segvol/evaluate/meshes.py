"""3-D rendering of one predicted case (beyond the paper): SegVol's surfaces next to the ground truth's.

Example:
  segvol evaluate meshes --checkpoint models/finetune/segvol/model.safetensors \\
      --zarr data/zarr/ext_organs.zarr --out-dir results/meshes --png results/figures/meshes.png

The case: of the given stores' cases, the one with the most categories present (the first such in store
and case order), so that the picture holds as many structures as one scan has. The prediction is Table
2's: SegVol with `evaluate.prompt` (zoom-out-zoom-in), the same ground-truth prompts and seeds
(`segvol.evaluate.prompts.category_seed`), so each Dice in the legend is the one Table 2 scored there.

Meshes: `segvol.io.mesh`, the code behind `segvol predict --mesh`: the marching-cubes surface of each
mask in world millimetres through the store's canonical affine, binary STL in LPS as 3D Slicer reads
model files. They are written to `<out-dir>/<dataset>_<case>/truth/` and `.../segvol/` (one
`<category>.stl` each; an empty mask has none), and the figure is drawn from those files read back, so it
shows exactly what a viewer opens.

Rendering: matplotlib's Poly3DCollection, each triangle flat-shaded by one fixed light (Lambert), seen from
the front and a little from above and the patient's left, with the patient's right on the viewer's left
as in radiology; both panels share axes and limits. Why matplotlib: it is already the figure library of
every other artefact; an off-screen VTK/PyVista renderer would add a large dependency for one picture.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("segvol.evaluate")

TITLE = "Surface meshes of one predicted case"
# tab10 without grey: a category keeps its colour in both panels.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
LIGHT = np.array([-0.35, 0.8, 0.5])  # towards the light, RAS+: from the front, above, the patient's left
VIEW = {"elev": 12.0, "azim": 70.0}  # matplotlib camera: azim 90 looks from anterior (+y) at the patient


def add_arguments(parser) -> None:
    from segvol.evaluate.cli import evaluation_flags

    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zarr", nargs="+", required=True, help="stores to take the case from (Table 2's)")
    parser.add_argument("--out-dir", required=True, help="folder for the STL files (replaced as a whole)")
    parser.add_argument("--png", required=True)
    evaluation_flags(parser)


def pick_case(stores) -> tuple[int, str] | None:
    """(index into `stores`, case id) of the case with the most categories present; None when none has one.

    Reads the case attributes (`categories_present`); only a store written without them has its labels read.
    """
    best, most = None, 0
    for index, store in enumerate(stores):
        for case in store.cases:
            attrs = store.case_attrs(case)
            if "categories_present" in attrs:
                present = len(attrs["categories_present"])
            else:
                labels = store.case(case)["labels"] if "labels" in store.case(case) else None
                present = 0 if labels is None else sum(bool(np.any(labels[c])) for c in range(labels.shape[0]))
            if present > most:
                best, most = (index, case), present
    return best


def surface_files(masks: dict, affine, folder: Path) -> dict[str, Path]:
    """category -> STL file of its mask's surface (`segvol.io.mesh`, LPS), for the non-empty masks."""
    from segvol.io.mesh import write_category_meshes

    written = write_category_meshes(masks, affine, folder, formats=("stl",)) if masks else {}
    return {name: paths[0] for name, paths in written.items()}


def read_surfaces(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """category -> (F, 3, 3) triangles in RAS+ mm, from the STL files (LPS on disk)."""
    from segvol.io.mesh import RAS_TO_LPS, read_stl

    return {name: read_stl(path)[0].astype(np.float64) * RAS_TO_LPS for name, path in files.items()}


def shaded(colour: str, triangles: np.ndarray) -> np.ndarray:
    """(F, 4) RGBA: `colour` darkened by the angle between each triangle's outward normal and the light."""
    from matplotlib.colors import to_rgb

    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    lambert = np.clip(normals @ (LIGHT / np.linalg.norm(LIGHT)), 0.0, 1.0)
    rgb = np.asarray(to_rgb(colour))[None, :] * (0.35 + 0.65 * lambert)[:, None]
    return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1)


def draw(
    panels: dict[str, dict[str, np.ndarray]], colours: dict[str, str], labels: dict[str, str], path, title: str
) -> None:
    """One 3-D panel per entry of `panels` (title -> category -> RAS+ triangles), same view and limits."""
    from matplotlib.patches import Patch
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from segvol.evaluate import plots

    every = [t.reshape(-1, 3) for surfaces in panels.values() for t in surfaces.values() if len(t)]
    if not every:
        plots.empty_figure(path, title, "no category of the case has a surface to show")
        return
    points = np.concatenate(every)
    low, high = points.min(axis=0), points.max(axis=0)
    centre, half = (low + high) / 2, (high - low).max() / 2 * 1.02
    plt = plots.pyplot()
    figure = plt.figure(figsize=(6.0 * len(panels), 6.4))
    for number, (panel, surfaces) in enumerate(panels.items(), 1):
        axis = figure.add_subplot(1, len(panels), number, projection="3d")
        drawn = [name for name, triangles in surfaces.items() if len(triangles)]
        if drawn:  # one collection: matplotlib orders the triangles by depth, across categories too
            triangles = np.concatenate([surfaces[name] for name in drawn])
            faces = np.concatenate([shaded(colours[name], surfaces[name]) for name in drawn])
            axis.add_collection3d(Poly3DCollection(triangles, facecolors=faces, edgecolors="none", linewidths=0))
        else:
            axis.text2D(0.5, 0.5, "nothing segmented", transform=axis.transAxes, ha="center")
        for set_limits, c in zip((axis.set_xlim, axis.set_ylim, axis.set_zlim), centre):
            set_limits(c - half, c + half)
        axis.set_box_aspect((1, 1, 1))
        axis.view_init(**VIEW)
        axis.set_xlabel("x: R (mm)", labelpad=2)
        axis.set_ylabel("y: A (mm)", labelpad=2)
        axis.set_zlabel("z: S (mm)", labelpad=2)
        axis.tick_params(labelsize=8, pad=0)
        axis.set_title(panel)
    handles = [Patch(facecolor=colours[name], label=label) for name, label in labels.items()]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), frameon=False)
    rows = (len(handles) + 2) // 3
    figure.suptitle(title, fontsize=12)
    figure.tight_layout(rect=(0, 0.045 * rows, 1, 0.97))
    plots.save(figure, path)


def run(args, settings) -> int:
    from segvol.evaluate.methods import SegVolMethod, load_segvol
    from segvol.evaluate.metrics import dice
    from segvol.evaluate.prompts import category_seed, prompt_from_truth
    from segvol.evaluate.stores import open_store, read_case
    from segvol.io.atomic import atomic_path

    stores = [open_store(path) for path in args.zarr]
    out_dir = Path(args.out_dir)
    picked = pick_case(stores)
    with atomic_path(out_dir) as temporary:
        temporary.mkdir()
        if picked is None:
            from segvol.evaluate import plots

            plots.empty_figure(args.png, TITLE, "no case of the stores has a labelled category")
            return 0
        store = stores[picked[0]]
        case = read_case(store, picked[1])
        attrs = store.case_attrs(case.case)
        if "affine" not in attrs:
            raise ValueError(f"{store.path}/{case.case}: no 'affine' attribute; run `segvol normalize` again")
        affine = np.asarray(attrs["affine"], dtype=np.float64)
        truths = {name: case.labels[k] for k, name in enumerate(case.categories) if case.labels[k].any()}
        method = SegVolMethod(
            load_segvol(args.checkpoint, device=args.device),
            prompt=settings["prompt"],
            mode="zoom",
            overlap=settings["overlap"],
        )
        prompts = [
            prompt_from_truth(
                method.prompt, name, truth, np.random.default_rng(category_seed(args.seed, case.case, name))
            )
            for name, truth in truths.items()
        ]
        predicted = dict(zip(truths, method.predict_many(case.image, case.spacing, prompts)))
        folder = temporary / f"{case.dataset}_{case.case}"
        files = {
            "truth": surface_files(truths, affine, folder / "truth"),
            "segvol": surface_files(predicted, affine, folder / "segvol"),
        }
        surfaces = {kind: read_surfaces(paths) for kind, paths in files.items()}
        panels = {"ground truth": surfaces["truth"], f"SegVol ({method.prompt}, zoom-out-zoom-in)": surfaces["segvol"]}
        colours = {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(truths)}
        labels = {}
        for name in truths:
            score = dice(predicted[name], truths[name])
            labels[name] = f"{name}: Dice {score:.2f}" if predicted[name].any() else f"{name}: nothing segmented"
            log.info(
                "%s %s %s: Dice %.3f, %d triangles (ground truth %d)",
                case.dataset,
                case.case,
                name,
                score,
                len(surfaces["segvol"].get(name, ())),
                len(surfaces["truth"][name]),
            )
        draw(
            panels,
            colours,
            labels,
            args.png,
            f"{TITLE}: {case.dataset} {case.case}\nSTL files in LPS mm as 3D Slicer reads them;"
            " front view, the patient's right on the left",
        )
    log.info("wrote %s and %s", args.png, out_dir)
    return 0
