"""Prefect flow `evaluate`: render catalog clips from their first frame and poses, score them against the
clips (SSIM, PSNR; LPIPS, FID-VID, FVD when their weights are given), next to the baselines.

    from flows.evaluate import evaluate
    evaluate(catalog="my-catalog", base_model="svd-xt-1-1", checkpoint="MimicMotion_1-1.pth",
             query="training_clips", params={"min_frames": 32}, out_dir="eval")

The steps are ``mimicmotion.evaluation``'s (see there for what is scored and how); outputs in ``out_dir``:
clips.parquet, summary.parquet, summary.md (also published as a markdown artifact). A rerun with the same
inputs reuses every finished (clip, method).
"""
from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger

from mimicmotion.evaluation import BASELINES, MetricWeights, default_device, result_dict
from mimicmotion.render import RenderSettings
from tasks.evaluate import (ARTIFACT_KEY, evaluate_clip_task, load_model_task, load_networks_task, plan_task,
                            publish_summary_task, summarize_task, write_results_task)


@flow(name="evaluate", log_prints=True)
def evaluate(
    catalog: Optional[str] = None,
    base_model: Optional[str] = None,
    checkpoint: Optional[str] = None,
    out_dir: str = "evaluation",
    clip_ids: Optional[list[str]] = None,
    query: Optional[str] = None,
    params: Optional[dict] = None,
    sql: Optional[str] = None,
    baselines: list[str] = list(BASELINES),
    include_model: bool = True,
    resolution: int = 576,
    tile_size: int = 72,
    tile_overlap: int = 6,
    steps: int = 25,
    guidance: float = 2.0,
    noise_aug_strength: float = 0.0,
    decode_chunk_size: int = 8,
    seed: int = 42,
    max_frames: Optional[int] = None,
    device: Optional[str] = None,
    dtype: str = "float32",
    lpips_weights: Optional[str] = None,
    lpips_backbone: Optional[str] = None,
    lpips_net: str = "alex",
    fvd_weights: Optional[str] = None,
    fid_vid_weights: Optional[str] = None,
    fvd_window: int = 16,
    fid_vid_pooling: str = "mean",
    fvd_input_size: int = 224,
    fid_input_size: int = 299,
    resume: bool = True,
    save_videos: bool = False,
    artifact_key: str = ARTIFACT_KEY,
) -> dict:
    """Evaluate the model (and ``baselines``: copy_reference, blank_pose) on the clips chosen by
    ``clip_ids``, a named catalog ``query`` or ``sql`` (with ``params``). Defaults are the release's
    sampling parameters. Returns the per-clip rows, the per-method summary, the markdown and file paths."""
    logger = get_run_logger()
    settings = RenderSettings(resolution=resolution, tile_size=tile_size, tile_overlap=tile_overlap,
                              num_inference_steps=steps, min_guidance_scale=guidance, max_guidance_scale=guidance,
                              noise_aug_strength=noise_aug_strength, decode_chunk_size=decode_chunk_size, seed=seed,
                              max_frames=max_frames)
    weights = MetricWeights(lpips=lpips_weights, lpips_backbone=lpips_backbone, lpips_net=lpips_net, fvd=fvd_weights,
                            fid_vid=fid_vid_weights, fvd_window=fvd_window, fid_vid_pooling=fid_vid_pooling,
                            fvd_input_size=fvd_input_size, fid_input_size=fid_input_size)
    plan = plan_task(catalog, out_dir, base_model=base_model, checkpoint=checkpoint, clip_ids=clip_ids, query=query,
                     params=params, sql=sql, baselines=baselines, include_model=include_model, settings=settings,
                     weights=weights, dtype=dtype, save_videos=save_videos)
    logger.info("evaluating %d clip(s) with %s", len(plan.clip_ids), ", ".join(plan.methods))
    device = default_device(device)
    nets = load_networks_task(weights, device)
    pipe = load_model_task(plan, device, resume=resume)
    results = [evaluate_clip_task(plan, clip_id, pipe, nets, device=device, resume=resume)
               for clip_id in plan.clip_ids]
    summary = summarize_task(plan, results)
    written = write_results_task(plan, results, summary)
    publish_summary_task(written["markdown"], key=artifact_key)
    logger.info("wrote %s", written["paths"]["summary_path"])
    return result_dict(plan, results, summary, written)
