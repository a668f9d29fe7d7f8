import logging
import os
import sys
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


@pytest.fixture(autouse=True)
def log_handlers_keep_an_open_stream():
    """Prefect (re)creates its console log handler on the sys.stderr of the moment, e.g. when a test's first
    flow starts the temporary server; under ``capsys`` that is the test's capture, closed when the test ends,
    and later flows' logs then fail with a RecursionError. Point such handlers back at the open stderr."""
    yield
    for handler in logging.getLogger().handlers:
        if getattr(getattr(handler, "stream", None), "closed", False):
            handler.stream = sys.stderr  # not setStream: it would flush the closed one
            if hasattr(handler, "console"):  # Prefect's handler prints through a rich Console
                handler.console.file = sys.stderr
