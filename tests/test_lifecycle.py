"""Killed commands leave no process behind (issue 39, item 4): a SIGKILLed or SIGTERMed command's
temporary Prefect server, Ray processes and any other descendant (even one in its own session) end with it."""
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mimicmotion.lifecycle import marked_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc")
REPO = Path(__file__).resolve().parents[1]


def marked(mark: str) -> list[int]:
    """Processes carrying the test's own environment mark (inherited by every descendant)."""
    return marked_processes(mark, env="TEST_MARK")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def spawn(code: str, mark: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "TEST_MARK": mark, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, **kw)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_descendant_in_its_own_session_dies_with_the_command(sig):
    mark = secrets.token_hex(6)
    proc = spawn("""
        import subprocess, time
        from mimicmotion.lifecycle import exit_cleanly_on_sigterm, reap_descendants_on_exit
        reap_descendants_on_exit()
        exit_cleanly_on_sigterm()
        subprocess.Popen(["sleep", "300"], start_new_session=True)  # like a server that calls setsid
        time.sleep(300)
        """, mark)
    try:
        sleeper = wait_for(lambda: [p for p in marked(mark) if cmdline(p).startswith("sleep")], 20, "the sleeper")
        proc.send_signal(sig)
        proc.wait(timeout=20)
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM  # a normal exit: atexit handlers ran
        wait_for(lambda: not [p for p in marked(mark) if p != proc.pid], 20, "every descendant to end")
        assert not Path(f"/proc/{sleeper[0]}").exists() or "sleep" not in cmdline(sleeper[0])
    finally:
        proc.kill()
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_ray_driver_leaves_no_ray_process():
    pytest.importorskip("ray")
    mark = secrets.token_hex(6)
    proc = spawn("""
        import time
        from mimicmotion.lifecycle import reap_descendants_on_exit
        reap_descendants_on_exit()
        import ray
        ray.init(num_cpus=1)  # the dashboard and runtime-env agents outlive a SIGKILLed driver by themselves
        print("ready", flush=True)
        time.sleep(300)
        """, mark, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        started = [cmdline(p) for p in marked(mark) if p != proc.pid]
        assert any("raylet" in c or "gcs_server" in c for c in started), started
        proc.kill()
        proc.wait(timeout=20)
        left = wait_for(lambda: not [p for p in marked(mark) if p != proc.pid] or None, 30, "Ray's processes to end")
        assert left
    finally:
        proc.kill()
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_curate_leaves_no_prefect_server(tmp_path):
    pytest.importorskip("prefect")
    sys.path.insert(0, str(REPO / "tests"))
    from test_catalog import dancer

    dancer(tmp_path / "d.mp4", num_frames=24)
    mark = secrets.token_hex(6)
    env = {**os.environ, "TEST_MARK": mark, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # a temporary server of its own, as a user's first run
    proc = subprocess.Popen([sys.executable, "-m", "mimicmotion.cli", "curate", str(tmp_path / "d.mp4"), "--catalog",
                             str(tmp_path / "cat"), "--pose-source", "sidecar"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: [p for p in marked(mark) if "uvicorn" in cmdline(p)], 120, "Prefect's temporary server")
        proc.kill()
        proc.wait(timeout=20)
        wait_for(lambda: not [p for p in marked(mark) if p != proc.pid] or None, 30, "the server to end")
    finally:
        proc.kill()
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)


def test_marked_processes_finds_its_own_children():
    mark = secrets.token_hex(6)
    env = {**os.environ, "MIMICMOTION_RUN_ID": mark}
    child = subprocess.Popen(["sleep", "30"], env=env)
    try:
        assert child.pid in marked_processes(mark)
    finally:
        child.kill()
        child.wait()
