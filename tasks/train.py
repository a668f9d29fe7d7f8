"""Training steps for the Prefect `train` flow: check the inputs, pick the clips, fit (in this process or on
Ray Train workers), summarise the run and publish artifacts.

The fitting itself is ``mimicmotion.training.trainer.train``. On Ray, :func:`ray_train_loop` runs it in each
Ray Train worker: Ray's ``TorchConfig`` initialises ``torch.distributed`` (gloo on CPU, NCCL on GPU), the
worker builds its own dataset shard (rank, world size) and the trainer wraps the trainable modules in DDP.
Checkpoints live in the run folder (shared storage for multi-node runs), so a worker restarted by Ray
(``max_failures``) and a re-run of the whole flow both continue from the newest one.

Plain functions first (testable without Prefect running), then their task wrappers.
"""
from __future__ import annotations

import csv
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.training.trainer import (LOSS_CURVE_FILE, METRICS_FILE, MODEL_FILE, VALIDATION_FILE, TrainConfig,
                                          latest_checkpoint, read_csv_rows)

SUMMARY_ARTIFACT_KEY = "train-summary"
RAY_RUN_NAME = "ray-train"  # Ray Train's own run folder inside the run folder
TABLE_ROWS = 10  # metric rows shown in the markdown artifact
PROGRESS_SECONDS = 60.0  # how often the fit task logs the run's progress
PROGRESS_WINDOW = 50  # steps the logged loss and pace are averaged over


@dataclass
class TrainJob:
    """Everything a run needs besides the config; paths must be readable from every worker."""

    run_dir: str
    catalog: str
    clip_ids: list
    base_model: str
    checkpoint: Optional[str] = None
    validation_clip_ids: list = field(default_factory=list)


@dataclass
class TrainSummary:
    run_dir: str
    step: int
    steps: int
    checkpoint: Optional[str]
    model: Optional[str]
    metrics: str
    loss_curve: Optional[str]
    workers: int
    backend: str  # "in-process" or "ray"
    clips: int
    validation_clips: int
    last: dict = field(default_factory=dict)
    validation: list = field(default_factory=list)
    resumed_from: Optional[int] = None

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


# ---------------------------------------------------------------------------------------------- checks
def check_inputs(config: TrainConfig, *, catalog: str, base_model: str, run_dir: str, checkpoint: Optional[str],
                 workers: int, validation_clips: int) -> None:
    """Every check that needs no model or Ray: raise before any work."""
    from mimicmotion.loading import check_base_model_dir

    config.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(validation_clips, bool) or not isinstance(validation_clips, int) or validation_clips < 0:
        raise ConfigError(f"validation_clips must be an integer >= 0, got {validation_clips!r}")
    if config.validate_every and not validation_clips:
        raise ConfigError("validate_every is set but no clip is held out: pass validation_clips >= 1 (or "
                          "validate_every 0)")
    check_base_model_dir(base_model)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ModelFileError(f"initial checkpoint {checkpoint} not found; pass the MimicMotion .pth/.safetensors "
                             "file, or none to start from the base folder's SVD UNet")
    if not Path(catalog).is_dir():
        raise ConfigError(f"catalog folder {catalog} not found; curate videos into it first (`mimicmotion curate`)")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run folder {run} exists and is not a folder; pass a folder path")


def split_validation(clip_ids: Sequence[str], validation_clips: int) -> tuple[list, list]:
    """(training ids, held-out ids): the last ``validation_clips`` of the sorted selection are held out."""
    ids = sorted(clip_ids)
    if validation_clips == 0:
        return ids, []
    if validation_clips >= len(ids):
        raise ConfigError(f"cannot hold out {validation_clips} validation clip(s) from {len(ids)} selected: select "
                          "more clips or hold out fewer")
    return ids[:-validation_clips], ids[-validation_clips:]


# ---------------------------------------------------------------------------------------------- fitting
def fit_in_process(config: TrainConfig, job: TrainJob, device: Optional[str] = None):
    """One process, no Ray: ``trainer.train`` with rank 0 of 1."""
    from mimicmotion.training.trainer import train

    return train(config, run_dir=job.run_dir, catalog_root=job.catalog, clip_ids=job.clip_ids,
                 base_model_dir=job.base_model, init_checkpoint=job.checkpoint,
                 validation_clip_ids=job.validation_clip_ids, device=device)


def ray_train_loop(loop_config: dict) -> None:
    """The function each Ray Train worker runs: its rank's share of ``trainer.train``."""
    import ray.train
    import torch

    from mimicmotion.training.trainer import train

    context = ray.train.get_context()
    threads = loop_config.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    device = None
    if loop_config.get("use_gpu"):
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    job = TrainJob(**loop_config["job"])
    train(TrainConfig.from_dict(loop_config["config"]), run_dir=job.run_dir, catalog_root=job.catalog,
          clip_ids=job.clip_ids, base_model_dir=job.base_model, init_checkpoint=job.checkpoint,
          validation_clip_ids=job.validation_clip_ids, rank=context.get_world_rank(),
          world_size=context.get_world_size(), device=device, report=ray.train.report)


def resolve_use_gpu(use_gpu: Optional[bool], workers: int) -> bool:
    """None: one GPU per worker when the Ray cluster has that many, else CPU workers."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None:
        return gpus >= workers
    if use_gpu and gpus < workers:
        raise ConfigError(f"{workers} GPU workers need {workers} GPUs; the Ray cluster has {gpus}")
    return bool(use_gpu)


def fit_with_ray(config: TrainConfig, job: TrainJob, *, workers: int, use_gpu: Optional[bool] = None,
                 cpus_per_worker: float = 1, max_failures: int = 2, ray_address: Optional[str] = None,
                 torch_threads: Optional[int] = None) -> None:
    """Run ``workers`` Ray Train workers (``TorchTrainer``); a worker that dies is restarted up to
    ``max_failures`` times and resumes from the newest checkpoint. The results are in the run folder."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.ray_render import ensure_ray

    ensure_ray(address=ray_address)
    gpu = resolve_use_gpu(use_gpu, workers)
    resources = {"CPU": cpus_per_worker}
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={"config": config.to_dict(), "job": vars(job), "use_gpu": gpu,
                           "torch_threads": torch_threads},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(name=RAY_RUN_NAME, storage_path=str(Path(job.run_dir).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def summarize(config: TrainConfig, job: TrainJob, *, workers: int, backend: str,
              resumed_from: Optional[int] = None) -> TrainSummary:
    """What the run folder holds now: newest checkpoint, last metrics, validation scores, loss curve."""
    run = Path(job.run_dir)
    rows = read_csv_rows(run / METRICS_FILE)
    last = {k: _number(v) for k, v in rows[-1].items()} if rows else {}
    checkpoint = latest_checkpoint(run)
    curve = run / LOSS_CURVE_FILE
    validation = [{k: (_number(v) if k != "video" else v) for k, v in r.items()}
                  for r in read_csv_rows(run / VALIDATION_FILE)]
    return TrainSummary(
        run_dir=str(run), step=int(last.get("step", 0)), steps=config.steps,
        checkpoint=str(checkpoint) if checkpoint else None,
        model=str(checkpoint / MODEL_FILE) if checkpoint else None, metrics=str(run / METRICS_FILE),
        loss_curve=str(curve) if curve.is_file() else None, workers=workers, backend=backend,
        clips=len(job.clip_ids), validation_clips=len(job.validation_clip_ids), last=last, validation=validation,
        resumed_from=resumed_from)


def _number(value):
    """A CSV cell as int, float or the string itself."""
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def summary_markdown(summary: TrainSummary, rows: Sequence[dict]) -> str:
    """The run as markdown: totals, the last metric rows, validation scores, where the outputs are."""
    lines = [f"# Training run `{summary.run_dir}`", "",
             f"- steps: {summary.step} of {summary.steps} ({summary.backend}, {summary.workers} worker(s), "
             f"{summary.clips} training clip(s), {summary.validation_clips} held out)"]
    if summary.resumed_from is not None:
        lines.append(f"- resumed from step {summary.resumed_from}")
    lines += [f"- final checkpoint: `{summary.model}`" if summary.model else "- no checkpoint yet",
              f"- loss curve: `{summary.loss_curve}`" if summary.loss_curve else "- no loss curve yet",
              f"- metrics: `{summary.metrics}`", ""]
    columns = ("step", "loss", "hand_loss", "lr", "samples_per_s", "step_time_s")
    if rows:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows[-TABLE_ROWS:]:
            lines.append("| " + " | ".join(_cell(_number(row.get(c, ""))) for c in columns) + " |")
        lines.append("")
    if summary.validation:
        lines += ["| step | PSNR (dB) | SSIM | video |", "|---|---|---|---|"]
        for v in summary.validation:
            lines.append(f"| {v['step']} | {_cell(v['psnr'])} | {_cell(v['ssim'])} | `{v['video']}` |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- progress
def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def progress_line(rows: Sequence[dict], steps: int, *, since: float = 0.0, window: int = PROGRESS_WINDOW) -> str:
    """One line on a run's progress from its metric rows (metrics.csv): the step, the mean loss of the last
    ``window`` steps, and the pace and time to go from the rows written after ``since`` (a wall time: the pace
    of this run, not of an earlier one that was resumed). Rows that cannot be read (one being written) are
    skipped; an empty string when there is no row yet."""
    parsed = []
    for row in rows[-(window + 1):]:  # the last row may be one being written
        try:
            parsed.append((int(row["step"]), float(row["loss"]), float(row["wall_time"])))
        except (KeyError, TypeError, ValueError):
            continue
    if not parsed:
        return ""
    step = parsed[-1][0]
    recent = parsed[-window:]
    losses = [loss for _, loss, _ in recent if math.isfinite(loss)]
    line = f"step {step} of {steps} ({100 * step / steps:.1f} %)"
    if losses:
        line += f", loss {sum(losses) / len(losses):.4f} (mean of the last {_count(len(recent), 'step')})"
    timed = [(s, t) for s, _, t in recent if t >= since]
    if len(timed) >= 2 and timed[-1][0] > timed[0][0]:
        pace = (timed[-1][1] - timed[0][1]) / (timed[-1][0] - timed[0][0])
        line += f", {pace:.2f} s a step"
        if step < steps:
            line += f", about {_duration(pace * (steps - step))} to go"
    return line


class ProgressLog:
    """While fitting, logs ``progress_line`` of the run folder's metrics every ``seconds`` (when the step has
    moved). It reads the file rank 0 writes, so it works the same in-process and with Ray workers, whose own
    output does not reach this process."""

    def __init__(self, run_dir, steps: int, log, seconds: Optional[float] = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.steps = steps
        self.log = log
        self.seconds = PROGRESS_SECONDS if seconds is None else seconds
        self.since = time.time()
        self.last_step = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def poll(self) -> None:
        rows = read_csv_rows(self.path)
        if not rows or rows[-1].get("step") == self.last_step:
            return
        line = progress_line(rows, self.steps, since=self.since)
        if line:
            self.last_step = rows[-1].get("step")
            self.log(line)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.poll()
            except (OSError, csv.Error):  # the file is being replaced (a resumed run trims it): next time
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------- tasks
@task(name="check-train-inputs", cache_policy=NO_CACHE)
def check_inputs_task(config: TrainConfig, **kwargs) -> None:
    check_inputs(config, **kwargs)


@task(name="select-training-clips", cache_policy=NO_CACHE)
def select_clips_task(catalog: str, query: str, params: Optional[dict], sql: Optional[str]) -> list:
    from mimicmotion.training.dataset import select_clips

    clip_ids = select_clips(catalog, query=query, params=params, sql=sql)
    get_run_logger().info("selected %d clip(s) from %s", len(clip_ids), catalog)
    return clip_ids


@task(name="fit", cache_policy=NO_CACHE)
def fit_task(config: TrainConfig, job: TrainJob, *, use_ray: bool, workers: int, use_gpu: Optional[bool],
             cpus_per_worker: float, max_failures: int, ray_address: Optional[str],
             torch_threads: Optional[int], device: Optional[str]) -> Optional[int]:
    """Fit; returns the step the run resumed from (None for a fresh run)."""
    logger = get_run_logger()
    previous = latest_checkpoint(job.run_dir)
    resumed_from = int(previous.name.split("-")[1]) if previous is not None else None
    if resumed_from is not None:
        logger.info("resuming %s from %s", job.run_dir, previous.name)
    with ProgressLog(job.run_dir, config.steps, logger.info):
        if use_ray:
            fit_with_ray(config, job, workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                         max_failures=max_failures, ray_address=ray_address, torch_threads=torch_threads)
        else:
            fit_in_process(config, job, device=device)
    return resumed_from


@task(name="publish-train-artifacts", cache_policy=NO_CACHE)
def publish_artifacts_task(summary: TrainSummary, key: str = SUMMARY_ARTIFACT_KEY) -> str:
    rows = read_csv_rows(Path(summary.run_dir) / METRICS_FILE)
    markdown = summary_markdown(summary, rows)
    create_markdown_artifact(markdown=markdown, key=key, description="MimicMotion training run")
    if summary.loss_curve:
        create_image_artifact(Path(summary.loss_curve).resolve().as_uri(), key=f"{key}-loss-curve",
                              description="training loss curve")
    return markdown
