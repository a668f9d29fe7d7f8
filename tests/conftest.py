import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIMICMOTION_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_assets():
    """The real sample media in ../shared/assets; tests using it skip cleanly when it is absent."""
    assets = SHARED / "assets"
    if not (assets / "dance.mp4").is_file() or not (assets / "ref.png").is_file():
        pytest.skip("../shared/assets (dance.mp4, ref.png) not present")
    return assets
