"""Training benchmark: full-size SVD-xt architecture + PoseNet with random weights (speed and memory do not
depend on the values), the real training step of mimicmotion.training.trainer.

    python benchmarks/train_gpu.py                        # on a GPU: 16 frames at 576x1024, bf16,
                                                          # gradient checkpointing, 8-bit AdamW if available
    python benchmarks/train_gpu.py --frames 16 --optimizer adamw --no-gradient-checkpointing
    python benchmarks/train_gpu.py --dry-run              # CPU, meta tensors: shapes, parameters, memory floor

Prints one JSON row: samples/s (median over the timed steps, after warm-up), seconds per step, peak CUDA
memory (torch.cuda.max_memory_allocated), the static memory floor (weights + gradients + optimizer states)
and the parameter counts. ``--dry-run`` builds the same modules on the meta device and runs one
forward + backward of the training step there: no memory, no arithmetic, about a second on a CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render_gpu import full_size_components  # noqa: E402

# Bytes per trainable parameter of the optimiser's two moments: AdamW float32, bitsandbytes 8-bit (+ scales).
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}


def synthetic_batch(batch: int, frames: int, height: int, width: int, device) -> dict:
    """A batch in TrainingClips' format: reference + ``frames`` frames, pose images, a hand mask."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, 1 + frames, 3, height, width)
    mask = torch.zeros((batch, 1 + frames, 1, height // 8, width // 8))
    mask[..., height // 32: height // 16, width // 32: width // 16] = 1.0
    return {"pixels": (torch.rand(shape, generator=g) * 2 - 1).to(device),
            "pose_images": (torch.rand(shape, generator=g) * 2 - 1).to(device), "hand_mask": mask.to(device)}


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def static_memory_gib(trainable: int, frozen_bytes: int, optimizer: str) -> float:
    """Weights (trainable float32 + frozen as stored) + float32 gradients + optimiser states, in GiB."""
    return (trainable * (4 + 4 + OPTIMIZER_STATE_BYTES[optimizer]) + frozen_bytes) / 2 ** 30


def meta_components() -> dict:
    """render_gpu's full-size components with every tensor on the meta device. The scheduler is built
    beforehand on the CPU (its constructor reads tensor values, which meta tensors do not have)."""
    from unittest import mock

    from diffusers import EulerDiscreteScheduler

    from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG

    scheduler = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG)
    with mock.patch.object(EulerDiscreteScheduler, "from_config", return_value=scheduler), torch.device("meta"):
        return full_size_components(torch.float32)


def build(config, device, tiny: bool):
    from mimicmotion.training.trainer import prepare_modules

    if tiny:
        from mimicmotion.tiny import tiny_components

        comps = tiny_components()
    elif torch.device(device).type == "meta":
        comps = meta_components()
    else:
        comps = full_size_components(torch.float32)
    return prepare_modules(comps, config, device)


def counts(modules) -> tuple[int, int]:
    trainable = sum(p.numel() for _, p in modules.trainable_named_parameters())
    frozen_bytes = sum(p.numel() * p.element_size() for m in (modules.unet, modules.pose_net, modules.vae,
                                                               modules.image_encoder)
                       for p in m.parameters() if not p.requires_grad)
    return trainable, frozen_bytes


def dry_run(config) -> dict:
    """Build everything on the meta device and run one training-step forward + backward there."""
    from mimicmotion.training.trainer import training_step

    start = time.perf_counter()
    modules = build(config, "meta", tiny=False)
    batch = synthetic_batch(config.batch_size, config.num_frames, config.height, config.width, "meta")
    # Meta tensors take no generator and no autocast: the step runs in the modules' own dtypes.
    out = training_step(modules, batch, dataclasses.replace(config, mixed_precision="no"), None)
    out["loss"].backward()
    named = modules.trainable_named_parameters()
    without_grad = [n for n, p in named if p.grad is None]  # DDP needs every trainable weight in the graph
    trainable, frozen = counts(modules)
    return dict(mode="dry-run (meta)", seconds=round(time.perf_counter() - start, 2), trainable_params=trainable,
                trainable_tensors=len(named),
                tensors_without_grad=without_grad, loss_shape=list(out["loss"].shape),
                static_memory_gib=round(static_memory_gib(trainable, frozen, config.optimizer), 2))


def timed_run(config, device, steps: int, warmup: int, tiny: bool) -> dict:
    from mimicmotion.training.trainer import Trainer

    torch.manual_seed(0)
    modules = build(config, device, tiny)
    trainer = Trainer(modules, config)
    batch = synthetic_batch(config.batch_size, config.num_frames, config.height, config.width, device)
    cuda = modules.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(modules.device)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize(modules.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    trainable, frozen = counts(modules)
    step_s = statistics.median(times)
    return dict(device=torch.cuda.get_device_name(modules.device) if cuda else "cpu", steps=steps,
                s_per_step=round(step_s, 3), samples_per_s=round(config.batch_size / step_s, 3),
                peak_memory_gib=round(torch.cuda.max_memory_allocated(modules.device) / 2 ** 30, 2) if cuda else None,
                static_memory_gib=round(static_memory_gib(trainable, frozen, config.optimizer), 2),
                trainable_params=trainable, last_loss=round(metrics["loss"], 4))


def main(argv=None) -> dict:
    from mimicmotion.training.trainer import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="clip frames after the reference (default: 16)")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--optimizer", choices=["auto", "adamw", "adamw8bit"], default="auto",
                    help="auto: 8-bit AdamW when bitsandbytes is installed, else AdamW")
    ap.add_argument("--trainable", default="all", choices=["all", "pose_temporal"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny components (smoke test of this script)")
    ap.add_argument("--dry-run", action="store_true", help="meta tensors on the CPU: shapes and memory floor only")
    ap.add_argument("--json", help="also write the result as JSON to this file")
    args = ap.parse_args(argv)
    optimizer = args.optimizer
    if optimizer == "auto":
        optimizer = "adamw8bit" if has_bitsandbytes() and not args.dry_run else "adamw"
    config = TrainConfig(num_frames=args.frames, height=args.height, width=args.width, batch_size=args.batch_size,
                         mixed_precision=args.mixed_precision, optimizer=optimizer, trainable=args.trainable,
                         gradient_checkpointing=not args.no_gradient_checkpointing, warmup_steps=0,
                         condition_dropout=0.0).validate()
    if args.dry_run:
        row = dry_run(config)
    else:
        row = timed_run(config, args.device, args.steps, args.warmup, args.tiny)
    row.update(frames=args.frames, height=args.height, width=args.width, batch_size=args.batch_size,
               mixed_precision=args.mixed_precision, gradient_checkpointing=config.gradient_checkpointing,
               optimizer=optimizer, trainable=args.trainable)
    print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
