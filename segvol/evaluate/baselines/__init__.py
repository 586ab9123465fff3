"""Baselines of Table 2 behind the `Method` interface: SAM, MedSAM, SAM-Med2D, SAM-Med3D.

How the paper runs them (and how we do):
- SAM (ViT-B): slice-wise on every slice where the category is present; "point" = one positive
  click per slice followed by corrective clicks up to 5 (`clicks`); "box" = the slice's tight box.
- MedSAM (SAM ViT-B fine-tuned on medical images): slice-wise, box prompt.
- SAM-Med2D (SAM ViT-B with adapters, 256 px): slice-wise, point prompt with 5 clicks.
- SAM-Med3D (3-D ViT-B, 128^3 crops at 1.5 mm): volume-wise, point prompt with 5 clicks.
Each loads its real public checkpoint from `evaluate.baseline_checkpoints[<method>]`; a method
without one produces no rows and the reason "not run: no checkpoint".

Modules: `clicks` (simulated clicks), `slicewise` (2-D model on a volume), `transformers_sam`
(SAM, MedSAM via `transformers.SamModel`), `sam` (our 2-D/3-D SAM with the released parameter
names), `sam_med2d`, `sam_med3d` (their preprocessing and prompting).
"""

from __future__ import annotations

from collections.abc import Sequence

from segvol.evaluate.methods import Method

# (method, prompt kind) pairs, in column order; a method with several prompts gets one column each.
BASELINE_PROMPTS = {
    "SAM": ("point", "box"),
    "MedSAM": ("box",),
    "SAM-Med2D": ("point",),
    "SAM-Med3D": ("point",),
}


def column_name(method: str, prompt: str) -> str:
    """Table column of a method run: "SAM (point)" when the method has several prompts."""
    return f"{method} ({prompt})" if len(BASELINE_PROMPTS.get(method, ())) > 1 else method


def _runs(method: str, checkpoint: str, device=None) -> list[Method]:
    """The evaluated runs of one baseline, its checkpoint loaded onto `device` (None: the CPU)."""
    from segvol.evaluate.baselines.slicewise import SliceWiseMethod

    device = device or "cpu"
    if method in ("SAM", "MedSAM"):
        from segvol.evaluate.baselines.transformers_sam import TransformersSam, load_sam

        segmenter = TransformersSam(load_sam(checkpoint).to(device), style="medsam" if method == "MedSAM" else "sam")
        return [SliceWiseMethod(column_name(method, prompt), segmenter, prompt) for prompt in BASELINE_PROMPTS[method]]
    if method == "SAM-Med2D":
        from segvol.evaluate.baselines.sam_med2d import SamMed2DSegmenter, load_sam_med2d

        return [SliceWiseMethod(method, SamMed2DSegmenter(load_sam_med2d(checkpoint).to(device)), "point")]
    from segvol.evaluate.baselines.sam_med3d import SamMed3DMethod, load_sam_med3d

    return [SamMed3DMethod(load_sam_med3d(checkpoint).to(device))]


def build_baselines(methods: Sequence[str], checkpoints: dict, device=None) -> tuple[list[Method], dict[str, str]]:
    """The runnable baseline runs of `methods` (models on `device`) and, per table column, why it ran or did not."""
    runs: list[Method] = []
    reasons: dict[str, str] = {}
    for method in methods:
        if method == "SegVol":
            continue
        if method not in BASELINE_PROMPTS:
            raise ValueError(
                f"unknown method {method!r} in evaluate.methods; known: SegVol, {', '.join(BASELINE_PROMPTS)}"
            )
        checkpoint = (checkpoints or {}).get(method)
        for prompt in BASELINE_PROMPTS[method]:
            reasons[column_name(method, prompt)] = f"ran: {checkpoint}" if checkpoint else "not run: no checkpoint"
        if checkpoint:
            runs += _runs(method, checkpoint, device)
    return runs, reasons
