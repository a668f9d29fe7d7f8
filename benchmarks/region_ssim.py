"""Where SSIM is lost: the background the reference already shows vs what moved.

    python benchmarks/region_ssim.py --catalog CAT --base-model M/base --checkpoint M/model.safetensors \
        --clips 16 --frames 24 --steps 10 --json regions.json

For the first clip of each of ``--clips`` test videos (as the evaluation picks and renders them: reference =
the clip's first frame, same seed and tile plan) the pixels of every frame are split by
``metrics.changed_mask`` into *changed* (differs from the reference by more than ``--threshold`` grey levels
in some channel: the figure, its old and new place, its shadow) and *static* (the rest), and each method's
SSIM map is averaged over both (``metrics.region_ssim``); each method's whole-frame PSNR is reported beside
them. Methods: the model; the frames through the VAE (the ceiling); copy the reference; the reference through
the VAE, repeated (what a model that copies the reference's latent exactly would show). Scores are means over
clips.

A second table splits the static pixels further (``metrics.region_labels``): *far flat* and *far textured*
(more than 6 px from anything that changed; textured where the reference's local grey std is 2+), and *near*
(static, but the SSIM window still sees what moved). Its scores are pooled over all pixels of all clips
(``metrics.labelled_ssim_sums``), so share x score adds up to the whole-frame SSIM, and the last row gives each
region's exact part of the model's SSIM difference to copying the reference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("mimicmotion", "vae_reconstruction", "copy_reference", "reference_through_vae")


def clip_scores(pipe, clip, settings, threshold: float) -> dict:
    """{method: (all, static, changed) SSIM and whole-frame PSNR} and the changed share of one clip's frames 1.."""
    from mimicmotion.evaluation import MODEL_METHOD, predict, vae_roundtrip
    from mimicmotion.metrics import REGION_NAMES, labelled_ssim_sums, psnr, region_labels, region_ssim, ssim

    truth, reference = clip.frames[1:], clip.frames[0]
    labels = region_labels(truth, reference, threshold)
    mask = labels == REGION_NAMES.index("changed")  # metrics.changed_mask
    predictions = {
        "mimicmotion": predict(MODEL_METHOD, clip, pipe, settings),
        "vae_reconstruction": predict("vae_reconstruction", clip, pipe, settings),
        "copy_reference": predict("copy_reference", clip, pipe, settings),
        "reference_through_vae": np.repeat(vae_roundtrip(pipe, reference[None], settings.decode_chunk_size),
                                           len(truth), axis=0),
    }
    scores, regions = {}, {}
    for method, frames in predictions.items():
        changed, static = region_ssim(frames, truth, mask)
        scores[method] = (ssim(frames, truth), static, changed, psnr(frames, truth))
        regions[method] = labelled_ssim_sums(frames, truth, labels)
    return dict(scores=scores, changed_share=float(mask.mean()), regions=regions)


def region_table(per_clip) -> dict:
    """Pixel-pooled SSIM per region (``REGION_NAMES``) for each method, the regions' shares of the pixels, and
    each region's part of the model's SSIM difference to copying the reference (these parts sum to it)."""
    from mimicmotion.metrics import REGION_NAMES

    sums = {m: sum(c["regions"][m][0] for c in per_clip) for m in METHODS}
    counts = sum(c["regions"][METHODS[0]][1] for c in per_clip)
    total = counts.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        table = {m: dict(zip(REGION_NAMES, (sums[m] / counts).tolist())) for m in METHODS}
    table["share"] = dict(zip(REGION_NAMES, (counts / total).tolist()))
    table["model_minus_copy"] = dict(zip(REGION_NAMES, ((sums["mimicmotion"] - sums["copy_reference"]) / total)
                                         .tolist()))
    return table


def main(argv=None) -> int:
    import torch

    from mimicmotion import demo_model as dm
    from mimicmotion.evaluation import clip_rows, load_eval_clip, select_clips
    from mimicmotion.loading import load_pipeline
    from mimicmotion.render import RenderSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--clips", type=int, default=16, help="first clip of this many videos of the split")
    ap.add_argument("--frames", type=int, default=24, help="frames per clip, the reference included")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=12.0, help="grey levels: a pixel this far from the "
                                                                  "reference in some channel has changed")
    ap.add_argument("--json", help="write the table here as JSON too")
    args = ap.parse_args(argv)

    sql, params = dm.split_sql(args.split, first_clip_only=True, limit=args.clips)
    clip_ids = select_clips(args.catalog, sql=sql, params=params)
    rows = clip_rows(args.catalog, clip_ids)
    pipe = load_pipeline(args.base_model, args.checkpoint, dtype=torch.float32, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    settings = RenderSettings(resolution=dm.DEMO_RESOLUTION, tile_size=dm.DEMO_TILE_SIZE,
                              tile_overlap=dm.DEMO_TILE_OVERLAP, num_inference_steps=args.steps,
                              min_guidance_scale=args.guidance, max_guidance_scale=args.guidance, seed=args.seed,
                              max_frames=args.frames)
    start = time.perf_counter()
    per_clip = []
    for clip_id in clip_ids:
        clip = load_eval_clip(args.catalog, clip_id, rows[clip_id], dm.DEMO_RESOLUTION, args.frames)
        per_clip.append(clip_scores(pipe, clip, settings, args.threshold))
    table = {m: dict(zip(("ssim", "static", "changed", "psnr"),
                         np.nanmean([c["scores"][m] for c in per_clip], axis=0).tolist())) for m in METHODS}
    regions = region_table(per_clip)
    result = dict(clips=len(per_clip), changed_share=float(np.mean([c["changed_share"] for c in per_clip])),
                  threshold=args.threshold, seconds=round(time.perf_counter() - start, 1), methods=table,
                  regions=regions)
    print(f"{len(per_clip)} clips, changed pixels {result['changed_share']:.3f} of all, {result['seconds']} s")
    print("| method | SSIM | static | changed | PSNR dB |\n|---|---|---|---|---|")
    for method, row in table.items():
        print(f"| {method} | {row['ssim']:.4f} | {row['static']:.4f} | {row['changed']:.4f} | {row['psnr']:.2f} |")
    names = list(regions["share"])
    print("\n| pixel-pooled | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for method, row in regions.items():
        print(f"| {method} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
