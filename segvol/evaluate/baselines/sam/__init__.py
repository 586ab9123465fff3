"""SAM-style promptable models in 2-D or 3-D, with the parameter names of the released baselines.

One implementation serves SAM-Med2D (2-D ViT-B with adapter layers, 256-px input) and SAM-Med3D
(3-D ViT-B, 128^3 input): `build("sam-med3d")` (random weights), `load("sam-med3d", path)`.
Modules follow segment-anything's `modeling/` split: image_encoder, prompt_encoder, mask_decoder
(the two-way transformer is SegVol's own, `segvol.model.transformer`).
"""

from segvol.evaluate.baselines.sam.model import ARCHITECTURES, PromptableSam, build, load, load_checkpoint

__all__ = ["ARCHITECTURES", "PromptableSam", "build", "load", "load_checkpoint"]
