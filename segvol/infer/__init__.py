"""Zoom-out-zoom-in inference on canonical volumes, and `segvol predict` for CT files.

```python
from segvol.infer import Prompt, segment
logits = segment(model, volume, [Prompt(text="liver", box=(10, 40, 40, 60, 200, 180))])
```

`segvol predict` for image files: `segvol.infer.predict` (the library), `segvol.infer.outputs`
(what it writes); `segvol.infer.cli` is only its command line. Names are imported on first use, so
that `segvol predict --help` does not import torch.
"""

import importlib

_WHERE = {
    "VoxelMap": "segvol.infer.geometry",
    "Prompt": "segvol.infer.prompts",
    "load_prompt_file": "segvol.infer.prompts",
    "prompts_from_records": "segvol.infer.prompts",
    "MODES": "segvol.infer.zoom",
    "OUTSIDE_LOGIT": "segvol.infer.zoom",
    "segment": "segvol.infer.zoom",
    "Session": "segvol.infer.session",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'segvol.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
