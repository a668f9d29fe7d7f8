"""Processes a command starts die with it, however it ends (SIGTERM, SIGKILL, a crash).

Prefect's temporary API server (uvicorn) and Ray's local cluster (raylet, GCS, dashboard and runtime-env
agents) are started as separate processes; some start their own sessions. When the command is SIGKILLed
(a cron job's timeout, an out-of-memory kill) nothing in it runs again, so they used to stay alive for
hours. :func:`reap_descendants_on_exit` marks every process the command starts with ``MIMICMOTION_RUN_ID``
in its environment (inherited by all descendants) and forks a small reaper that waits for the command to
end, then sends SIGTERM, and after a grace period SIGKILL, to every process still carrying the mark.
:func:`exit_cleanly_on_sigterm` turns SIGTERM into a normal exit, so Prefect and Ray shut down as on Ctrl-C.
Linux only (it reads /proc); elsewhere both are no-ops.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Optional

RUN_ID_ENV = "MIMICMOTION_RUN_ID"
GRACE_S = 5.0


def marked_processes(run_id: str, exclude: tuple = (), env: str = RUN_ID_ENV) -> list[int]:
    """Pids of processes whose (initial) environment holds ``env=run_id``."""
    needle = f"{env}={run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _reaper(read_fd: int, run_id: str) -> None:
    """The forked reaper's body: wait for the command to end (EOF on the pipe), then end its marked
    descendants. Never returns."""
    try:
        os.setsid()  # out of the command's process group: a killpg of the command spares the reaper
    except OSError:
        pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        while True:
            try:
                if not os.read(read_fd, 1):
                    break
            except InterruptedError:
                continue
        me = (os.getpid(),)
        left = marked_processes(run_id, me)
        _signal_all(left, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = marked_processes(run_id, me)
        _signal_all(left, signal.SIGKILL)
    finally:
        os._exit(0)


def reap_descendants_on_exit() -> Optional[str]:
    """Start the reaper for this process (once); returns the run id, or None where not supported. Call it
    first thing in a command's process, before any thread exists (it forks)."""
    if not sys.platform.startswith("linux") or not Path("/proc/self/environ").exists():
        return None
    if os.environ.get("MIMICMOTION_REAPER_PID") == str(os.getpid()):
        return os.environ[RUN_ID_ENV]
    # A fresh id per command: a nested command's reaper must not end its parent's processes.
    run_id = secrets.token_hex(8)
    os.environ[RUN_ID_ENV] = run_id
    read_fd, write_fd = os.pipe()  # both close-on-exec: only this process holds the write end
    pid = os.fork()
    if pid == 0:
        os.close(write_fd)
        _reaper(read_fd, run_id)
    os.close(read_fd)
    os.environ["MIMICMOTION_REAPER_PID"] = str(os.getpid())
    _keep.append(write_fd)  # closed by the kernel when this process ends, whatever ends it
    return run_id


_keep: list[int] = []


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM ends the command like Ctrl-C does (atexit handlers run: Prefect's server, Ray stop)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass
