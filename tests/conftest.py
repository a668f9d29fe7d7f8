import atexit
import logging
import os
import sys
from pathlib import Path

import pytest

_EXIT_STATUS: list[int] = []  # pytest's exit status once the session has finished

# Every process the tests start (CLI commands, Prefect servers, Ray's processes) inherits this mark; at the
# very end none may be left running (issue 37: no Ray, Prefect or uvicorn process of ours outlives its run).
SESSION_MARK_ENV = "MIMICMOTION_TEST_SESSION"
os.environ[SESSION_MARK_ENV] = f"{os.getpid()}-{os.urandom(4).hex()}"
LEFTOVER_WAIT_S = 20.0

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


def _leftover_processes() -> list[str]:
    """Processes still carrying this session's mark (waits for stragglers to finish exiting)."""
    import time

    from mimicmotion.lifecycle import marked_processes

    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while True:
        left = marked_processes(os.environ[SESSION_MARK_ENV], (os.getpid(),), env=SESSION_MARK_ENV)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = []
    for pid in left:  # report, then do not leave them running either
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(bytes(1), b" ").decode()
            lines.append(f"{pid}: {cmdline[:120]}")
            os.kill(pid, 9)
        except OSError:
            pass
    return lines


def _check_no_leftover_processes() -> None:
    if not _EXIT_STATUS or not sys.platform.startswith("linux"):
        return
    left = _leftover_processes()
    if left:
        print(f"\n{len(left)} process(es) started by the tests were still running at the end:", file=sys.stderr)
        for line in left:
            print(f"  {line}", file=sys.stderr)
        if _EXIT_STATUS[-1] == 0:
            _EXIT_STATUS[-1] = 1


def _exit_with_the_tests_status() -> None:
    """End the process with the tests' status once every other exit handler has run, skipping the teardown.

    Ray leaves native threads running after ``ray.shutdown()`` (its core worker's io service, gRPC's event
    engine and timers); the interpreter's teardown can free what they use under them, and once in CI that
    turned a run of all-passing tests into exit 139 (segmentation fault). Registered when this conftest is
    imported, before Ray or Prefect register theirs, so it runs last: their handlers (e.g. stopping Prefect's
    temporary API server) still run. ``MIMICMOTION_TESTS_FULL_TEARDOWN=1`` keeps the ordinary exit, to debug it.
    """
    _check_no_leftover_processes()
    if not _EXIT_STATUS or "ray" not in sys.modules or os.environ.get("MIMICMOTION_TESTS_FULL_TEARDOWN") == "1":
        if _EXIT_STATUS and _EXIT_STATUS[-1] != 0:
            os._exit(_EXIT_STATUS[-1])  # the leftover check can turn a pass into a failure
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    os._exit(_EXIT_STATUS[-1])


atexit.register(_exit_with_the_tests_status)
