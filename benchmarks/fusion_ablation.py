"""Ablation: position-aware progressive latent fusion vs rendering segments independently and blending.

    python benchmarks/fusion_ablation.py --catalog CAT --base-model M/base --checkpoint M/model.safetensors \
        --split test --clips 8 --steps 10 --json fusion.json

For each test clip (the reference is its first frame, the driving poses the rest), the same model, seed and
tile plan render the clip twice:

- progressive: the pipeline as released: every tile is denoised jointly and the tiles' model outputs are
  fused with the triangular position weights at every step;
- independent: each tile is rendered as a video of its own (same reference, same seed), and the finished
  segments are blended once in pixel space with the same weights.

Seams show as jumps in the frame-to-frame difference where the set of covering tiles changes. Reported per
method: seam ratio (mean frame difference at those transitions / elsewhere; the ground truth's own ratio is
the motion baseline), PSNR and SSIM against the ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def render_progressive(pipe, clip, settings):
    from mimicmotion.evaluation import MODEL_METHOD, predict

    return predict(MODEL_METHOD, clip, pipe, settings)


def render_independent(pipe, clip, settings):
    """Each tile of the plan as its own pipeline call, then one pixel-space blend. Returns frames 1.. of the
    clip, like ``predict``."""
    from mimicmotion.evaluation import pose_images
    from mimicmotion.render import generate
    from mimicmotion.tiling import blend_segments, tile_plan

    images = pose_images(clip)  # reference pose, then the pose of every clip frame (frame 0 included)
    tiles = tile_plan(len(images), settings.tile_size, settings.tile_overlap)
    reference = clip.frames[0].astype(np.float32)
    segments = []
    for idx in tiles:
        frames = generate(pipe, clip.frames[0], images[idx], settings)  # frames for idx[1:]
        segments.append(np.concatenate([reference[None], frames.astype(np.float32)]))
    blended = blend_segments(segments, tiles, len(images))
    # pipeline frame k+1 renders clip frame k; clip frame 0 is the reference's own slot
    return np.clip(np.rint(blended[2:]), 0, 255).astype(np.uint8), tiles


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tile-size", type=int, default=None, help="default: the demo model's")
    ap.add_argument("--tile-overlap", type=int, default=None, help="default: the demo model's")
    ap.add_argument("--resolution", type=int, default=None, help="default: the demo model's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from catalog import Catalog
    from mimicmotion import demo_model as dm
    from mimicmotion.evaluation import clip_rows, load_eval_clip
    from mimicmotion.loading import load_pipeline
    from mimicmotion.metrics import psnr, seam_ratio, ssim
    from mimicmotion.render import RenderSettings
    from mimicmotion.tiling import segment_boundaries

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RenderSettings(resolution=args.resolution or dm.DEMO_RESOLUTION,
                              tile_size=args.tile_size or dm.DEMO_TILE_SIZE,
                              tile_overlap=args.tile_overlap if args.tile_overlap is not None else dm.DEMO_TILE_OVERLAP,
                              num_inference_steps=args.steps, seed=args.seed).validate()
    sql, params = dm.split_sql(args.split, first_clip_only=True, limit=args.clips)
    ids = [r["clip_id"] for r in Catalog(args.catalog).query(sql, params).to_pylist()]
    rows = clip_rows(args.catalog, ids)
    pipe = load_pipeline(args.base_model, args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    results = []
    for clip_id in ids:
        clip = load_eval_clip(args.catalog, clip_id, rows[clip_id], settings.resolution)
        truth = clip.frames[1:]
        start = time.perf_counter()
        progressive = render_progressive(pipe, clip, settings)
        independent, tiles = render_independent(pipe, clip, settings)
        # pipeline frame k renders clip frame k-1, which is output index k-2 (outputs start at clip frame 1)
        seams = [k - 2 for k in segment_boundaries(tiles, len(clip.frames) + 1) if k >= 3]
        row = dict(clip_id=clip_id, frames=len(truth), tiles=len(tiles), seam_transitions=seams,
                   seconds=time.perf_counter() - start, truth_seam_ratio=seam_ratio(truth, seams))
        for name, video in (("progressive", progressive), ("independent", independent)):
            row[f"{name}_seam_ratio"] = seam_ratio(video, seams)
            row[f"{name}_psnr"] = psnr(video, truth)
            row[f"{name}_ssim"] = ssim(video, truth)
        results.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in results[0] if k.endswith(("ratio", "psnr", "ssim"))]
    summary = {k: float(np.mean([r[k] for r in results])) for k in keys}
    summary.update(clips=len(results), steps=args.steps, tile_size=settings.tile_size,
                   tile_overlap=settings.tile_overlap)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(summary=summary, clips=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
