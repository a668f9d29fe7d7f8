"""Training throughput of the tiny model on CPU: in-process vs 1 and 2 Ray Train workers.

    python benchmarks/train_cpu.py                     # 2 generated dancer videos, 64x128, 4 frames, 12 steps
    python benchmarks/train_cpu.py --steps 20 --frames 8 --json out.json

Data: procedural dancer videos (mimicmotion.sample) with sidecar poses, curated into a temporary catalog at
1:2 crops; every step decodes its clip frames, draws the pose images and builds the hand masks (the real
data path), so samples/s covers data + step. Each configuration trains a fresh run of ``--steps`` steps
with batch 1 per worker and one torch thread per worker; samples/s is the median over the steps after the
first two (global: batch x workers / step time). Peak memory: the peak resident set of the training
process (rank 0 for Ray; resource.getrusage), as logged in the run's metrics.csv. Ray start-up and worker
start-up are not in samples/s; the wall time of each configuration (everything) is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SRC_W, SRC_H, FPS = 96, 160, 24.0


def make_catalog(folder: Path, videos: int, frames: int) -> Path:
    """A catalog of ``videos`` dancer videos (``frames`` frames each, sidecar poses, confident hands)."""
    from catalog import curate_file, init_catalog, rebuild_index
    from mimicmotion.curation import CurationSettings, sidecar_path
    from mimicmotion.pose.io import PoseSequence, save_poses
    from mimicmotion.pose.layout import LEFT_HAND, RIGHT_HAND
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    root = init_catalog(folder / "catalog")
    settings = CurationSettings(sample_stride=1, clip_length=16, min_clip_length=4, aspect="1:2", resolution=64)
    for k in range(videos):
        path = folder / f"dance{k}.mp4"
        poses = [p.astype(np.float64) for p in dance_poses(frames, FPS, SRC_W, SRC_H, seed=k)]
        for p in poses:  # narrow the dancer so it fits a 1:2 crop; confident hands
            p[..., 0] = 0.5 + (p[..., 0] - 0.5) * 0.5
            p[:, LEFT_HAND, 2] = 0.95
            p[:, RIGHT_HAND, 2] = 0.95
        write_video(path, [draw_figure(p, SRC_H, SRC_W, seed=k) for p in poses], fps=FPS)
        save_poses(sidecar_path(path), PoseSequence(frames=poses, width=SRC_W, height=SRC_H, fps=FPS,
                                                    source_frames=list(range(frames)), sample_stride=1))
        outcome = curate_file(path, root, settings, pose_source="sidecar")
        if outcome.status != "ok":
            raise RuntimeError(f"curating {path} failed: {outcome}")
    rebuild_index(root)
    return root


def summarise(run_dir: Path, label: str, workers: int, wall_s: float) -> dict:
    from mimicmotion.training.trainer import METRICS_FILE, read_csv_rows

    rows = read_csv_rows(run_dir / METRICS_FILE)
    timed = rows[2:] if len(rows) > 2 else rows
    return dict(config=label, workers=workers, steps=len(rows),
                samples_per_s=round(statistics.median(float(r["samples_per_s"]) for r in timed), 2),
                step_time_s=round(statistics.median(float(r["step_time_s"]) for r in timed), 4),
                data_time_s=round(statistics.median(float(r["data_time_s"]) for r in timed), 4),
                peak_rss_mb=round(max(float(r["max_rss_mb"]) for r in rows), 1), wall_s=round(wall_s, 1),
                final_loss=round(float(rows[-1]["loss"]), 4))


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--video-frames", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4, help="clip frames after the reference")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--configs", nargs="+", default=["in-process", "ray-1", "ray-2"])
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)

    import torch

    from mimicmotion.tiny import save_tiny_model
    from mimicmotion.training.dataset import select_clips
    from mimicmotion.training.trainer import TrainConfig
    from tasks.train import TrainJob, fit_in_process, fit_with_ray

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = make_catalog(tmp / "data", args.videos, args.video_frames)
        base, checkpoint = save_tiny_model(tmp / "model", seed=0)
        clip_ids = select_clips(catalog, params={"min_frames": args.frames})
        config = TrainConfig(steps=args.steps, num_frames=args.frames, height=args.height, width=args.width,
                             lr=1e-4, warmup_steps=0, checkpoint_every=args.steps, seed=0)
        for label in args.configs:
            run = tmp / f"run-{label}"
            job = TrainJob(run_dir=str(run), catalog=str(catalog), clip_ids=clip_ids, base_model=str(base),
                           checkpoint=str(checkpoint))
            start = time.perf_counter()
            if label == "in-process":
                workers = 1
                fit_in_process(config, job, device="cpu")
            else:
                workers = int(label.split("-")[1])
                from tasks.ray_render import ensure_ray

                ensure_ray()  # a running cluster, as in production: its start-up is not timed
                start = time.perf_counter()
                fit_with_ray(config, job, workers=workers, use_gpu=False, torch_threads=1)
            row = summarise(run, label, workers, time.perf_counter() - start)
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpus = os.cpu_count()
    print(f"\n{platform.machine()}, {cpus} CPU cores; tiny model, {args.height}x{args.width}, 1+{args.frames} frames, "
          f"batch 1 per worker, {args.steps} steps, float32, 1 torch thread per worker\n")
    print("| configuration | workers | samples/s | step s | data s | peak RSS MB (rank 0) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['workers']} | {r['samples_per_s']} | {r['step_time_s']} | {r['data_time_s']} | "
              f"{r['peak_rss_mb']} | {r['wall_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
