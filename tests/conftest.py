import atexit
import logging
import os
import sys
from pathlib import Path

import pytest

_EXIT_STATUS: list[int] = []  # pytest's exit status once the session has finished

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


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


def _exit_with_the_tests_status() -> None:
    """End the process with the tests' status once every other exit handler has run, skipping the teardown.

    Ray leaves native threads running after ``ray.shutdown()`` (its core worker's io service, gRPC's event
    engine and timers); the interpreter's teardown can free what they use under them, and once in CI that
    turned a run of all-passing tests into exit 139 (segmentation fault). Registered when this conftest is
    imported, before Ray or Prefect register theirs, so it runs last: their handlers (e.g. stopping Prefect's
    temporary API server) still run. ``MIMICMOTION_TESTS_FULL_TEARDOWN=1`` keeps the ordinary exit, to debug it.
    """
    if not _EXIT_STATUS or "ray" not in sys.modules or os.environ.get("MIMICMOTION_TESTS_FULL_TEARDOWN") == "1":
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    os._exit(_EXIT_STATUS[-1])


atexit.register(_exit_with_the_tests_status)
