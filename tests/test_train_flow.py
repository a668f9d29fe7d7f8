"""The Prefect `train` flow on a tiny catalog and the tiny model: two Ray Train workers (gloo) train with
one worker killed mid-run (Ray restarts them and they continue from the newest checkpoint, re-computing
the lost steps bit for bit), the fixed-batch loss goes down, validation renders, metrics, loss curve and
the artifact; then the `train` CLI in-process, interrupted and resumed; and the input errors."""
import argparse
import contextlib
import csv
import io
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
prefect_testing = pytest.importorskip("prefect.testing.utilities")

from catalog import curate_file, init_catalog, rebuild_index  # noqa: E402
from mimicmotion.curation import CurationSettings  # noqa: E402
from mimicmotion.errors import ConfigError, MimicMotionError  # noqa: E402
from mimicmotion.tiny import save_tiny_model  # noqa: E402
from test_training_dataset import dancer  # noqa: E402

H, W, F = 64, 32, 2  # 1:2 crops (80x160 of the 96x160 videos) resized to 32x64
CURATION = CurationSettings(sample_stride=1, clip_length=8, min_clip_length=4, aspect="1:2", resolution=64)
CONFIG = dict(num_frames=F, height=H, width=W, lr=1e-3, warmup_steps=2, seed=0, checkpoint_every=2,
              condition_dropout=0.0, validate_every=4, validation_steps=2)


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread():
    # The machine's cores are shared: two intra-op threads that wait on each other crawl under contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Two dancer videos (16 and 12 frames, confident left hands) -> four clips of 8, 8, 8 and 4 frames."""
    d = tmp_path_factory.mktemp("media")
    root = init_catalog(d / "cat")
    for name, frames, seed in (("a", 16, 1), ("b", 12, 2)):
        path = d / f"{name}.mp4"
        dancer(path, frames, seed, 0.95, 0.2)
        assert curate_file(path, root, CURATION, pose_source="sidecar").status == "ok"
    rebuild_index(root)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


def fixed_batch_loss(base, checkpoint, catalog_root, clip_ids) -> float:
    """Mean loss of the given weights on fixed items (first-frame references) and fixed noise draws."""
    from mimicmotion.loading import load_pipeline
    from mimicmotion.training.dataset import TrainingClips, collate
    from mimicmotion.training.trainer import TrainConfig, prepare_modules, training_step

    cfg = TrainConfig(**CONFIG)
    pipe = load_pipeline(base, checkpoint)
    names = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor", "pose_net")
    modules = prepare_modules({k: getattr(pipe, k) for k in names}, cfg, "cpu")
    items = TrainingClips(catalog_root, clip_ids, num_frames=F, height=H, width=W, reference="first")
    batch = collate([items[i] for i in range(len(items))])
    with torch.no_grad():
        return float(np.mean([training_step(modules, batch, cfg, torch.Generator().manual_seed(s))["loss"].item()
                              for s in range(4)]))


def ray_train_worker_pids() -> set:
    """PIDs of this machine's Ray Train worker processes (Ray titles them ray::RayTrainWorker...)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::RayTrainWorker"):
                pids.add(int(entry))
    return pids


class WorkerKiller(threading.Thread):
    """Watches the run's metrics; once ``after_step`` is logged, SIGKILLs one Ray Train worker (and
    remembers the rows logged so far); keeps recording every worker PID it sees."""

    def __init__(self, metrics: Path, after_step: int):
        super().__init__(daemon=True)
        self.metrics, self.after_step = metrics, after_step
        self.rows_before_kill, self.killed, self.seen = None, None, set()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.seen |= ray_train_worker_pids()
            if self.killed is None and self.metrics.is_file():
                rows = list(csv.DictReader(open(self.metrics)))
                if rows and int(rows[-1]["step"]) >= self.after_step and self.seen:
                    self.rows_before_kill = rows
                    self.killed = max(self.seen & ray_train_worker_pids())
                    os.kill(self.killed, signal.SIGKILL)
            time.sleep(0.02)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the Ray workers through /proc")
def test_two_ray_workers_survive_a_killed_worker_and_learn(catalog, model, tmp_path, monkeypatch):
    from prefect.artifacts import Artifact

    import tasks.train
    from flows.train import train
    from mimicmotion.training.dataset import select_clips

    base, checkpoint = model
    run = tmp_path / "run"
    killer = WorkerKiller(run / "metrics.csv", after_step=3)
    killer.start()
    monkeypatch.setattr(tasks.train, "PROGRESS_SECONDS", 0.5)
    task_log = Lines()
    logging.getLogger("prefect.task_runs").addHandler(task_log)
    try:
        summary = train(catalog=str(catalog), base_model=str(base), checkpoint=str(checkpoint), run_dir=str(run),
                        workers=2, steps=10, batch_size=1, validation_clips=1,
                        config=dict(CONFIG, latent_cache_frames=64, persist_latent_cache=True),
                        query_params={"min_frames": F}, max_failures=1, torch_threads=1)
    finally:
        killer.stop.set()
        killer.join()
        logging.getLogger("prefect.task_runs").removeHandler(task_log)

    assert killer.killed is not None and len(killer.seen) > 2, "no worker was killed and restarted"
    # the workers' progress reached the fit task's log (their own output does not reach this process)
    progress = [line for line in task_log.lines if line.startswith("step ")]
    assert progress and all(" of 10 (" in line and ", loss " in line for line in progress), task_log.lines
    assert summary["backend"] == "ray" and summary["workers"] == 2 and summary["step"] == 10
    assert (summary["clips"], summary["validation_clips"]) == (3, 1)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))  # steps lost to the kill were logged again
    # the restarted workers resumed from a checkpoint and recomputed the same losses, bit for bit
    before = {r["step"]: r["loss"] for r in killer.rows_before_kill}
    assert all(rows[int(step) - 1]["loss"] == loss for step, loss in before.items())
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    assert np.isfinite([float(r["hand_loss"]) for r in rows]).all()  # the clips have confident hands

    # learning: the final weights fit the training clips better than the initial ones
    clip_ids = select_clips(catalog, params={"min_frames": F})[:3]
    initial = fixed_batch_loss(base, checkpoint, catalog, clip_ids)
    final = fixed_batch_loss(base, summary["model"], catalog, clip_ids)
    assert final < 0.7 * initial, (initial, final)

    assert [v["step"] for v in summary["validation"]] == [4, 8]
    for v in summary["validation"]:
        assert Path(v["video"]).is_file() and v["psnr"] > 0 and 0 < v["ssim"] <= 1
    assert Path(summary["loss_curve"]).is_file()
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-000006", "ckpt-000008", "ckpt-000010"]
    # both ranks kept the frames they encoded (read by the other rank at each checkpoint and after the kill)
    assert {p.name.split("-")[0] for p in (run / "latent_cache").glob("*.safetensors")} == {"rank0", "rank1"}
    artifact = Artifact.get("train-summary")
    assert artifact is not None
    assert summary["model"] in artifact.data and summary["loss_curve"] in artifact.data
    assert "| step | loss | hand_loss | lr | samples_per_s | step_time_s |" in artifact.data
    assert "| 10 |" in artifact.data and "| 8 |" in artifact.data  # metrics and validation rows


def run_cli(argv) -> str:
    """Run `mimicmotion train ...` through its parser; returns what it printed. (Not capsys: Prefect's log
    handler would keep capsys's stream, closed after the test, for later flows.)"""
    from mimicmotion.training.cli import add_train_command

    parser = argparse.ArgumentParser(prog="mimicmotion")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    return out.getvalue()


def test_cli_trains_in_process_and_resumes(catalog, model, tmp_path):
    base, checkpoint = model
    run = tmp_path / "cli-run"
    common = ["train", "--catalog", str(catalog), "--base-model", str(base), "--checkpoint", str(checkpoint),
              "--run-dir", str(run), "--num-frames", str(F), "--height", str(H), "--width", str(W),
              "--param", f"min_frames={F}", "--lr", "1e-3", "--checkpoint-every", "2", "--seed", "1"]
    out = run_cli(common + ["--steps", "2"])
    assert "trained 2 of 2 steps on 4 clip(s) with 1 worker(s) (in-process)" in out
    assert str(run / "ckpt-000002" / "model.safetensors") in out
    out = run_cli(common + ["--steps", "3"])
    assert "trained 3 of 3 steps (resumed from step 2)" in out
    assert [r["step"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1", "2", "3"]
    # other settings in the same run folder are refused, naming the difference
    with pytest.raises(ConfigError, match="lr: checkpoint 0.001, now 0.01"):
        run_cli(common[:-6] + ["--lr", "1e-2", "--seed", "1", "--checkpoint-every", "2", "--steps", "4"])


def test_flow_input_errors(catalog, model, tmp_path):
    from flows.train import train

    base, checkpoint = model
    kw = dict(catalog=str(catalog), base_model=str(base), run_dir=str(tmp_path / "r"), config=CONFIG)
    with pytest.raises(ConfigError, match="workers need Ray"):
        train(**kw, workers=2, use_ray=False)
    with pytest.raises(ConfigError, match="no clip is held out"):
        train(**kw, checkpoint=str(checkpoint))
    with pytest.raises(MimicMotionError, match="initial checkpoint .* not found"):
        train(**kw, checkpoint=str(tmp_path / "missing.safetensors"), validation_clips=1)
    with pytest.raises(ConfigError, match="cannot hold out 4 validation clip"):
        train(**kw, checkpoint=str(checkpoint), validation_clips=4, query_params={"min_frames": F})
    with pytest.raises(ConfigError, match="unknown training setting"):
        train(**{**kw, "config": {"learnig_rate": 1}}, checkpoint=str(checkpoint))
