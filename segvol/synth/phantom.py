"""One synthetic abdominal CT case: patient, scan geometry, tissue map and CT numbers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from segvol.synth.anatomy import Anatomy, Body, Tissue, paint_anatomy, sample_body
from segvol.synth.appearance import Domain, render_ct
from segvol.synth.fields import Grid

ACQUISITION_MATRIX = 512  # pixels of the simulated scanner's reconstruction


@dataclass
class Phantom:
    """A case in canonical array order (D, H, W) = (S, A, R).

    `affine` maps the array index (d, h, w) to RAS+ world mm (it is *not* a NIfTI affine yet:
    NIfTI orders the array axes x, y, z; see `dataset.to_nifti`).
    """

    hu: np.ndarray  # int16 (D, H, W)
    tissue: np.ndarray  # uint8 (D, H, W), `Tissue` ids
    spacing: tuple[float, float, float]  # (D, H, W) mm
    affine: np.ndarray  # 4x4, (d, h, w, 1) -> (R, A, S, 1)
    lesions: dict[str, int]  # lesion kind -> number painted


def case_rng(seed: int, dataset: str, index: int, stream: str = "case") -> np.random.Generator:
    """Generator that depends only on (seed, dataset name, case index, stream name)."""
    digest = hashlib.sha256(f"{dataset}\0{stream}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words, int(index)]))


def scan_grid(rng: np.random.Generator, body: Body, domain: Domain, shape_max) -> Grid:
    """Place a scanner field of view around `body` and fit it into `shape_max` voxels.

    The scanner reconstructs a 512 matrix at 0.7-1 mm; we keep its field of view but sample it
    on at most `shape_max` voxels, so the in-plane spacing is coarser than the scanner's (the
    phantom is what a downsampled clinical scan would look like).
    """
    max_d, max_h, max_w = (int(n) for n in shape_max)
    extent_z = body.z_top - body.z_bottom
    thickness = float(rng.uniform(*domain.slice_mm))
    slices = int(np.ceil(extent_z / thickness))
    if slices > max_d:
        thickness = extent_z / max_d
        slices = max_d
    fov = ACQUISITION_MATRIX * float(rng.uniform(*domain.pixel_mm))
    fov = max(fov, 2.0 * body.half_width + 40.0)
    pixel = max(fov / max_w, (2.0 * body.half_depth + 60.0) / max_h)
    cols = min(max_w, int(np.ceil(fov / pixel)))
    rows = min(max_h, int(np.ceil(fov / pixel)))
    # The patient is centred on the couch but not exactly on the scanner's axis; keep the couch
    # edge (below the back) inside the rows.
    shift_x = float(rng.uniform(-15.0, 15.0))
    centre_y = float(rng.uniform(-20.0, 10.0))
    low_y = -body.half_depth - 30.0
    centre_y = max(centre_y, low_y + (rows - 1) * pixel / 2.0)
    origin = (
        body.z_bottom + 0.5 * (extent_z - (slices - 1) * thickness),
        centre_y - (rows - 1) * pixel / 2.0,
        shift_x - (cols - 1) * pixel / 2.0,
    )
    return Grid(shape=(slices, rows, cols), spacing=(thickness, pixel, pixel), origin=origin)


def make_phantom(
    rng: np.random.Generator,
    domain: Domain,
    shape_max=(96, 160, 160),
    require_lesion: tuple[str, ...] = (),
) -> Phantom:
    """Draw and render one case.

    `require_lesion`: lesion kinds of which the case must hold at least one in total (lesion
    datasets); other lesions appear with the domain's probabilities.
    """
    body = sample_body(rng, domain.organ_scale, domain.half_width_mm, domain.margin_below_mm)
    grid = scan_grid(rng, body, domain, shape_max)
    counts = {
        "liver tumor": _lesion_count(rng, domain.liver_tumor_probability, 3),
        "kidney tumor": _lesion_count(rng, domain.kidney_tumor_probability, 2),
    }
    if require_lesion and not any(counts[kind] for kind in require_lesion):
        counts[require_lesion[int(rng.integers(len(require_lesion)))]] = 1
    anatomy_seed = rng.integers(2**63)
    anatomy = None
    for attempt in range(4):
        anatomy = paint_anatomy(
            grid,
            body,
            np.random.default_rng([anatomy_seed, attempt]),
            liver_tumors=counts["liver tumor"],
            kidney_tumors=counts["kidney tumor"],
        )
        if _lesions_present(anatomy, require_lesion):
            break
    hu = render_ct(anatomy, grid, domain, rng)
    painted = {kind: sum(1 for lesion in anatomy.lesions if lesion.kind == kind) for kind in counts}
    return Phantom(
        hu=hu,
        tissue=anatomy.tissue,
        spacing=grid.spacing,
        affine=_canonical_affine(rng, grid),
        lesions=painted,
    )


def _lesion_count(rng: np.random.Generator, probability: float, most: int) -> int:
    if rng.random() >= probability:
        return 0
    return int(1 + min(most - 1, rng.geometric(0.6) - 1))


def _lesions_present(anatomy: Anatomy, kinds) -> bool:
    if not kinds:
        return True
    lesion_tissues = {
        "liver tumor": (Tissue.LIVER_TUMOR,),
        "kidney tumor": (Tissue.KIDNEY_LEFT_TUMOR, Tissue.KIDNEY_RIGHT_TUMOR),
    }
    wanted = [t for kind in kinds for t in lesion_tissues[kind]]
    return bool(np.isin(anatomy.tissue, wanted).any())


def _canonical_affine(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """(d, h, w) -> RAS+ mm: body frame plus a random couch position (scanner coordinates)."""
    table_position = (
        float(rng.uniform(-900.0, -300.0)),
        float(rng.uniform(-40.0, 40.0)),
        float(rng.uniform(-10.0, 10.0)),
    )  # (S, A, R) offsets
    affine = np.zeros((4, 4))
    affine[0, 2] = grid.spacing[2]  # w -> R
    affine[1, 1] = grid.spacing[1]  # h -> A
    affine[2, 0] = grid.spacing[0]  # d -> S
    affine[0, 3] = grid.origin[2] + table_position[2]
    affine[1, 3] = grid.origin[1] + table_position[1]
    affine[2, 3] = grid.origin[0] + table_position[0]
    affine[3, 3] = 1.0
    return affine
