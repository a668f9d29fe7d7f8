"""Time to draw one frame's confidence-aware pose image (release drawing, 2160-px canvas) on CPU.

    python benchmarks/draw_pose_cpu.py                    # demo size 192 x 128 and the release's 1024 x 576
    python benchmarks/draw_pose_cpu.py --sizes 192x128 --frames 96

Poses: a procedural dancer clip's ground-truth keypoints (mimicmotion.synthetic, seed 3), one person a frame.
Prints milliseconds a frame (mean over the clip, after one warm-up frame) per output size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    from mimicmotion.pose.draw import draw_pose
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="192x128,1024x576", help="output sizes, HEIGHTxWIDTH, comma-separated")
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args(argv)
    fps = 24.0
    app, motion = sample_clip(3, duration=args.frames / fps)
    clip = render_clip_detailed(app, motion, 3, width=128, height=192, num_frames=args.frames, fps=fps)
    frames = clip.poses.frames
    results = {}
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        draw_pose(frames[0], height, width)
        started = time.perf_counter()
        for frame in frames:
            draw_pose(frame, height, width)
        results[size] = (time.perf_counter() - started) / len(frames) * 1e3
        print(f"{height} x {width}: {results[size]:.2f} ms a frame ({len(frames)} frames)")
    return results


if __name__ == "__main__":
    main()
