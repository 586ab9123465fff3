"""SegVol: universal, promptable 3D CT segmentation, as a reproducible workflow.

Stages (one subpackage each, in data-flow order): synth | download → normalize → pseudo →
pretrain → finetune → evaluate. Shared libraries: io (image files), model (the network),
infer (zoom-out-zoom-in inference and `segvol predict`), training (what pretrain and finetune
share). Layout and data contracts: docs/architecture.md.
"""

# The only place the version is written: pyproject.toml reads it (`[tool.setuptools.dynamic]`).
__version__ = "0.1.0"
