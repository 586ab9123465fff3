"""Procedural abdominal anatomy: a tissue map (one `Tissue` id per voxel) on a `Grid`.

Body frame (mm): x towards the patient's right, y anterior, z superior; z = 0 is roughly the
level of the renal hila. Structures are painted in anatomical layers, later ones winning where
they touch, so small overlaps of the random shapes resolve into plausible contact surfaces
(the kidney leaves its impression in the liver, not the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

from segvol.synth.fields import Blob, Grid, region_shape, rotation, smooth_noise, tube_level


class Tissue(IntEnum):
    """Voxel classes of a phantom. Label categories are unions of these (see `labels.py`)."""

    AIR = 0
    TABLE = 1
    FAT = 2
    MUSCLE = 3
    BOWEL = 4
    BOWEL_GAS = 5
    STOMACH = 6
    STOMACH_CONTENT = 7
    STOMACH_GAS = 8
    GALLBLADDER = 9
    FLUID = 10
    LUNG_LEFT = 11
    LUNG_RIGHT = 12
    HEART = 13
    LIVER = 14
    LIVER_VESSEL = 15
    LIVER_TUMOR = 16
    SPLEEN = 17
    KIDNEY_LEFT = 18
    KIDNEY_LEFT_MEDULLA = 19
    KIDNEY_RIGHT = 20
    KIDNEY_RIGHT_MEDULLA = 21
    KIDNEY_LEFT_TUMOR = 22
    KIDNEY_RIGHT_TUMOR = 23
    PANCREAS = 24
    AORTA = 25
    IVC = 26
    VERTEBRA = 27
    VERTEBRA_CORTEX = 28
    DISC = 29
    RIB = 30
    BOWEL_CONTENT = 31


SOFT_BACKGROUND = (Tissue.FAT, Tissue.BOWEL, Tissue.BOWEL_CONTENT, Tissue.BOWEL_GAS, Tissue.MUSCLE)


@dataclass(frozen=True)
class Body:
    """Per-patient landmarks shared by several structures (mm, body frame)."""

    half_width: float  # skin, x
    half_depth: float  # skin, y (the body centre is y = 0)
    squareness: float  # superellipse exponent of the axial outline
    fat: float  # subcutaneous fat thickness
    wall: float  # abdominal wall muscle thickness
    organ_scale: float
    spine_y: float  # centre of the vertebral bodies
    dome_z: float  # top of the right hemidiaphragm
    kidney_z: tuple[float, float]  # (right, left) kidney centres
    kidney_half_length: float
    z_top: float
    z_bottom: float


@dataclass
class Lesion:
    """One painted tumour: where it is and how it should look."""

    kind: str  # "liver tumor" | "kidney tumor"
    region: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, region-sized
    core: np.ndarray  # bool, region-sized: necrotic centre (may be empty)
    contrast: float  # HU relative to the host organ's enhancement
    radius_mm: float


@dataclass
class Anatomy:
    tissue: np.ndarray  # uint8 (D, H, W) of Tissue ids
    lesions: list[Lesion] = field(default_factory=list)


def sample_body(rng: np.random.Generator, organ_scale_range, width_range, margin_below_range) -> Body:
    """Draw a patient: habitus, organ scale and the cranio-caudal scan range."""
    s = float(rng.uniform(*organ_scale_range))
    half_width = float(rng.uniform(*width_range))
    half_depth = half_width * float(rng.uniform(0.66, 0.8))
    fat = float(rng.uniform(8.0, 32.0)) * half_width / 160.0
    kidney_right = float(rng.uniform(-14.0, 0.0)) * s
    kidney_left = kidney_right + float(rng.uniform(6.0, 20.0)) * s
    half_length = float(rng.uniform(44.0, 54.0)) * s
    dome = float(rng.uniform(105.0, 125.0)) * s
    return Body(
        half_width=half_width,
        half_depth=half_depth,
        squareness=float(rng.uniform(2.1, 2.6)),
        fat=fat,
        wall=float(rng.uniform(7.0, 13.0)),
        organ_scale=s,
        spine_y=-half_depth + float(rng.uniform(52.0, 66.0)) * (half_depth / 115.0) ** 0.5,
        dome_z=dome,
        kidney_z=(kidney_right, kidney_left),
        kidney_half_length=half_length,
        z_top=dome + float(rng.uniform(20.0, 60.0)),
        z_bottom=kidney_right - half_length - float(rng.uniform(*margin_below_range)),
    )


# --------------------------------------------------------------------------------------------
# layers


def _outline(body: Body, z, y, x, inset: float) -> np.ndarray:
    """Superellipse norm of the axial body outline shrunk by `inset` mm (< 1 inside)."""
    p = body.squareness
    # The trunk widens slightly towards the lower ribs and narrows at the waist.
    taper = 1.0 + 0.05 * np.cos((z - body.dome_z + 40.0) / 140.0)
    a = body.half_width * taper - inset
    b = body.half_depth * taper - inset
    return (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)


def _diaphragm(body: Body, y, x, left_drop: float) -> np.ndarray:
    """Height (mm) of the diaphragm above each (y, x): two domes, the left one lower."""
    right = body.dome_z - 55.0 * (
        ((x - 0.42 * body.half_width) / (0.62 * body.half_width)) ** 2
        + ((y - 0.05 * body.half_depth) / (0.9 * body.half_depth)) ** 2
    )
    left = (
        body.dome_z
        - left_drop
        - 55.0
        * (
            ((x + 0.42 * body.half_width) / (0.62 * body.half_width)) ** 2
            + ((y - 0.05 * body.half_depth) / (0.9 * body.half_depth)) ** 2
        )
    )
    return np.maximum(right, left).astype(np.float32)


def paint_anatomy(
    grid: Grid,
    body: Body,
    rng: np.random.Generator,
    liver_tumors: int = 0,
    kidney_tumors: int = 0,
) -> Anatomy:
    """Paint every structure of `body` onto `grid`; tumours as requested (counts)."""
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    everything = (slice(None),) * 3
    z, y, x = grid.coordinates(everything)

    _paint_table(tissue, grid, body, rng)

    # Trunk: skin/subcutaneous fat, muscular wall, visceral cavity.
    skin = _outline(body, z, y, x, 0.0)
    tissue[skin < 1.0] = Tissue.FAT
    tissue[_outline(body, z, y, x, body.fat) < 1.0] = Tissue.MUSCLE
    cavity = _outline(body, z, y, x, body.fat + body.wall) < 1.0
    tissue[cavity] = Tissue.FAT

    left_drop = float(rng.uniform(5.0, 18.0))
    diaphragm = _diaphragm(body, y, x, left_drop)  # (1, H, W)
    thorax = cavity & (z > diaphragm + 4.0)
    abdomen = cavity & (z < diaphragm)

    _paint_bowel(tissue, grid, body, rng, abdomen)
    _paint_thorax(tissue, grid, body, rng, thorax, x)
    _paint_muscles(tissue, grid, body, rng)
    _paint_back_muscles(tissue, grid, body, rng)
    _paint_stomach(tissue, grid, body, rng, diaphragm)
    liver_region = _paint_liver(tissue, grid, body, rng, diaphragm)
    _paint_gallbladder(tissue, grid, body, rng)
    _paint_spleen(tissue, grid, body, rng, diaphragm)
    _paint_pancreas(tissue, grid, body, rng)
    kidneys = _paint_kidneys(tissue, grid, body, rng)

    lesions = []
    for _ in range(liver_tumors):
        lesion = _paint_liver_tumor(tissue, grid, rng, liver_region)
        if lesion is not None:
            lesions.append(lesion)
    for _ in range(kidney_tumors):
        lesion = _paint_kidney_tumor(tissue, grid, rng, kidneys)
        if lesion is not None:
            lesions.append(lesion)

    _paint_great_vessels(tissue, grid, body, rng, diaphragm)
    _paint_spine(tissue, grid, body, rng)
    _paint_ribs(tissue, grid, body, rng, z, y, x)
    # Nothing may stick out of the skin (tumours and shapes near the wall).
    outside = (skin >= 1.0) & (tissue != Tissue.TABLE)
    tissue[outside] = Tissue.AIR
    return Anatomy(tissue=tissue, lesions=lesions)


def _paint_table(tissue, grid: Grid, body: Body, rng) -> None:
    """The curved CT couch under the patient (carbon fibre shell with a foam core)."""
    gap = float(rng.uniform(2.0, 25.0))
    region = (slice(None),) * 3
    _, y, x = grid.coordinates(region)
    surface = -body.half_depth - gap + 3.0e-4 * x**2  # top of the couch, concave upwards
    depth = surface - y
    couch = (depth > 0) & (depth < 9.0) & (np.abs(x) < 0.9 * body.half_width + 60.0)
    tissue[np.broadcast_to(couch, tissue.shape)] = Tissue.TABLE


def _paint_bowel(tissue, grid: Grid, body: Body, rng, abdomen) -> None:
    """Bowel loops filling the anterior and lower abdomen, with gas pockets."""
    cells = [28.0 / s for s in grid.spacing]
    loops = smooth_noise(rng, grid.shape, cells)
    gas = smooth_noise(rng, grid.shape, [10.0 / s for s in grid.spacing])
    z, y, x = grid.coordinates((slice(None),) * 3)
    # More bowel anteriorly and below the kidneys, less in the retroperitoneum.
    bias = 0.9 * (y / body.half_depth) - 0.6 * np.clip(z / 120.0, -1.0, 1.0) - 0.2
    score = loops + bias
    bowel = abdomen & (score > 0.1)
    tissue[bowel] = Tissue.BOWEL  # enhancing wall
    lumen = bowel & (score > 0.35)
    tissue[lumen] = Tissue.BOWEL_CONTENT
    tissue[lumen & (gas > 1.2)] = Tissue.BOWEL_GAS


def _paint_thorax(tissue, grid: Grid, body: Body, rng, thorax, x) -> None:
    """Lung bases above the diaphragm and the heart resting on its central part."""
    mid = float(rng.uniform(-12.0, 4.0))
    tissue[thorax & (x < mid)] = Tissue.LUNG_LEFT
    tissue[thorax & (x >= mid)] = Tissue.LUNG_RIGHT
    heart = Blob(
        center=(body.dome_z + 55.0, 0.25 * body.half_depth, -0.12 * body.half_width),
        semi_axes=(75.0 * body.organ_scale, 0.5 * body.half_depth, 0.42 * body.half_width),
        rotation=rotation(yaw_deg=float(rng.uniform(-25, -10))),
        wobble=0.05,
    )
    region, level = heart.evaluate(grid, rng)
    if region is not None:
        inside = (level < 1.0) & np.isin(tissue[region], (Tissue.LUNG_LEFT, Tissue.LUNG_RIGHT, Tissue.FAT))
        tissue[region][inside] = Tissue.HEART
    # Mediastinal fat strip around the spine and heart keeps the lungs apart.
    z, y, x = grid.coordinates((slice(None),) * 3)
    mediastinum = thorax & (np.abs(x - mid) < 14.0) & (y > body.spine_y)
    tissue[mediastinum] = Tissue.FAT


def _paint_muscles(tissue, grid: Grid, body: Body, rng) -> None:
    """Psoas muscles beside the lumbar spine, widening caudally."""
    s = body.organ_scale
    for side in (-1.0, 1.0):
        top = body.kidney_z[0] + 40.0 * s
        bottom = body.z_bottom - 20.0
        length = top - bottom
        path = np.stack(
            [
                np.linspace(top, bottom, 64),
                np.linspace(body.spine_y + 2.0, body.spine_y + 14.0, 64),
                side * np.linspace(26.0, 44.0, 64) * s,
            ],
            axis=1,
        )
        radii = np.linspace(6.0, 20.0, 64) * s
        margin = radii.max() + 3.0
        region = grid.region(path.min(0) - margin, path.max(0) + margin)
        if region is None or length <= 0:
            continue
        level = tube_level(grid, region, path, radii)
        view = tissue[region]
        view[(level < 1.0) & np.isin(view, SOFT_BACKGROUND)] = Tissue.MUSCLE


def _paint_back_muscles(tissue, grid: Grid, body: Body, rng) -> None:
    """Erector spinae: two muscle columns filling the space behind the spine."""
    s = body.organ_scale
    back = -body.half_depth + body.fat
    front = body.spine_y - 10.0 * s
    if front <= back:
        return
    for side in (-1.0, 1.0):
        blob = Blob(
            center=(0.5 * (body.z_top + body.z_bottom), 0.5 * (back + front), side * float(rng.uniform(28, 36)) * s),
            semi_axes=(4.0 * (body.z_top - body.z_bottom), 0.5 * (front - back) + 4.0, float(rng.uniform(24, 30)) * s),
            exponent=2.6,
            wobble=0.05,
            wobble_mm=60.0,
        )
        region, level = blob.evaluate(grid, rng)
        if region is not None:
            view = tissue[region]
            view[(level < 1.0) & (view == Tissue.FAT)] = Tissue.MUSCLE


def _paint_stomach(tissue, grid: Grid, body: Body, rng, diaphragm) -> None:
    """Stomach in the left upper quadrant: wall, fluid, and a gas cap anteriorly."""
    s = body.organ_scale
    blob = Blob(
        center=(body.dome_z - float(rng.uniform(45, 65)) * s, 0.3 * body.half_depth, -0.38 * body.half_width),
        semi_axes=(float(rng.uniform(35, 50)) * s, float(rng.uniform(28, 38)) * s, float(rng.uniform(35, 48)) * s),
        rotation=rotation(yaw_deg=float(rng.uniform(20, 45)), pitch_deg=float(rng.uniform(-15, 15))),
        wobble=0.15,
    )
    region, level = blob.evaluate(grid, rng)
    if region is None:
        return
    z, y, x = grid.coordinates(region)
    below = z < diaphragm[:, region[1], region[2]] - 3.0
    view = tissue[region]
    organ = (level < 1.0) & below
    view[organ] = Tissue.STOMACH
    wall_mm = 4.0
    content = (level < 1.0 - wall_mm / (36.0 * s)) & below
    view[content] = Tissue.STOMACH_CONTENT
    gas_level = blob.center[1] + float(rng.uniform(0.0, 0.8)) * blob.semi_axes[1]
    view[content & (y > gas_level)] = Tissue.STOMACH_GAS


def _paint_liver(tissue, grid: Grid, body: Body, rng, diaphragm):
    """Right lobe filling the right upper quadrant plus a left lobe tapering across the midline.

    Returns the liver's region (for lesion placement).
    """
    s = body.organ_scale
    W, D = body.half_width, body.half_depth
    right = Blob(
        center=(body.dome_z - 65.0 * s, 0.0 * D + float(rng.uniform(-8, 8)), 0.5 * W),
        semi_axes=(float(rng.uniform(70, 85)) * s, 0.7 * D, float(rng.uniform(0.38, 0.44)) * W),
        rotation=rotation(pitch_deg=float(rng.uniform(-10, 10)), roll_deg=float(rng.uniform(-12, 4))),
        exponent=2.4,
        wobble=0.1,
        wobble_mm=45.0,
    )
    left = Blob(
        center=(body.dome_z - 40.0 * s, 0.42 * D, -0.02 * W),
        semi_axes=(float(rng.uniform(28, 40)) * s, 0.3 * D, float(rng.uniform(0.26, 0.36)) * W),
        rotation=rotation(yaw_deg=float(rng.uniform(-20, 5)), roll_deg=float(rng.uniform(5, 20))),
        wobble=0.12,
    )
    region_r, level_r = right.evaluate(grid, rng)
    region_l, level_l = left.evaluate(grid, rng)
    union = None
    for region, level in ((region_r, level_r), (region_l, level_l)):
        if region is None:
            continue
        z, _, _ = grid.coordinates(region)
        view = tissue[region]
        inside = (level < 1.0) & (z < diaphragm[:, region[1], region[2]] - 4.0)
        inside &= ~np.isin(view, (Tissue.MUSCLE, Tissue.AIR, Tissue.TABLE))
        view[inside] = Tissue.LIVER
        union = (
            region
            if union is None
            else tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(union, region))
        )
    if union is None:
        return None
    # Portal and hepatic veins: tubes where two smooth fields cross zero together.
    cells = [14.0 / sp for sp in grid.spacing]
    shape = region_shape(union)
    first = smooth_noise(rng, shape, cells)
    second = smooth_noise(rng, shape, cells)
    width = 0.22 * max(1.0, 2.6 / min(grid.spacing))
    view = tissue[union]
    vessels = (np.abs(first) < width) & (np.abs(second) < width) & (view == Tissue.LIVER)
    view[vessels] = Tissue.LIVER_VESSEL
    return union


def _paint_gallbladder(tissue, grid: Grid, body: Body, rng) -> None:
    s = body.organ_scale
    blob = Blob(
        center=(
            body.dome_z - float(rng.uniform(95, 120)) * s,
            0.45 * body.half_depth,
            0.24 * body.half_width + float(rng.uniform(-8, 8)),
        ),
        semi_axes=(float(rng.uniform(22, 36)) * s, float(rng.uniform(10, 16)) * s, float(rng.uniform(10, 16)) * s),
        rotation=rotation(pitch_deg=float(rng.uniform(-30, 0)), roll_deg=float(rng.uniform(20, 40))),
        wobble=0.08,
    )
    region, level = blob.evaluate(grid, rng)
    if region is not None:
        view = tissue[region]
        view[(level < 1.0) & np.isin(view, (Tissue.LIVER, Tissue.LIVER_VESSEL, *SOFT_BACKGROUND))] = Tissue.GALLBLADDER


def _paint_spleen(tissue, grid: Grid, body: Body, rng, diaphragm) -> None:
    """Spleen tucked posterolaterally in the left upper quadrant, under the left dome."""
    s = body.organ_scale
    W, D = body.half_width, body.half_depth
    blob = Blob(
        center=(
            body.dome_z - float(rng.uniform(50, 70)) * s,
            -0.3 * D + float(rng.uniform(-6, 6)),
            -0.62 * W + float(rng.uniform(-6, 6)),
        ),
        semi_axes=(float(rng.uniform(42, 58)) * s, float(rng.uniform(44, 58)) * s, float(rng.uniform(18, 26)) * s),
        rotation=rotation(yaw_deg=float(rng.uniform(25, 50)), roll_deg=float(rng.uniform(-15, 10))),
        exponent=2.2,
        wobble=0.12,
    )
    region, level = blob.evaluate(grid, rng)
    if region is None:
        return
    z, _, _ = grid.coordinates(region)
    view = tissue[region]
    inside = (level < 1.0) & (z < diaphragm[:, region[1], region[2]] - 4.0)
    inside &= np.isin(view, (*SOFT_BACKGROUND, Tissue.STOMACH, Tissue.LIVER))
    view[inside] = Tissue.SPLEEN


def _paint_pancreas(tissue, grid: Grid, body: Body, rng) -> None:
    """Head by the duodenum (right), body over the aorta, tail to the splenic hilum (left)."""
    s = body.organ_scale
    W = body.half_width
    front = body.spine_y + 36.0 * s
    z0 = body.kidney_z[1] + float(rng.uniform(5, 20)) * s
    control = np.array(
        [
            [z0 - 18.0 * s, front + 6.0, 0.26 * W],  # head
            [z0, front + 18.0 * s, 0.02 * W],  # neck, in front of the vessels
            [z0 + 12.0 * s, front + 2.0, -0.3 * W],  # body
            [z0 + 22.0 * s, body.spine_y + 10.0, -0.52 * W],  # tail
        ]
    )
    control += rng.normal(0.0, 4.0, control.shape)
    t = np.linspace(0.0, 1.0, 96)
    # Piecewise-linear path through the control points, then smoothed into a gentle curve.
    knots = np.linspace(0.0, 1.0, len(control))
    path = np.stack([np.interp(t, knots, control[:, k]) for k in range(3)], axis=1)
    path = ndimage.gaussian_filter1d(path, 6.0, axis=0, mode="nearest")
    radii = np.interp(t, [0.0, 0.25, 0.7, 1.0], [15.0, 10.0, 9.0, 8.0]) * s * float(rng.uniform(0.85, 1.15))
    margin = radii.max() * 1.4 + 3.0
    region = grid.region(path.min(0) - margin, path.max(0) + margin)
    if region is None:
        return
    level = tube_level(grid, region, path, radii)
    level = level * (1.0 + 0.18 * smooth_noise(rng, level.shape, [8.0 / sp for sp in grid.spacing]))
    view = tissue[region]
    view[(level < 1.0) & np.isin(view, SOFT_BACKGROUND)] = Tissue.PANCREAS


@dataclass
class _Kidney:
    side: str  # "left" | "right"
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]


def _paint_kidneys(tissue, grid: Grid, body: Body, rng) -> list[_Kidney]:
    """Bean-shaped kidneys beside the spine: enhancing cortex, medulla, a medial hilum."""
    s = body.organ_scale
    kidneys = []
    for side, sign, z_center in (("right", 1.0, body.kidney_z[0]), ("left", -1.0, body.kidney_z[1])):
        lateral = float(rng.uniform(58, 72)) * s
        center = (z_center, body.spine_y + float(rng.uniform(-2, 10)), sign * lateral)
        semi = (body.kidney_half_length, float(rng.uniform(20, 25)) * s, float(rng.uniform(23, 28)) * s)
        # Upper pole tilted medially and the hilum turned anteromedially.
        rot = rotation(yaw_deg=sign * float(rng.uniform(15, 35)), pitch_deg=sign * float(rng.uniform(-18, -6)))
        blob = Blob(center=center, semi_axes=semi, rotation=rot, wobble=0.07, wobble_mm=25.0)
        region, level = blob.evaluate(grid, rng)
        kidneys.append(_Kidney(side, center, semi))
        if region is None:
            continue
        z, y, x = grid.coordinates(region)
        local = rot.T
        dz, dy, dx = z - center[0], y - center[1], x - center[2]
        medial = -sign * (local[2, 0] * dz + local[2, 1] * dy + local[2, 2] * dx) / semi[2]
        along = (local[0, 0] * dz + local[0, 1] * dy + local[0, 2] * dx) / semi[0]
        hilum = (medial > 0.45) & (np.abs(along) < 0.3)
        view = tissue[region]
        kidney = (
            (level < 1.0)
            & ~hilum
            & np.isin(view, (*SOFT_BACKGROUND, Tissue.LIVER, Tissue.SPLEEN, Tissue.LIVER_VESSEL, Tissue.PANCREAS))
        )
        cortex_id = Tissue.KIDNEY_RIGHT if side == "right" else Tissue.KIDNEY_LEFT
        medulla_id = Tissue.KIDNEY_RIGHT_MEDULLA if side == "right" else Tissue.KIDNEY_LEFT_MEDULLA
        view[kidney] = cortex_id
        lobules = smooth_noise(rng, level.shape, [9.0 / sp for sp in grid.spacing])
        medulla = kidney & (level < 0.74 + 0.08 * lobules)
        view[medulla] = medulla_id
        sinus = (level < 1.0) & (hilum | (level < 0.3 + 0.06 * lobules))
        view[sinus & np.isin(view, (*SOFT_BACKGROUND, medulla_id))] = Tissue.FAT
    return kidneys


def _random_direction(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / max(np.linalg.norm(v), 1e-6)


def _paint_liver_tumor(tissue, grid: Grid, rng, liver_region) -> Lesion | None:
    if liver_region is None:
        return None
    host = (Tissue.LIVER, Tissue.LIVER_VESSEL)
    candidates = np.flatnonzero(np.isin(tissue[liver_region], host))
    if candidates.size == 0:
        return None
    radius = float(np.exp(rng.uniform(np.log(7.0), np.log(32.0))))
    index = np.unravel_index(candidates[rng.integers(candidates.size)], region_shape(liver_region))
    center = tuple(grid.origin[k] + (liver_region[k].start + index[k]) * grid.spacing[k] for k in range(3))
    hyper = rng.random() < 0.3
    contrast = float(rng.uniform(20.0, 45.0)) if hyper else -float(rng.uniform(25.0, 65.0))
    return _paint_lesion(tissue, grid, rng, "liver tumor", center, radius, host, Tissue.LIVER_TUMOR, contrast)


def _paint_kidney_tumor(tissue, grid: Grid, rng, kidneys) -> Lesion | None:
    if not kidneys:
        return None
    kidney = kidneys[int(rng.integers(len(kidneys)))]
    radius = float(np.exp(rng.uniform(np.log(9.0), np.log(32.0))))
    direction = _random_direction(rng)
    direction[2] = abs(direction[2]) * (1.0 if kidney.side == "right" else -1.0)  # lateral/polar
    offset = direction * np.asarray(kidney.semi_axes) * float(rng.uniform(0.35, 0.8))
    center = tuple(np.asarray(kidney.center) + offset)
    if kidney.side == "right":
        host = (Tissue.KIDNEY_RIGHT, Tissue.KIDNEY_RIGHT_MEDULLA)
        label = Tissue.KIDNEY_RIGHT_TUMOR
    else:
        host = (Tissue.KIDNEY_LEFT, Tissue.KIDNEY_LEFT_MEDULLA)
        label = Tissue.KIDNEY_LEFT_TUMOR
    contrast = -float(rng.uniform(50.0, 120.0))  # relative to the enhancing cortex
    # Exophytic growth: the tumour may displace perirenal fat and bowel, not bone or vessels.
    return _paint_lesion(
        tissue,
        grid,
        rng,
        "kidney tumor",
        center,
        radius,
        (*host, Tissue.FAT, Tissue.BOWEL, Tissue.BOWEL_GAS),
        label,
        contrast,
        must_touch=host,
    )


def _paint_lesion(
    tissue, grid, rng, kind, center, radius, replaceable, value, contrast, must_touch=None
) -> Lesion | None:
    semi = tuple(radius * float(rng.uniform(0.8, 1.2)) for _ in range(3))
    blob = Blob(
        center=center,
        semi_axes=semi,
        rotation=rotation(*rng.uniform(-90, 90, 3)),
        wobble=0.15,
        wobble_mm=max(6.0, radius),
    )
    region, level = blob.evaluate(grid, rng)
    if region is None:
        return None
    view = tissue[region]
    mask = (level < 1.0) & np.isin(view, replaceable)
    if must_touch is not None and not np.isin(view[level < 1.0], must_touch).any():
        return None
    if not mask.any():
        return None
    view[mask] = value
    core = mask & (level < 0.5) if radius > 18.0 and rng.random() < 0.6 else np.zeros_like(mask)
    return Lesion(kind=kind, region=region, mask=mask, core=core, contrast=contrast, radius_mm=radius)


def _paint_great_vessels(tissue, grid: Grid, body: Body, rng, diaphragm) -> None:
    """Aorta anterior-left of the vertebral bodies; IVC to its right, running up into the liver."""
    s = body.organ_scale
    z_axis = grid.axis(0)
    wander = smooth_noise(rng, (len(z_axis), 2), [60.0 / grid.spacing[0], 1.0])
    specs = (
        (
            Tissue.AORTA,
            -float(rng.uniform(14, 22)) * s,
            body.spine_y + 24.0 * s,
            float(rng.uniform(9.5, 12.5)) * s,
            1.0,
        ),
        (Tissue.IVC, float(rng.uniform(18, 28)) * s, body.spine_y + 24.0 * s, float(rng.uniform(9.0, 12.0)) * s, 0.75),
    )
    for k, (label, x0, y0, radius, flatten) in enumerate(specs):
        xc = x0 + 3.0 * wander[:, k]
        yc = y0 + 2.5 * wander[:, 1 - k]
        if label == Tissue.AORTA:
            # The descending thoracic aorta sits further back, beside the spine.
            yc = yc - np.clip((z_axis - body.dome_z + 30.0) * 0.35, 0.0, 18.0)
        region = grid.region(
            (z_axis.min(), min(yc.min(), y0) - 2 * radius, xc.min() - 2 * radius),
            (z_axis.max(), max(yc.max(), y0) + 2 * radius, xc.max() + 2 * radius),
        )
        if region is None:
            continue
        z, y, x = grid.coordinates(region)
        rows = slice(region[0].start, region[0].stop)
        xc_r = xc[rows][:, None, None]
        yc_r = yc[rows][:, None, None]
        lumen = ((x - xc_r) / radius) ** 2 + ((y - yc_r) / (radius * flatten)) ** 2 < 1.0
        if label == Tissue.IVC:
            lumen &= z < diaphragm[:, region[1], region[2]] + 15.0
        view = tissue[region]
        view[lumen & ~np.isin(view, (Tissue.AIR, Tissue.TABLE))] = label


def _paint_spine(tissue, grid: Grid, body: Body, rng) -> None:
    """Lumbar/thoracic vertebrae: bodies with discs, a canal and posterior elements."""
    s = body.organ_scale
    period = float(rng.uniform(30.0, 36.0)) * s
    phase = float(rng.uniform(0.0, period))
    disc = float(rng.uniform(6.0, 9.0)) * s
    ry, rx = 15.5 * s, 20.0 * s
    yb = body.spine_y
    canal_y = yb - ry - 9.0 * s
    region = grid.region((grid.origin[0] - 1, yb - ry - 62.0 * s, -55.0 * s), (1e6, yb + ry + 2.0, 55.0 * s))
    if region is None:
        return
    z, y, x = grid.coordinates(region)
    along = np.mod(z - phase, period)  # position within one vertebra (0 = lower endplate)
    in_disc = along < disc
    middle = (along > disc + 0.25 * (period - disc)) & (along < period - 0.2 * (period - disc))
    vb = (x / rx) ** 2 + ((y - yb) / ry) ** 2 < 1.0
    canal = (x / (8.0 * s)) ** 2 + ((y - canal_y) / (8.0 * s)) ** 2 < 1.0
    arch_ring = (x / (14.0 * s)) ** 2 + ((y - canal_y) / (13.0 * s)) ** 2 < 1.0
    arch = arch_ring & ~canal & (y < yb - ry + 4.0)
    spinous = (np.abs(x) < 3.0 * s) & (y < canal_y - 10.0 * s) & (y > canal_y - 42.0 * s) & middle
    transverse = (np.abs(y - canal_y - 4.0 * s) < 3.5 * s) & (np.abs(x) < 36.0 * s) & middle
    view = tissue[region]
    bone_body = vb & ~in_disc
    vb = np.broadcast_to(vb, view.shape)
    view[vb & in_disc] = Tissue.DISC
    view[bone_body] = Tissue.VERTEBRA
    shell = bone_body & ~ndimage.binary_erosion(bone_body, structure=np.ones((1, 3, 3), bool))
    view[shell] = Tissue.VERTEBRA_CORTEX
    posterior = (arch & ~in_disc) | spinous | transverse
    view[posterior & ~np.isin(view, (Tissue.AIR, Tissue.TABLE))] = Tissue.VERTEBRA_CORTEX
    view[np.broadcast_to(canal, view.shape)] = Tissue.FLUID


def _paint_ribs(tissue, grid: Grid, body: Body, rng, z, y, x) -> None:
    """Ribs in the body wall, sloping down anteriorly; the lowest ones short (floating)."""
    period = float(rng.uniform(24.0, 30.0)) * body.organ_scale
    slope = float(rng.uniform(28.0, 38.0))  # mm of descent per radian towards the front
    thickness = float(rng.uniform(2.8, 3.8))  # half-thickness across the wall
    height = float(rng.uniform(4.0, 5.5))  # half-height along the body axis
    lowest = body.kidney_z[1] + body.kidney_half_length * float(rng.uniform(0.2, 0.7))
    inset = body.fat + 0.6 * body.wall
    a = body.half_width - inset
    b = body.half_depth - inset
    ring = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    near_ring = np.abs(ring - 1.0) * 0.5 * (a + b) < thickness
    angle = np.arctan2(np.abs(x) / a, -y / b)  # 0 at the spine, pi at the front
    u = z + slope * angle - lowest
    index = np.round(u / period)
    on_rib = np.abs(u - index * period) < height
    reach = np.minimum(2.5, 1.2 + 0.45 * index)
    ribs = near_ring & on_rib & (index >= 0) & (angle > 0.3) & (angle < reach)
    tissue[ribs & (tissue != Tissue.AIR)] = Tissue.RIB
