"""Accuracy and speed of the bundled pose estimator (MediaPipe Holistic models on LiteRT), CPU.

    python benchmarks/pose_estimator_accuracy.py                         # generated dancers + ../shared dance.mp4
    python benchmarks/pose_estimator_accuracy.py --synth 24 --json out.json --sheet docs/mediapipe_pose_dance.png

Generated dancers (``mimicmotion.synthetic``, the procedural figures the demo model trains on; they look
unlike real people, so misses are expected) have exact ground truth: per frame, whether a person is found,
and PCK@0.05 / PCK@0.1 of the body (18 points), hands (42) and face (68): the share of ground-truth points
(score > 0.3, inside the frame) predicted within alpha x the long side of the true body's box. A frame where
nobody is found counts every point as missed; a part the estimator did not find counts its points as missed.

The real sample (``../shared/assets/dance.mp4``, 1080x1920, 24 fps; sampled every 2nd frame as the release)
has no ground truth: the script reports per-frame detection rates of the body, each hand and the face, and
frames/s of ``estimate_batch`` in this process and on 2 Ray actors (1 CPU and 1 LiteRT thread each; actor
start-up excluded, frames already decoded).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from mimicmotion.pose.layout import BODY, FACE, LEFT_HAND, RIGHT_HAND  # noqa: E402

PARTS = {"body": [BODY], "hands": [LEFT_HAND, RIGHT_HAND], "face": [FACE]}
DANCE = REPO.parent / "shared" / "assets" / "dance.mp4"


def _idx(slices) -> np.ndarray:
    return np.concatenate([np.arange(s.start, s.stop) for s in slices])


def pck(pred, truth, width: int, height: int, alphas=(0.05, 0.1)) -> dict:
    """Per part: ground-truth points counted and the share within each alpha (see the module docstring)."""
    out = {}
    gt_xy = truth[:, :2] * [width, height]
    visible = (truth[:, 2] > 0.3) & np.isfinite(gt_xy).all(1)
    visible &= (gt_xy[:, 0] >= 0) & (gt_xy[:, 0] < width) & (gt_xy[:, 1] >= 0) & (gt_xy[:, 1] < height)
    body = gt_xy[BODY][visible[BODY]]
    size = float(max(np.ptp(body[:, 0]), np.ptp(body[:, 1]))) if len(body) >= 2 else 0.0
    for part, slices in PARTS.items():
        idx = _idx(slices)
        idx = idx[visible[idx]]
        res = {"points": int(len(idx))}
        if pred is None or size == 0:
            dist = np.full(len(idx), np.inf)
        else:
            p_xy = pred[idx, :2] * [width, height]
            dist = np.where(pred[idx, 2] > 0, np.linalg.norm(p_xy - gt_xy[idx], axis=1), np.inf)
            dist = np.nan_to_num(dist, nan=np.inf)
        for a in alphas:
            res[f"hits@{a}"] = int((dist <= a * size).sum())
        out[part] = res
    return out


def synth_accuracy(estimator, videos: int, frames: int, width: int, height: int) -> dict:
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip

    totals = {part: {"points": 0, "hits@0.05": 0, "hits@0.1": 0} for part in PARTS}
    found = total = 0
    for k in range(videos):
        appearance, motion = sample_clip(k)
        clip = render_clip_detailed(appearance, motion, k, width=width, height=height, num_frames=frames, fps=8)
        for frame, truth in zip(clip.frames, clip.clean):
            poses = estimator(frame)
            total += 1
            found += int(len(poses) > 0)
            for part, res in pck(poses[0] if len(poses) else None, truth, width, height).items():
                for key, value in res.items():
                    totals[part][key] += value
    result = {"videos": videos, "frames": total, "size": f"{width}x{height}", "detection_rate": found / total}
    for part, t in totals.items():
        result[part] = {"points": t["points"],
                        "pck@0.05": t["hits@0.05"] / max(1, t["points"]),
                        "pck@0.1": t["hits@0.1"] / max(1, t["points"])}
    return result


def decode_dance(path: Path, sample_stride: int = 2) -> tuple[list, list]:
    from mimicmotion.video import iter_frames, probe, sample_indices

    info = probe(path)
    indices = sample_indices(info.num_frames, info.fps, sample_stride)
    frames = [f for batch in iter_frames(path, indices, batch_size=16) for f in batch]
    return frames, list(indices)


def dance_report(estimator, frames: list, ray_actors: int) -> tuple[dict, list]:
    start = time.perf_counter()
    poses = estimator.estimate_batch(frames)
    in_process_s = time.perf_counter() - start
    people = np.array([len(p) for p in poses])
    first = [p[0] if len(p) else None for p in poses]

    def rate(part) -> float:
        return float(np.mean([p is not None and (p[part, 2] > 0).all() for p in first]))

    def mean_score(part) -> float:
        vals = [p[part, 2].mean() for p in first if p is not None and (p[part, 2] > 0).any()]
        return float(np.mean(vals)) if vals else 0.0

    report = {
        "frames": len(frames), "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "person_rate": float((people > 0).mean()),
        "body_rate": float(np.mean([p is not None and (p[BODY, 2] > 0.3).sum() >= 14 for p in first])),
        "left_hand_rate": rate(LEFT_HAND), "right_hand_rate": rate(RIGHT_HAND), "face_rate": rate(FACE),
        "both_hands_rate": float(np.mean([p is not None and (p[LEFT_HAND, 2] > 0).all() and
                                          (p[RIGHT_HAND, 2] > 0).all() for p in first])),
        "mean_score": {"body": mean_score(BODY), "left_hand": mean_score(LEFT_HAND),
                       "right_hand": mean_score(RIGHT_HAND), "face": mean_score(FACE)},
        "fps_in_process": len(frames) / in_process_s,
        "threads_in_process": estimator.num_threads,
    }
    if ray_actors:
        import ray

        from tasks.ray_pose import RayPoseEstimator, ensure_ray

        ensure_ray(num_cpus=ray_actors)
        pool = RayPoseEstimator(None, num_actors=ray_actors, estimator="mediapipe", cpus_per_actor=1)
        try:
            batches = [frames[i:i + 8] for i in range(0, len(frames), 8)]
            start = time.perf_counter()
            remote = [p for batch in pool.estimate_batches(batches) for p in batch]
            ray_s = time.perf_counter() - start
        finally:
            pool.close()
            ray.shutdown()
        report["fps_ray_actors"] = len(frames) / ray_s
        report["ray_actors"] = ray_actors
        report["ray_matches_in_process"] = bool(all(a.shape == b.shape and np.allclose(a, b, equal_nan=True, atol=1e-4)
                                                     for a, b in zip(poses, remote)))
    return report, poses


def contact_sheet(frames: list, poses: list, indices: list, out: Path, tiles: int = 8, tile_h: int = 400) -> None:
    """``tiles`` evenly spaced frames, each the dimmed frame under its confidence-aware pose image."""
    import cv2

    from mimicmotion.pose.draw import draw_pose

    h, w = frames[0].shape[:2]
    tile_w = round(w * tile_h / h / 2) * 2
    picks = np.linspace(0, len(frames) - 1, tiles).round().astype(int)
    row = []
    for i in picks:
        small = cv2.resize(frames[i], (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        pose = draw_pose(poses[i], tile_h, tile_w)
        tile = np.where(pose.max(-1, keepdims=True) > 0, pose, (small * 0.55).astype(np.uint8))
        cv2.putText(tile, f"frame {indices[i]}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        row.append(tile)
    half = (len(row) + 1) // 2
    second = row[half:] + [np.zeros_like(row[0])] * (2 * half - len(row))
    rows = [np.concatenate(row[:half], 1), np.concatenate(second, 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synth", type=int, default=12, help="generated dancer videos (default 12)")
    ap.add_argument("--frames", type=int, default=16, help="frames per generated video (default 16)")
    ap.add_argument("--size", default="288x512", help="generated frame size WxH (default 288x512)")
    ap.add_argument("--dance", default=str(DANCE), help="real video (default ../shared/assets/dance.mp4)")
    ap.add_argument("--ray-actors", type=int, default=2, help="Ray actors for the frames/s figure (0: skip)")
    ap.add_argument("--sheet", default=None, help="write a contact sheet of the real video's poses here (PNG)")
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)

    from mimicmotion.pose.holistic import HolisticEstimator

    estimator = HolisticEstimator()
    width, height = (int(v) for v in args.size.lower().split("x"))
    results = {"machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
               "estimator": estimator.version}
    if args.synth:
        results["synthetic"] = synth_accuracy(estimator, args.synth, args.frames, width, height)
        print(json.dumps(results["synthetic"], indent=1))
    dance = Path(args.dance)
    if dance.is_file():
        frames, indices = decode_dance(dance)
        results["dance"], poses = dance_report(estimator, frames, args.ray_actors)
        print(json.dumps(results["dance"], indent=1))
        if args.sheet:
            contact_sheet(frames, poses, indices, Path(args.sheet))
            print(f"wrote {args.sheet}")
    else:
        print(f"{dance} not found: real-video figures skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
