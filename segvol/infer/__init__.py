"""Zoom-out-zoom-in inference on canonical volumes, and `segvol predict` for CT files.

```python
from segvol.infer import Prompt, segment
logits = segment(model, volume, [Prompt(text="liver", box=(10, 40, 40, 60, 200, 180))])
```
"""

from segvol.infer.geometry import VoxelMap
from segvol.infer.prompts import Prompt, load_prompt_file, prompts_from_records
from segvol.infer.zoom import MODES, OUTSIDE_LOGIT, segment

__all__ = ["MODES", "OUTSIDE_LOGIT", "Prompt", "VoxelMap", "load_prompt_file", "prompts_from_records", "segment"]
