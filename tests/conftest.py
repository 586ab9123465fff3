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
