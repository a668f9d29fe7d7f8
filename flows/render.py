"""Prefect flows `render` (one video) and `render_batch` (many (reference, driving) pairs).

Both sample locally (``actors=0``) or on ``actors`` resident Ray actors with exact per-step progressive
fusion (tasks/ray_render.py). Every step's latent is checkpointed under ``<out_dir>/.checkpoints/<name>``:
rerunning a killed flow with the same parameters resumes from the last completed step; the checkpoint is
deleted once the mp4 is written. Outputs land in ``out_dir``: <name>.mp4 (driving audio kept),
<name>_preview.mp4 (reference | pose | output), <name>_thumbs.png; a markdown table and the thumbnail
strips are published as Prefect artifacts.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from mimicmotion.render import RenderSettings
from tasks.ray_render import ModelSpec
from tasks.render import (RenderRequest, artifact_key, check_request_task, clear_checkpoint, load_pipeline_task,
                          prepare_inputs_task, publish_artifacts_task, sample_task, write_outputs_task)


def _settings(resolution, sample_stride, tile_size, tile_overlap, steps, guidance, noise_aug_strength,
              decode_chunk_size, seed, fps, max_frames) -> RenderSettings:
    return RenderSettings(resolution=resolution, sample_stride=sample_stride, tile_size=tile_size,
                          tile_overlap=tile_overlap, num_inference_steps=steps, min_guidance_scale=guidance,
                          max_guidance_scale=guidance, noise_aug_strength=noise_aug_strength,
                          decode_chunk_size=decode_chunk_size, seed=seed, fps=fps, max_frames=max_frames)


def _device(device: Optional[str]) -> str:
    from mimicmotion.devices import resolve_device

    return resolve_device(device)


def _executor(model: ModelSpec, actors: int, ray_address: Optional[str]):
    """Resident Ray actors for the whole flow run, or nothing for a local render."""
    if actors == 0:
        return nullcontext(None)
    from tasks.ray_render import RayTileExecutor, ensure_ray

    ensure_ray(address=ray_address)
    return RayTileExecutor(model, num_actors=actors)


def _render_requests(requests: list, model: ModelSpec, settings: RenderSettings, out_dir, actors, device,
                     dwpose_dir, catalog, ray_address, batch_key: str, pose_estimator: str = "auto") -> list:
    logger = get_run_logger()
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        from mimicmotion.errors import ConfigError

        raise ConfigError(f"render names must be unique in a batch (they name the output files): {names}")
    # Validate every pair before any model is loaded.
    for request in requests:
        check_request_task(request, settings, model, actors=actors, dwpose_dir=dwpose_dir, catalog=catalog,
                           pose_estimator=pose_estimator)
    device = _device(device)
    pipe = load_pipeline_task(model, device)
    outputs = []
    with _executor(model, actors, ray_address) as executor:
        for request in requests:
            inputs = prepare_inputs_task(request, settings, dwpose_dir=dwpose_dir, catalog=catalog,
                                         pose_estimator=pose_estimator)
            checkpoint_dir = Path(out_dir) / ".checkpoints" / request.name
            frames = sample_task(pipe, inputs, settings, executor=executor, checkpoint_dir=checkpoint_dir,
                                 device=device, model=model)
            result = write_outputs_task(request.name, out_dir, inputs, frames, settings)
            clear_checkpoint(checkpoint_dir)
            logger.info("wrote %s (%d frames, audio %s) and %s", result.video, result.num_frames,
                        "kept" if result.has_audio else "none", result.preview)
            outputs.append(result)
        if executor is not None and executor.stats:
            steps = executor.stats
            logger.info("Ray: %d steps, mean overhead %.3fs of %.3fs per step, %d actor restarts", len(steps),
                        sum(s.overhead_s for s in steps) / len(steps), sum(s.wall_s for s in steps) / len(steps),
                        executor.restarts)
    publish_artifacts_task(outputs, key=batch_key)
    return outputs


@flow(name="render", log_prints=True)
def render(
    reference: str,
    base_model: str,
    checkpoint: str,
    out_dir: str = "renders",
    name: str = "render",
    driving: Optional[str] = None,
    poses: Optional[str] = None,
    clip_id: Optional[str] = None,
    catalog: Optional[str] = None,
    ref_pose: Optional[str] = None,
    dwpose_dir: Optional[str] = None,
    pose_estimator: str = "auto",
    resolution: int = 576,
    sample_stride: int = 2,
    tile_size: int = 72,
    tile_overlap: int = 6,
    steps: int = 25,
    guidance: float = 2.0,
    noise_aug_strength: float = 0.0,
    decode_chunk_size: int = 8,
    seed: int = 42,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    actors: int = 0,
    device: Optional[str] = None,
    dtype: str = "float32",
    ray_address: Optional[str] = None,
) -> dict:
    """Render one video: reference + (driving video | pose file | catalog clip id) -> mp4 + preview.
    Defaults are the release's sampling parameters. Returns the output paths."""
    settings = _settings(resolution, sample_stride, tile_size, tile_overlap, steps, guidance, noise_aug_strength,
                         decode_chunk_size, seed, fps, max_frames)
    request = RenderRequest(reference=reference, name=name, driving=driving, poses=poses, clip_id=clip_id,
                            ref_pose=ref_pose)
    [result] = _render_requests([request], ModelSpec(base_model, checkpoint, dtype), settings, out_dir, actors,
                                device, dwpose_dir, catalog, ray_address, batch_key=artifact_key(name),
                                pose_estimator=pose_estimator)
    return {"video": str(result.video), "preview": str(result.preview), "thumbnails": str(result.thumbnails),
            "frames": result.num_frames, "fps": result.fps, "audio": result.has_audio}


@flow(name="render_batch", log_prints=True)
def render_batch(
    pairs: list[dict],
    base_model: str,
    checkpoint: str,
    out_dir: str = "renders",
    catalog: Optional[str] = None,
    dwpose_dir: Optional[str] = None,
    pose_estimator: str = "auto",
    resolution: int = 576,
    sample_stride: int = 2,
    tile_size: int = 72,
    tile_overlap: int = 6,
    steps: int = 25,
    guidance: float = 2.0,
    noise_aug_strength: float = 0.0,
    decode_chunk_size: int = 8,
    seed: int = 42,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    actors: int = 0,
    device: Optional[str] = None,
    dtype: str = "float32",
    ray_address: Optional[str] = None,
) -> list[dict]:
    """Render many pairs with one resident pipeline (driver) and one per actor. Each pair is a dict with
    ``reference``, ``name`` and one of ``driving`` / ``poses`` / ``clip_id`` (optionally ``ref_pose``)."""
    from mimicmotion.errors import ConfigError

    settings = _settings(resolution, sample_stride, tile_size, tile_overlap, steps, guidance, noise_aug_strength,
                         decode_chunk_size, seed, fps, max_frames)
    if not pairs:
        raise ConfigError("render_batch needs at least one pair")
    fields = set(RenderRequest.__dataclass_fields__)
    requests = []
    for k, pair in enumerate(pairs):
        unknown = set(pair) - fields
        if unknown or "reference" not in pair:
            raise ConfigError(f"pair {k} must have 'reference' and only the keys {sorted(fields)}; got {sorted(pair)}")
        requests.append(RenderRequest(**{"name": f"render_{k:03d}", **pair}))
    results = _render_requests(requests, ModelSpec(base_model, checkpoint, dtype), settings, out_dir, actors,
                               device, dwpose_dir, catalog, ray_address, batch_key="render-batch",
                               pose_estimator=pose_estimator)
    return [{"name": r.name, "video": str(r.video), "preview": str(r.preview), "thumbnails": str(r.thumbnails),
             "frames": r.num_frames} for r in results]
