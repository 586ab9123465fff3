"""From a tissue map to CT numbers: enhancement, texture, lesions, scanner blur and noise.

A `Domain` is a population of patients and scanners. Training datasets draw from `TRAIN`
(portal venous) unless their `domain` says otherwise (`ARTERIAL`: another contrast timing and
scanner, so datasets can differ in appearance as public ones do); external test datasets draw from
`EXTERNAL`, a deliberately shifted population (late portal timing, noisier and softer
reconstructions, larger fields of view, slightly larger organs), so no training dataset matches it
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from segvol.synth.anatomy import Anatomy, Tissue
from segvol.synth.fields import Grid, smooth_noise

T = Tissue

# Portal-venous phase CT numbers (HU), drawn uniformly per case within each range.
PORTAL_VENOUS_HU: dict[Tissue, tuple[float, float]] = {
    T.AIR: (-1000.0, -1000.0),
    T.TABLE: (-120.0, 40.0),
    T.FAT: (-115.0, -85.0),
    T.MUSCLE: (45.0, 65.0),
    T.BOWEL: (45.0, 80.0),
    T.BOWEL_CONTENT: (-10.0, 35.0),
    T.BOWEL_GAS: (-950.0, -820.0),
    T.STOMACH: (45.0, 70.0),
    T.STOMACH_CONTENT: (0.0, 25.0),
    T.STOMACH_GAS: (-990.0, -930.0),
    T.GALLBLADDER: (0.0, 20.0),
    T.FLUID: (5.0, 15.0),
    T.LUNG_LEFT: (-880.0, -820.0),
    T.LUNG_RIGHT: (-880.0, -820.0),
    T.HEART: (110.0, 160.0),
    T.LIVER: (95.0, 120.0),
    T.LIVER_VESSEL: (135.0, 170.0),
    T.LIVER_TUMOR: (95.0, 120.0),  # replaced by liver + the lesion's own contrast
    T.SPLEEN: (105.0, 130.0),
    T.KIDNEY_LEFT: (160.0, 200.0),
    T.KIDNEY_LEFT_MEDULLA: (115.0, 145.0),
    T.KIDNEY_RIGHT: (160.0, 200.0),
    T.KIDNEY_RIGHT_MEDULLA: (115.0, 145.0),
    T.KIDNEY_LEFT_TUMOR: (160.0, 200.0),  # replaced by cortex + the lesion's own contrast
    T.KIDNEY_RIGHT_TUMOR: (160.0, 200.0),
    T.PANCREAS: (80.0, 110.0),
    T.AORTA: (165.0, 215.0),
    T.IVC: (155.0, 195.0),
    T.VERTEBRA: (230.0, 380.0),
    T.VERTEBRA_CORTEX: (650.0, 1100.0),
    T.DISC: (70.0, 100.0),
    T.RIB: (450.0, 800.0),
}

# Paired tissues share one draw so that, e.g., both kidneys enhance alike.
SHARED_DRAW = {
    T.LUNG_RIGHT: T.LUNG_LEFT,
    T.KIDNEY_RIGHT: T.KIDNEY_LEFT,
    T.KIDNEY_RIGHT_MEDULLA: T.KIDNEY_LEFT_MEDULLA,
    T.KIDNEY_LEFT_TUMOR: T.KIDNEY_LEFT,
    T.KIDNEY_RIGHT_TUMOR: T.KIDNEY_LEFT,
    T.LIVER_TUMOR: T.LIVER,
}

# Standard deviation (HU) of the smooth, organ-scale texture of each tissue.
TEXTURE_HU: dict[Tissue, float] = {
    T.FAT: 8.0,
    T.MUSCLE: 6.0,
    T.BOWEL: 10.0,
    T.BOWEL_CONTENT: 20.0,
    T.STOMACH_CONTENT: 6.0,
    T.LUNG_LEFT: 25.0,
    T.LUNG_RIGHT: 25.0,
    T.HEART: 12.0,
    T.LIVER: 5.0,
    T.LIVER_TUMOR: 8.0,
    T.SPLEEN: 4.0,
    T.KIDNEY_LEFT: 7.0,
    T.KIDNEY_RIGHT: 7.0,
    T.KIDNEY_LEFT_MEDULLA: 7.0,
    T.KIDNEY_RIGHT_MEDULLA: 7.0,
    T.KIDNEY_LEFT_TUMOR: 15.0,
    T.KIDNEY_RIGHT_TUMOR: 15.0,
    T.PANCREAS: 12.0,
    T.VERTEBRA: 45.0,
    T.VERTEBRA_CORTEX: 80.0,
    T.RIB: 60.0,
    T.TABLE: 20.0,
}


@dataclass(frozen=True)
class Domain:
    """Distributions of patients, contrast timing and scanners (ranges are uniform draws)."""

    name: str
    pixel_mm: tuple[float, float]  # acquisition pixel size of a 512 matrix (sets the FOV)
    slice_mm: tuple[float, float]
    margin_below_mm: tuple[float, float]  # scan range below the lower kidney pole
    organ_scale: tuple[float, float]
    half_width_mm: tuple[float, float]
    noise_hu: tuple[float, float]
    noise_grain_vox: tuple[float, float]  # correlation (Gaussian sigma) of the noise
    blur_mm: tuple[float, float]  # in-plane point spread (Gaussian sigma)
    hu_shift: dict[Tissue, tuple[float, float]] = field(default_factory=dict)
    liver_tumor_probability: float = 0.4
    kidney_tumor_probability: float = 0.3


TRAIN = Domain(
    name="train",
    pixel_mm=(0.70, 0.90),
    slice_mm=(1.5, 5.0),
    margin_below_mm=(15.0, 70.0),
    organ_scale=(0.88, 1.10),
    half_width_mm=(135.0, 175.0),
    noise_hu=(6.0, 14.0),
    noise_grain_vox=(0.5, 0.8),
    blur_mm=(0.6, 1.1),
)

# Late portal / nephrographic timing: liver darker, spleen, pancreas and cortex brighter,
# medulla darker; noisier, softer scanners with larger FOVs and longer scan ranges.
EXTERNAL = Domain(
    name="external",
    pixel_mm=(0.80, 0.98),
    slice_mm=(2.5, 5.0),
    margin_below_mm=(40.0, 120.0),
    organ_scale=(0.95, 1.18),
    half_width_mm=(140.0, 185.0),
    noise_hu=(14.0, 26.0),
    noise_grain_vox=(0.3, 0.6),
    blur_mm=(1.1, 1.9),
    hu_shift={
        T.LIVER: (-25.0, -10.0),
        T.LIVER_VESSEL: (-30.0, -10.0),
        T.SPLEEN: (10.0, 25.0),
        T.KIDNEY_LEFT: (10.0, 30.0),
        T.KIDNEY_LEFT_MEDULLA: (-30.0, -10.0),
        T.PANCREAS: (10.0, 25.0),
        T.AORTA: (10.0, 30.0),
        T.IVC: (10.0, 20.0),
        T.MUSCLE: (-10.0, 0.0),
    },
    liver_tumor_probability=0.45,
    kidney_tumor_probability=0.35,
)

# Late arterial timing on a sharper, thinner-slice scanner: a bright aorta, a still unenhanced IVC,
# strong cortico-medullary contrast, a liver barely enhanced; slightly smaller patients.
ARTERIAL = Domain(
    name="arterial",
    pixel_mm=(0.65, 0.85),
    slice_mm=(1.0, 3.0),
    margin_below_mm=(10.0, 50.0),
    organ_scale=(0.85, 1.05),
    half_width_mm=(130.0, 170.0),
    noise_hu=(10.0, 18.0),
    noise_grain_vox=(0.4, 0.7),
    blur_mm=(0.5, 0.9),
    hu_shift={
        T.LIVER: (-45.0, -30.0),
        T.LIVER_VESSEL: (-60.0, -40.0),
        T.SPLEEN: (-15.0, 10.0),
        T.KIDNEY_LEFT: (10.0, 40.0),
        T.KIDNEY_LEFT_MEDULLA: (-55.0, -35.0),
        T.PANCREAS: (15.0, 35.0),
        T.AORTA: (120.0, 200.0),
        T.IVC: (-110.0, -80.0),
    },
)

# Scanner populations by name (a synthetic dataset's `domain`); by default a dataset's role picks one.
DOMAINS = {"train": TRAIN, "external": EXTERNAL, "arterial": ARTERIAL}
ROLE_DOMAIN = {"train": "train", "external": "external", "unlabelled": "train"}


def draw_tissue_hu(rng: np.random.Generator, domain: Domain) -> np.ndarray:
    """Mean CT number of every tissue for one case: (len(Tissue),) float32."""
    table = np.zeros(len(Tissue), dtype=np.float32)
    for tissue in Tissue:
        low, high = PORTAL_VENOUS_HU[tissue]
        table[tissue] = rng.uniform(low, high)
    for tissue, shift_range in domain.hu_shift.items():
        if tissue not in SHARED_DRAW:
            table[tissue] += rng.uniform(*shift_range)
    for tissue, source in SHARED_DRAW.items():
        table[tissue] = table[source]
    return table


def render_ct(anatomy: Anatomy, grid: Grid, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """CT numbers (int16, HU) of `anatomy`: tissue means + texture + lesions, blurred, noisy."""
    tissue = anatomy.tissue
    mean_hu = draw_tissue_hu(rng, domain)
    image = mean_hu[tissue]

    texture_amplitude = np.zeros(len(Tissue), dtype=np.float32)
    for t, amplitude in TEXTURE_HU.items():
        texture_amplitude[t] = amplitude
    coarse = smooth_noise(rng, grid.shape, [12.0 / s for s in grid.spacing])
    image += texture_amplitude[tissue] * coarse

    for lesion in anatomy.lesions:
        view = image[lesion.region]
        heterogeneity = smooth_noise(rng, view.shape, [max(4.0, lesion.radius_mm / 3) / s for s in grid.spacing])
        delta = lesion.contrast + 8.0 * heterogeneity
        view[lesion.mask] += delta[lesion.mask]
        if lesion.core.any():  # necrotic centre: close to water
            view[lesion.core] = float(rng.uniform(10.0, 30.0)) + 6.0 * heterogeneity[lesion.core]

    # Beam-hardening-like slow shading inside the body.
    shading = smooth_noise(rng, grid.shape, [80.0 / s for s in grid.spacing])
    image += np.where(tissue != Tissue.AIR, 6.0 * shading, 0.0).astype(np.float32)

    blur_mm = float(rng.uniform(*domain.blur_mm))
    slice_thickness = grid.spacing[0]
    sigma = (
        0.35 * slice_thickness / grid.spacing[0],  # slice profile
        blur_mm / grid.spacing[1],
        blur_mm / grid.spacing[2],
    )
    image = ndimage.gaussian_filter(image, sigma, mode="nearest")

    grain = float(rng.uniform(*domain.noise_grain_vox))
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0.0, grain, grain), mode="wrap")
    noise /= max(float(noise.std()), 1e-6)
    image += float(rng.uniform(*domain.noise_hu)) * noise
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
