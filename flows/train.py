"""Prefect flow `train`: catalog clips -> MimicMotion fine-tuning, in this process or on Ray Train workers.

    from flows.train import train
    train(catalog="my-catalog", base_model="svd-xt-1-1", checkpoint="MimicMotion_1-1.pth", run_dir="runs/a",
          workers=4, steps=10000, config={"mixed_precision": "bf16", "gradient_checkpointing": True})

The clips come from a named catalog query (default ``training_clips``) or SQL; the last
``validation_clips`` of the sorted selection are held out and rendered every ``validate_every`` steps.
With ``workers`` > 1 (or ``use_ray``) a Ray Train ``TorchTrainer`` runs one worker per rank (one GPU each
when the cluster has them; gloo on CPU, NCCL on GPU), each with its own dataset shard; gradients are
averaged by DDP. Checkpoints go to ``run_dir/ckpt-<step>/`` every ``checkpoint_every`` steps: a worker
killed mid-run is restarted by Ray (``max_failures``) and a re-run of a killed flow with the same run folder
resumes from the newest checkpoint, continuing exactly as the uninterrupted run would. Outputs:
``run_dir/metrics.csv``, ``loss_curve.png``, ``validation/*.mp4`` + ``validation.csv``, and a markdown
artifact with the metrics, the loss-curve path and the final checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from mimicmotion.errors import ConfigError
from mimicmotion.training.trainer import TrainConfig
from tasks.train import (TrainJob, check_inputs_task, fit_task, publish_artifacts_task, select_clips_task,
                         split_validation, summarize)


def build_config(config: Optional[dict], **explicit) -> TrainConfig:
    """TrainConfig from the defaults, then ``config`` (a mapping of TrainConfig fields), then the explicit
    flow parameters that are not None."""
    values = dict(config or {})
    values.update({k: v for k, v in explicit.items() if v is not None})
    return TrainConfig.from_dict(values).validate()


@flow(name="train", log_prints=True)
def train(
    catalog: str,
    base_model: str,
    run_dir: str,
    checkpoint: Optional[str] = None,
    workers: int = 1,
    use_ray: Optional[bool] = None,
    use_gpu: Optional[bool] = None,
    steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    config: Optional[dict] = None,
    query: str = "training_clips",
    query_params: Optional[dict] = None,
    sql: Optional[str] = None,
    validation_clips: int = 0,
    max_failures: int = 2,
    cpus_per_worker: float = 1,
    torch_threads: Optional[int] = None,
    ray_address: Optional[str] = None,
    device: Optional[str] = None,
) -> dict:
    """Train (or resume) a run; returns its summary (steps, final checkpoint, metrics, loss curve, validation).

    ``config``: TrainConfig fields (lr, num_frames, height, width, mixed_precision, trainable, ema_decay,
    checkpoint_every, validate_every, ...); ``steps`` / ``batch_size`` override it. ``use_ray``: default
    True when ``workers`` > 1 or ``ray_address`` is given; False trains in this process (``device``: cpu,
    cuda, cuda:1; default cuda when available).
    """
    logger = get_run_logger()
    cfg = build_config(config, steps=steps, batch_size=batch_size)
    use_ray = (workers > 1 or ray_address is not None) if use_ray is None else use_ray
    if not use_ray and workers != 1:
        raise ConfigError(f"{workers} workers need Ray (use_ray=True); in-process training has one worker")
    check_inputs_task(cfg, catalog=catalog, base_model=base_model, run_dir=run_dir, checkpoint=checkpoint,
                      workers=workers, validation_clips=validation_clips)
    selected = select_clips_task(catalog, query, query_params, sql)
    train_ids, held_out = split_validation(selected, validation_clips)
    job = TrainJob(run_dir=str(Path(run_dir).resolve()), catalog=str(Path(catalog).resolve()), clip_ids=train_ids,
                   base_model=str(Path(base_model).resolve()),
                   checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None, validation_clip_ids=held_out)
    logger.info("training on %d clip(s) (%d held out) with %s, %d worker(s), into %s", len(train_ids), len(held_out),
                "Ray Train" if use_ray else "this process", workers, job.run_dir)
    resumed_from = fit_task(cfg, job, use_ray=use_ray, workers=workers, use_gpu=use_gpu,
                            cpus_per_worker=cpus_per_worker, max_failures=max_failures, ray_address=ray_address,
                            torch_threads=torch_threads, device=device)
    summary = summarize(cfg, job, workers=workers, backend="ray" if use_ray else "in-process",
                        resumed_from=resumed_from)
    publish_artifacts_task(summary)
    logger.info("done: step %d, loss %s, checkpoint %s", summary.step, summary.last.get("loss"), summary.model)
    return summary.as_dict()
