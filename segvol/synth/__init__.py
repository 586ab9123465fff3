"""Procedural abdominal CT phantoms: the embedded demo's stand-in for downloading data.

    from segvol.synth import synthesize_dataset, make_phantom
    synthesize_dataset("abdomen_a", "data/raw/abdomen_a", seed=2023, params=synth_block)

Modules: `fields` (grid, smooth random fields, deformed superquadrics), `anatomy` (tissue map),
`appearance` (HU, lesions, scanner populations), `labels` (dataset label spaces), `phantom`
(one case), `dataset` (the raw dataset folder), `cli` (`segvol synth`), `benchmark`.
"""

from segvol.synth.dataset import synthesize_dataset
from segvol.synth.labels import label_space, supported_categories
from segvol.synth.phantom import Phantom, case_rng, make_phantom

__all__ = ["Phantom", "case_rng", "label_space", "make_phantom", "supported_categories", "synthesize_dataset"]
