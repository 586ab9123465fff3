from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real CT cases); tests using it skip when it is absent."""
    if not (SHARED_DATA / "totalsegmentator").is_dir():
        pytest.skip("../shared/data/totalsegmentator is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A `tiny` SegVol with random weights (seed 0) as our .safetensors: `segvol predict --checkpoint` on it
    exercises the whole command without trained weights (the segmentation itself is meaningless)."""
    import torch

    from segvol.model import build_model, model_config
    from segvol.model.checkpoint import save

    path = tmp_path_factory.mktemp("weights") / "tiny-random.safetensors"
    torch.manual_seed(0)
    save(build_model(model_config("tiny")), path)
    return path
