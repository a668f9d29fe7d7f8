"""Prefect's production way (issue 37, item 5): prefect.yaml deployed to a process work pool on a local Prefect
server started by the test, a run of the curate deployment picked up by a worker, completed, catalogued."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prefect")
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def prefect(env, *args, timeout=300) -> str:
    proc = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout + proc.stderr


def test_prefect_yaml_deployments_run_on_a_process_work_pool(prefect_server, tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from test_catalog import dancer

    from catalog import Catalog

    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    inbox.mkdir()
    dancer(inbox / "d.mp4", num_frames=24)
    env = {**prefect_server, "PWD": str(REPO), "MIMICMOTION_WORK_POOL": "mm-test", "MIMICMOTION_INBOX": str(inbox),
           "MIMICMOTION_CATALOG": str(catalog), "PYTHONPATH": str(REPO)}
    prefect(env, "work-pool", "create", "mm-test", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    listed = prefect(env, "deployment", "ls")
    for name in ("curate/inbox", "render/adhoc", "render_batch/adhoc"):
        assert name in listed
    prefect(env, "deployment", "run", "curate/inbox", "--param", "settle_seconds=0", "--param", "pose_source=sidecar",
            "--param", "sample_stride=1", "--param", "clip_length=12", "--param", "min_clip_length=6")
    worker = prefect(env, "worker", "start", "--pool", "mm-test", "--run-once")
    assert "Finished in state Completed()" in worker
    [video] = Catalog(catalog).query("SELECT status, num_clips FROM videos").to_pylist()
    assert video == {"status": "ok", "num_clips": 2}
