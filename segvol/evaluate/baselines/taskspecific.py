"""Task-specific baselines (the paper's Appendix C): nnU-Net, SwinUNETR, 3D UX-Net, one model per dataset.

How the originals are run: each is trained on one dataset's training split (ours: the store's
80 % split, `segvol taskspecific`) and predicts every category of that dataset at once; it gets no
prompt. Behind the `Method` interface its prompt kind is "text": the category name only picks the
model's output channel, the volume is segmented once per case (`predict_many`).
"""

from __future__ import annotations

import numpy as np

from segvol.evaluate.methods import Method


class TaskSpecificMethod(Method):
    """A trained model folder of `segvol taskspecific` (see `segvol.taskspecific.models`)."""

    prompt = "text"

    def __init__(self, folder, device="cpu", overlap: float = 0.5):
        from segvol.taskspecific.models import load_segmenter, read_manifest

        manifest = read_manifest(folder)
        self.folder = folder
        self.name = manifest["name"]
        self.dataset = manifest["dataset"]
        self.segmenter = load_segmenter(folder, device=device, overlap=overlap)
        self.model = getattr(self.segmenter, "network", None)

    def predict(self, volume, spacing, prompt):
        return self.predict_many(volume, spacing, [prompt])[0]

    def predict_many(self, volume, spacing, prompts):
        masks = self.segmenter.segment(volume, spacing)
        missing = sorted({p.text for p in prompts} - set(masks))
        if missing:
            raise ValueError(f"{self.folder}: the {self.name} model of {self.dataset} has no category {missing}")
        return [np.asarray(masks[p.text], dtype=bool) for p in prompts]
