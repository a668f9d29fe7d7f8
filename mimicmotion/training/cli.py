"""`mimicmotion train`: fine-tune MimicMotion on catalog clips through the Prefect flow `train`.

    mimicmotion train --catalog DIR --base-model SVD_DIR [--checkpoint FILE] --run-dir DIR --workers N --steps S

With ``--workers 1`` and no ``--ray`` it trains in this process (no Ray); otherwise on Ray Train workers.
Re-running the same command resumes from the run folder's newest checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from mimicmotion.errors import ConfigError

# CLI option -> TrainConfig field, for the options passed through as they are (None = not given).
CONFIG_OPTIONS = (
    "lr", "warmup_steps", "decay_steps", "weight_decay", "grad_clip", "mixed_precision", "optimizer", "trainable",
    "ema_decay", "num_frames", "height", "width", "reference", "seed", "checkpoint_every", "keep_checkpoints",
    "validate_every", "validation_steps", "condition_dropout", "noise_aug", "hand_weight", "hand_threshold",
    "log_sigma_mean", "log_sigma_std", "data_workers", "latent_cache_frames",
)


def parse_query_params(items) -> dict:
    """``["min_frames=32"]`` -> {"min_frames": "32"} (the catalog converts the values to the query's types)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.strip()] = value
    return params


def config_overrides(args) -> dict:
    """TrainConfig values from ``--config FILE.json`` and then the individual options that were given."""
    values = {}
    if args.config:
        path = Path(args.config)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--config {path} is not a readable JSON file of training settings ({exc})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path} must hold a JSON object of TrainConfig fields")
    for name in CONFIG_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.gradient_checkpointing:
        values["gradient_checkpointing"] = True
    if args.persist_latent_cache:
        values["persist_latent_cache"] = True
    if args.latent_cache_from:
        values["latent_cache_from"] = list(args.latent_cache_from)
    return values


def cmd_train(args) -> int:
    from flows.train import train

    if args.workers > 1 and args.no_ray:
        raise ConfigError("--workers > 1 needs Ray; drop --no-ray")
    use_ray = True if args.ray else (False if args.no_ray else None)
    use_gpu = True if args.gpu else (False if args.cpu else None)
    summary = train(
        catalog=args.catalog, base_model=args.base_model, run_dir=args.run_dir, checkpoint=args.checkpoint,
        workers=args.workers, use_ray=use_ray, use_gpu=use_gpu, steps=args.steps, batch_size=args.batch_size,
        config=config_overrides(args), query=args.query, query_params=parse_query_params(args.param), sql=args.sql,
        validation_clips=args.validation_clips, max_failures=args.max_failures, ray_address=args.ray_address,
        device=args.device)
    last = summary["last"]
    resumed = f" (resumed from step {summary['resumed_from']})" if summary["resumed_from"] is not None else ""
    print(f"trained {summary['step']} of {summary['steps']} steps{resumed} on {summary['clips']} clip(s) with "
          f"{summary['workers']} worker(s) ({summary['backend']})")
    if last:
        print(f"last step: loss {last.get('loss'):.4g}, {last.get('samples_per_s'):.3g} samples/s")
    for v in summary["validation"][-1:]:
        print(f"validation at step {v['step']}: PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f} ({v['video']})")
    print(f"checkpoint: {summary['model']}")
    if summary["loss_curve"]:
        print(f"loss curve: {summary['loss_curve']}")
    print(f"metrics: {summary['metrics']}")
    return 0


def add_train_command(subparsers) -> None:
    """Register `train` on the main CLI's subparsers."""
    t = subparsers.add_parser("train", help="fine-tune UNet + PoseNet on catalog clips (Prefect flow `train`)")
    t.add_argument("--catalog", required=True, help="catalog folder made by `mimicmotion curate`")
    t.add_argument("--base-model", required=True, help="Stable Video Diffusion img2vid-xt folder (diffusers layout)")
    t.add_argument("--checkpoint", default=None,
                   help="MimicMotion checkpoint to start from (default: the base folder's SVD UNet, fresh PoseNet)")
    t.add_argument("--run-dir", required=True, help="run folder: checkpoints, metrics, loss curve, validation; "
                                                    "re-running with the same folder resumes")
    t.add_argument("--workers", type=int, default=1, help="training workers (one GPU each when available)")
    ray = t.add_mutually_exclusive_group()
    ray.add_argument("--ray", action="store_true", help="use Ray Train even with one worker")
    ray.add_argument("--no-ray", action="store_true", help="train in this process (one worker)")
    dev = t.add_mutually_exclusive_group()
    dev.add_argument("--gpu", action="store_true", help="Ray workers on GPUs (default: when the cluster has them)")
    dev.add_argument("--cpu", action="store_true", help="Ray workers on CPUs")
    t.add_argument("--device", default=None, help="in-process device: cpu, cuda, cuda:1 (default: cuda if any)")
    t.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start one locally)")
    t.add_argument("--max-failures", type=int, default=2, help="worker failures Ray recovers from (default: 2)")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: 1000)")
    t.add_argument("--batch-size", type=int, default=None, help="clips per worker per step (default: 1)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-5)")
    t.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 500)")
    t.add_argument("--decay-steps", type=int, default=None,
                   help="last steps over which the lr falls linearly towards 0 (default: 0, constant as released)")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (default: 1.0)")
    t.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None)
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward")
    t.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default=None)
    t.add_argument("--trainable", choices=("all", "pose_temporal"), default=None,
                   help="all = UNet + PoseNet (default); pose_temporal = PoseNet + the UNet's temporal layers")
    t.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights (e.g. 0.9999)")
    t.add_argument("--num-frames", type=int, default=None, help="clip frames after the reference (default: 16)")
    t.add_argument("--height", type=int, default=None, help="training height (default: 1024)")
    t.add_argument("--width", type=int, default=None, help="training width (default: 576)")
    t.add_argument("--reference", choices=("random", "first"), default=None,
                   help="reference frame: any frame of the video (default) or the clip's first")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 500)")
    t.add_argument("--keep-checkpoints", type=int, default=None, help="newest checkpoints kept (default: 3)")
    t.add_argument("--validate-every", type=int, default=None, help="steps between validation renders (0 = off)")
    t.add_argument("--validation-steps", type=int, default=None, help="denoising steps per validation render")
    t.add_argument("--validation-clips", type=int, default=0, help="clips held out for validation (default: 0)")
    t.add_argument("--condition-dropout", type=float, default=None, help="condition dropout p (default: 0.1)")
    t.add_argument("--noise-aug", type=float, default=None, help="reference noise augmentation (default: 0.02)")
    t.add_argument("--hand-weight", type=float, default=None, help="hand-region loss factor (default: 10)")
    t.add_argument("--hand-threshold", type=float, default=None, help="hand keypoint confidence (default: 0.6)")
    t.add_argument("--log-sigma-mean", type=float, default=None)
    t.add_argument("--log-sigma-std", type=float, default=None)
    t.add_argument("--data-workers", type=int, default=None, help="DataLoader processes per worker (default: 0)")
    t.add_argument("--latent-cache-frames", type=int, default=None,
                   help="frames whose VAE posterior each worker keeps in memory (default: 0 = encode every step)")
    t.add_argument("--persist-latent-cache", action="store_true",
                   help="also keep the cached posteriors in the run folder, so a resumed run does not encode again")
    t.add_argument("--latent-cache-from", action="append", metavar="DIR",
                   help="also start from the posteriors persisted in DIR (an earlier run's latent_cache folder, same "
                        "VAE encoder): its frames of this run's clips are not encoded again; repeatable")
    t.add_argument("--config", default=None, help="JSON file of TrainConfig fields (options given here win)")
    t.add_argument("--query", default="training_clips", help="named catalog query choosing the clips")
    t.add_argument("--param", action="append", metavar="KEY=VALUE", help="parameter of the named query or SQL")
    t.add_argument("--sql", default=None, help="SQL selecting clip_id (instead of --query); values via --param")
    t.set_defaults(func=cmd_train)

