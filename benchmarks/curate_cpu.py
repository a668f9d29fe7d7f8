"""Curation throughput (video-seconds per wall-second) of the `curate` flow on CPU, in-process vs Ray actors.

    python benchmarks/curate_cpu.py                      # tiny ONNX models, generated dancer videos
    python benchmarks/curate_cpu.py --videos 8 --seconds 5 --size 1280x720 --json out.json
    python benchmarks/curate_cpu.py --dwpose-dir ~/models/dwpose --dwpose-fps-only   # real DWPose frames/s

Videos: the procedural dancer (mimicmotion.sample) with a red marker on its nose, so the tiny pose model
(every keypoint on the reddest pixel) finds a person and every stage runs: hashing, probing, decoding the
sampled frames, detection, subject/crop/clip planning, Parquet commits, the DuckDB index and the contact
sheet. With the tiny models the cost is mostly decoding and the per-frame pre/post-processing, which is
what this measures; with the real models (``--dwpose-dir``) detection dominates.

Configurations: in-process with 1 and 2 videos in flight, and 2 Ray actors (2 videos in flight). Ray is
started before the timed flow (as a running cluster would be); actor start-up is inside the timing. The
Prefect server start-up is not. ``--dwpose-fps-only`` times DWPoseEstimator.estimate_batch alone
(frames/s, the providers it used: CUDA when onnxruntime-gpu and a GPU are present).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_dwpose: builders of the tiny ONNX models

import numpy as np  # noqa: E402


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int, fps: float = 24.0) -> list:
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n = int(round(seconds * fps))
    for k in range(count):
        poses = dance_poses(n, fps, width, height, seed=k)
        path = folder / f"dance{k:02d}.mp4"

        def frames():
            for p in poses:
                img = draw_figure(p, height, width, seed=k)
                x, y = int(p[0, 0, 0] * width), int(p[0, 0, 1] * height)
                r = max(2, height // 60)
                img[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = (255, 0, 0)
                yield img

        write_video(path, frames(), fps=fps)
        paths.append(path)
    return paths


def tiny_models(folder: Path) -> Path:
    from tiny_dwpose import empty_head, write_model_dir

    return write_model_dir(folder, empty_head())


def run_flow(videos_dir: Path, catalog: Path, dwpose_dir, **kwargs) -> dict:
    from flows.curate import curate

    return curate(inputs=[str(videos_dir)], catalog=str(catalog), dwpose_dir=str(dwpose_dir), **kwargs)


def dwpose_fps(dwpose_dir, frames: int, width: int, height: int, batch: int) -> dict:
    from mimicmotion.pose.dwpose import DWPoseEstimator

    est = DWPoseEstimator(dwpose_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
    est.estimate_batch(images[:2])  # warm-up (CUDA kernels, allocations)
    done, start = 0, time.perf_counter()
    while done < frames:
        est.estimate_batch(images)
        done += batch
    wall = time.perf_counter() - start
    return {"frames": done, "seconds": wall, "frames_per_s": done / wall, "providers": est.providers,
            "size": f"{width}x{height}", "batch": batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    ap.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the videos")
    ap.add_argument("--sample-stride", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--dwpose-dir", default=None, help="real DWPose models (default: tiny test models)")
    ap.add_argument("--dwpose-fps-only", action="store_true", help="only time DWPose frames/s")
    ap.add_argument("--fps-frames", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    models = Path(args.dwpose_dir) if args.dwpose_dir else tiny_models(work / "dwpose")
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "models": "real DWPose" if args.dwpose_dir else "tiny test models", "size": args.size}
    results["dwpose"] = dwpose_fps(models, args.fps_frames, width, height, batch=16)
    print(f"DWPose estimate_batch: {results['dwpose']['frames_per_s']:.1f} frames/s at {args.size} "
          f"({results['dwpose']['providers'][0]}, {results['models']})")
    if not args.dwpose_fps_only:
        videos = work / "videos"
        make_videos(videos, args.videos, args.seconds, width, height)
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        common = dict(sample_stride=args.sample_stride, contact_sheet_tiles=12)
        configs = [("in-process, 1 video in flight", dict(workers=1)),
                   ("in-process, 2 videos in flight", dict(workers=2)),
                   (f"Ray, {args.actors} actors", dict(use_ray=True, actors=args.actors))]
        rows = []
        for k, (label, options) in enumerate(configs):
            summary = run_flow(videos, work / f"catalog{k}", models, **common, **options)
            assert summary["ok"] == args.videos, summary
            rows.append({"config": label, "videos": summary["videos"], "clips": summary["clips"],
                         "video_seconds": summary["video_seconds"], "wall_s": summary["wall_s"],
                         "throughput": summary["throughput"]})
        ray.shutdown()
        results["curate"] = rows
        print(f"\n{args.videos} videos x {args.seconds:g} s at {args.size}, sample stride {args.sample_stride} "
              f"({results['machine']}, {results['models']})\n")
        print("| configuration | videos | clips | video s | wall s | video s / wall s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['config']} | {r['videos']} | {r['clips']} | {r['video_seconds']:.1f} | {r['wall_s']:.2f} | "
                  f"{r['throughput']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
