"""Render steps as plain functions plus their Prefect task wrappers (used by flows/render.py).

The steps: check the request up front, prepare inputs (reference crop, driving poses from a pose file, the
catalog or DWPose, alignment, pose images), sample (locally or on Ray actors, with a latent checkpoint
after every step so a killed run resumes), decode, write the mp4 with the driving audio plus a
side-by-side preview and a thumbnail strip, and publish Prefect artifacts.

Sampling here is ``mimicmotion.render.generate`` split into its pieces: with the same inputs and seed it
gives the same frames (tested).
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.render import RenderInputs, RenderSettings
from tasks.ray_render import ModelSpec


@dataclass
class RenderRequest:
    """One (reference, driving) pair. Exactly one driving source: ``poses`` (Parquet from `mimicmotion
    pose`), ``clip_id`` (poses from the catalog, no re-detection) or ``driving`` (video, DWPose)."""

    reference: str
    name: str = "render"
    driving: Optional[str] = None
    poses: Optional[str] = None
    clip_id: Optional[str] = None
    ref_pose: Optional[str] = None  # pose file of the reference; otherwise DWPose detects it
    audio_from: Optional[str] = None  # default: the driving video (or the pose file's source video)


@dataclass
class RenderOutputs:
    name: str
    video: Path
    preview: Path
    thumbnails: Path
    num_frames: int
    fps: float
    has_audio: bool


def _need_file(path, what: str, fix: str) -> None:
    if path is None or not Path(path).is_file():
        raise ConfigError(f"{what} not found: {path} ({fix})")


def check_request(request: RenderRequest, settings: RenderSettings, model: ModelSpec, *, actors: int = 0,
                  dwpose_dir=None, catalog=None, pose_estimator: str = "auto") -> None:
    """Every check that needs no model: raise before any work is done."""
    settings.validate()
    if actors < 0:
        raise ConfigError(f"actors must be >= 0 (0 = render in this process), got {actors}")
    if not request.name or any(c in request.name for c in "/\\") or request.name.startswith("."):
        raise ConfigError(f"render name {request.name!r} must be a plain file stem (no slashes, no leading dot)")
    sources = [s for s in ("driving", "poses", "clip_id") if getattr(request, s)]
    if len(sources) != 1:
        raise ConfigError(f"give exactly one driving source (driving video, poses file or catalog clip id) for "
                          f"{request.name!r}; got {', '.join(sources) or 'none'}")
    _need_file(request.reference, "reference image", "pass an existing image file")
    if request.poses:
        _need_file(request.poses, "driving pose file", "make one with `mimicmotion pose VIDEO --out FILE`")
    if request.driving:
        _need_file(request.driving, "driving video", "pass an existing video file")
    if request.ref_pose:
        _need_file(request.ref_pose, "reference pose file", "make one with `mimicmotion pose REF --out FILE`")
    if request.clip_id:
        catalog_clip_poses(request.clip_id, catalog)  # raises for an unknown clip id
    if request.driving or not request.ref_pose:  # poses will be detected: the chosen estimator must load
        from mimicmotion.pose.estimators import choose_pose_estimator, dwpose_files_present

        choice = choose_pose_estimator(pose_estimator, dwpose_dir)
        present, folder = dwpose_files_present(dwpose_dir) if choice.name == "dwpose" else (True, "")
        if not present:
            raise ConfigError(f"{request.name!r} detects poses with DWPose ({choice.reason}) but its ONNX files are "
                              f"not in {folder}: pass dwpose_dir with both files, or "
                              "pose_estimator='mediapipe' (bundled), or give poses/clip_id and ref_pose")
    if not Path(model.base_model).is_dir():
        raise ModelFileError(f"base model folder not found: {model.base_model} (the SVD img2vid-xt folder)")
    _need_file(model.checkpoint, "MimicMotion checkpoint", "pass the .pth or .safetensors file")


def catalog_clip_poses(clip_id: str, catalog=None):
    """The driving poses of a catalog clip (already detected; no re-detection)."""
    try:
        from catalog import clip_poses
    except ImportError as exc:
        raise ConfigError("render by clip id needs the catalog package's clip_poses(clip_id, catalog) function, "
                          "which this installation lacks; pass a poses file instead") from exc
    try:
        return clip_poses(clip_id, catalog)
    except KeyError as exc:
        raise ConfigError(f"clip id {clip_id!r} is not in the catalog {catalog or '(default)'}: list the clips "
                          "with the catalog's query tools") from exc


def prepare_inputs(request: RenderRequest, settings: RenderSettings, *, dwpose_dir=None, catalog=None,
                   progress: bool = False, pose_estimator: str = "auto") -> RenderInputs:
    from mimicmotion.pose.io import load_poses
    from mimicmotion.render import prepare_render_inputs

    estimator = None
    if request.driving or not request.ref_pose:
        from mimicmotion.pose.estimators import make_pose_estimator

        estimator = make_pose_estimator(pose_estimator, dwpose_dir)
    driving_poses = None
    if request.poses:
        driving_poses = load_poses(request.poses)
    elif request.clip_id:
        driving_poses = catalog_clip_poses(request.clip_id, catalog)
    return prepare_render_inputs(
        request.reference, driving_poses=driving_poses, driving_video=request.driving, estimator=estimator,
        ref_pose=load_poses(request.ref_pose) if request.ref_pose else None, settings=settings,
        audio_from=request.audio_from, progress=progress)


def sample_frames(pipe, inputs: RenderInputs, settings: RenderSettings, *, executor=None, checkpoint_dir=None,
                  device=None, model: Optional[ModelSpec] = None) -> np.ndarray:
    """``mimicmotion.render.generate`` with any tile executor and a latent checkpoint after each step:
    uint8 (F, H, W, 3) without the reference frame. ``executor`` (a RayTileExecutor) also decodes."""
    import torch
    from PIL import Image

    from mimicmotion.checkpointing import denoise, render_fingerprint
    from mimicmotion.pipeline import TileDenoiser, frames_to_uint8
    from mimicmotion.pose.draw import pose_images_to_tensor
    from mimicmotion.render import release_dtype, release_roundtrip

    gen_device = device if device is not None else pipe._execution_device
    generator = torch.Generator(device=gen_device).manual_seed(settings.seed)
    dtype = release_dtype(pipe)
    h, w = inputs.pose_images.shape[1:3]
    state = pipe.prepare(
        Image.fromarray(release_roundtrip(inputs.reference, dtype)),
        pose_images_to_tensor(inputs.pose_images, dtype=dtype), height=h, width=w,
        num_frames=len(inputs.pose_images), tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
        num_inference_steps=settings.num_inference_steps, min_guidance_scale=settings.min_guidance_scale,
        max_guidance_scale=settings.max_guidance_scale, noise_aug_strength=settings.noise_aug_strength,
        generator=generator, device=device, decode_chunk_size=settings.decode_chunk_size)
    fingerprint = render_fingerprint(reference=inputs.reference, pose_images=inputs.pose_images,
                                     settings=asdict(settings), model=asdict(model) if model else None,
                                     dtype=str(pipe.unet.dtype))
    latents = denoise(pipe, state, executor or TileDenoiser(pipe.unet), generator=generator,
                      checkpoint_dir=checkpoint_dir, fingerprint=fingerprint)
    if executor is not None:
        frames = executor.decode(latents, settings.decode_chunk_size)
    else:
        frames = pipe.decode(latents, settings.decode_chunk_size)
    return frames_to_uint8(frames[0][1:])


def write_outputs(name: str, out_dir, inputs: RenderInputs, frames: np.ndarray, settings: RenderSettings,
                  thumbnails: int = 8) -> RenderOutputs:
    """<out_dir>/<name>.mp4 (with the driving audio), <name>_preview.mp4 (reference | pose | output) and
    <name>_thumbs.png."""
    from PIL import Image

    from mimicmotion.preview import side_by_side_frames, thumbnail_strip
    from mimicmotion.video import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = write_video(out / f"{name}.mp4", frames, fps=inputs.fps, crf=settings.crf, audio_from=inputs.audio_from)
    preview = write_video(out / f"{name}_preview.mp4",
                          side_by_side_frames(inputs.reference, inputs.pose_images[1:], frames),
                          fps=inputs.fps, crf=settings.crf, audio_from=inputs.audio_from)
    thumbs = out / f"{name}_thumbs.png"
    tmp = out / f".{name}_thumbs.tmp.png"
    # Thumbnails 128 pixels high, never upscaled.
    Image.fromarray(thumbnail_strip(frames, count=thumbnails, height=min(128, frames.shape[1]))).save(tmp)
    tmp.replace(thumbs)
    return RenderOutputs(name=name, video=video, preview=preview, thumbnails=thumbs, num_frames=len(frames),
                         fps=float(inputs.fps), has_audio=inputs.audio_from is not None)


def outputs_markdown(outputs: list) -> str:
    """A markdown table of rendered outputs with links to the files and thumbnail strips."""
    lines = ["| render | frames | fps | audio | video | preview | thumbnails |", "|---|---|---|---|---|---|---|"]
    for o in outputs:
        lines.append(f"| {o.name} | {o.num_frames} | {o.fps:g} | {'yes' if o.has_audio else 'no'} | "
                     f"[{o.video.name}]({o.video.resolve().as_uri()}) | "
                     f"[{o.preview.name}]({o.preview.resolve().as_uri()}) | "
                     f"![{o.name}]({o.thumbnails.resolve().as_uri()}) |")
    return "\n".join(lines) + "\n"


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"render-{key or 'output'}"


def publish_artifacts(outputs: list, key: str) -> None:
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    create_markdown_artifact(outputs_markdown(outputs), key=key, description="rendered videos and previews")
    for o in outputs:
        create_image_artifact(o.thumbnails.resolve().as_uri(), key=artifact_key(f"{o.name}-thumbs"),
                              description=f"thumbnail strip of {o.name}")


def load_driver_pipeline(model: ModelSpec, device):
    import torch

    from mimicmotion.loading import load_pipeline

    pipe = load_pipeline(model.base_model, model.checkpoint, dtype=getattr(torch, model.dtype), device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clear_checkpoint(checkpoint_dir) -> None:
    """Remove a finished render's checkpoint folder, and its parent when that is left empty."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return
    shutil.rmtree(checkpoint_dir)
    parent = Path(checkpoint_dir).parent
    if parent.name == ".checkpoints" and not any(parent.iterdir()):
        parent.rmdir()


# ---------------------------------------------------------------------------------------------- Prefect tasks
check_request_task = task(check_request, name="check-request", cache_policy=NO_CACHE)
prepare_inputs_task = task(prepare_inputs, name="prepare-inputs", cache_policy=NO_CACHE)
load_pipeline_task = task(load_driver_pipeline, name="load-pipeline", cache_policy=NO_CACHE)
sample_task = task(sample_frames, name="sample-and-decode", cache_policy=NO_CACHE)
write_outputs_task = task(write_outputs, name="write-outputs", cache_policy=NO_CACHE)
publish_artifacts_task = task(publish_artifacts, name="publish-artifacts", cache_policy=NO_CACHE)

