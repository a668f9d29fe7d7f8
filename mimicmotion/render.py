"""Render one video: reference + driving poses -> aligned pose images -> pipeline -> mp4 with audio.

Each stage is a function so the Prefect render flow can call them as tasks; `render_video` chains them
for the CLI. Defaults reproduce the release's inference (576 resolution, stride 2, T=72, O=6, 25 steps,
guidance 2.0, seed 42), except the output frame rate: by default the video is written at the sampled
frame rate (driving fps / stride) so it keeps the driving video's length and audio in sync (the release
writes 15 fps whatever the input); pass fps=15 for the release's timing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.io import PoseSequence

log = logging.getLogger(__name__)


@dataclass
class RenderSettings:
    resolution: int = 576
    sample_stride: int = 2
    tile_size: int = 72
    tile_overlap: int = 6
    num_inference_steps: int = 25
    min_guidance_scale: float = 2.0
    max_guidance_scale: float = 2.0
    noise_aug_strength: float = 0.0
    decode_chunk_size: int = 8
    seed: int = 42
    fps: Optional[float] = None  # output fps; None = sampled driving fps
    crf: int = 18
    max_frames: Optional[int] = None  # cap on driving frames (after sampling)

    def validate(self) -> "RenderSettings":
        """Raise ConfigError for values the render cannot use, before any work is done."""
        from mimicmotion.tiling import validate_tiling

        validate_tiling(max(self.tile_size, 1), self.tile_size, self.tile_overlap)
        checks = [
            (self.resolution >= 64 and self.resolution % 64 == 0, f"resolution must be a positive multiple of 64 "
             f"(got {self.resolution}); the release uses 576"),
            (self.sample_stride >= 1, f"sample_stride must be >= 1 (got {self.sample_stride})"),
            (self.num_inference_steps >= 1, f"steps must be >= 1 (got {self.num_inference_steps})"),
            (self.min_guidance_scale >= 1 and self.max_guidance_scale >= 1,
             f"guidance must be >= 1 (got {self.min_guidance_scale}, {self.max_guidance_scale}); 1 = no guidance, "
             "the release uses 2.0"),
            (self.noise_aug_strength >= 0, f"noise_aug_strength must be >= 0 (got {self.noise_aug_strength})"),
            (self.decode_chunk_size >= 1, f"decode_chunk_size must be >= 1 (got {self.decode_chunk_size})"),
            (self.fps is None or self.fps > 0, f"fps must be > 0 (got {self.fps})"),
            (self.max_frames is None or self.max_frames >= 1, f"max_frames must be >= 1 (got {self.max_frames})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


@dataclass
class RenderResult:
    video_path: Path
    num_frames: int
    fps: float
    height: int
    width: int
    has_audio: bool
    preview_path: Optional[Path] = None


def prepare_reference(path, resolution: int = 576) -> np.ndarray:
    """Reference image resized to cover and centre-cropped to the release's output size (uint8 HWC)."""
    from mimicmotion.preprocess import load_reference

    image, _ = load_reference(path, resolution=resolution)
    return image


def release_roundtrip(image: np.ndarray, dtype=None) -> np.ndarray:
    """The release turns the reference into [-1,1] floats and back to uint8 by truncation before the
    pipeline sees it, in its default dtype (float16 unless run with --no_use_float16); some pixel values
    drop by one on the way. Reproduced for faithfulness."""
    import torch

    dtype = dtype or torch.float32
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dtype) / 127.5 - 1
    return ((x + 1.0) * 127.5).to(torch.uint8).numpy()


def release_dtype(pipe):
    """The dtype the release does its pre-processing arithmetic in: float16 for a half-precision run,
    else float32 (the release sets torch's default dtype to float16 when it runs in half precision)."""
    import torch

    return torch.float16 if pipe.unet.dtype == torch.float16 else torch.float32


def map_pose_to_reference(frame: np.ndarray, src_size, dst_size) -> np.ndarray:
    """Map normalised keypoints from an image of ``src_size`` (h, w) into its resize-to-cover +
    centre-crop of ``dst_size`` (H, W), so a pose detected on the original reference file can be used."""
    from mimicmotion.preprocess import cover_crop_geometry

    if tuple(src_size) == tuple(dst_size):
        return frame
    (h_resize, w_resize), (top, left) = cover_crop_geometry(src_size[0], src_size[1], dst_size[0], dst_size[1])
    out = np.array(frame, dtype=np.float32, copy=True)
    out[..., 0] = (out[..., 0] * w_resize - left) / dst_size[1]
    out[..., 1] = (out[..., 1] * h_resize - top) / dst_size[0]
    return out


def pose_condition_images(ref_pose: np.ndarray, driving: PoseSequence, height: int, width: int) -> np.ndarray:
    """(F+1, H, W, 3) uint8: the reference pose (unaligned) then the driving poses aligned to it."""
    from mimicmotion.pose.align import align_poses
    from mimicmotion.pose.draw import draw_pose_sequence

    if len(driving) == 0:
        raise PoseError("the driving pose sequence has no frames: check the driving video or pose file")
    aligned = align_poses(ref_pose, driving.frames, (height, width), (driving.height, driving.width))
    return draw_pose_sequence([ref_pose, *aligned], height, width)


def generate(pipe, reference: np.ndarray, pose_images: np.ndarray, settings: RenderSettings, device=None,
             **pipeline_options) -> np.ndarray:
    """Run the pipeline; returns the rendered frames without the reference frame, uint8 (F, H, W, 3)."""
    from mimicmotion.pipeline import frames_to_uint8

    out = pipeline_output(pipe, reference, pose_images, settings, device=device, **pipeline_options)
    return frames_to_uint8(out[1:])


def pipeline_output(pipe, reference: np.ndarray, pose_images: np.ndarray, settings: RenderSettings,
                    device=None, output_type: str = "pt", **pipeline_options):
    """The pipeline's output for one video as ``generate`` renders it (the reference's slot included): frames
    (F+1, 3, H, W) in [0, 1], or with ``output_type="latent"`` the final latents (F+1, C, h, w)."""
    import torch
    from PIL import Image

    from mimicmotion.pose.draw import pose_images_to_tensor

    gen_device = device if device is not None else pipe._execution_device
    generator = torch.Generator(device=gen_device).manual_seed(settings.seed)
    h, w = pose_images.shape[1:3]
    dtype = release_dtype(pipe)
    return pipe(
        Image.fromarray(release_roundtrip(reference, dtype)), pose_images_to_tensor(pose_images, dtype=dtype),
        height=h, width=w,
        num_frames=len(pose_images), tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
        num_inference_steps=settings.num_inference_steps, min_guidance_scale=settings.min_guidance_scale,
        max_guidance_scale=settings.max_guidance_scale, noise_aug_strength=settings.noise_aug_strength,
        decode_chunk_size=settings.decode_chunk_size, generator=generator, output_type=output_type, device=device,
        **pipeline_options,
    ).frames[0]


def resolve_reference_pose(reference: np.ndarray, ref_pose: Optional[PoseSequence], estimator) -> np.ndarray:
    """The reference's pose in the cropped reference frame: detected (DWPose is the release behaviour) or
    taken from a pose file of the reference image."""
    h, w = reference.shape[:2]
    if ref_pose is not None:
        if len(ref_pose) < 1:
            raise PoseError("the reference pose file holds no frame")
        return map_pose_to_reference(ref_pose.frames[0], (ref_pose.height, ref_pose.width), (h, w))
    if estimator is None:
        raise ConfigError("the reference pose is needed: pass --pose-estimator (or --dwpose-dir) to detect it, or "
                          "--ref-pose with a pose file made by `mimicmotion pose REF_IMAGE --out ref_pose.parquet`")
    pose = estimator(reference)
    if len(pose) == 0:  # DWPose always returns a person; the bundled estimator can find none
        raise PoseError("no person was found in the reference image: use a photo with one person whose body is "
                        "visible, or give its pose with --ref-pose")
    return pose


@dataclass
class RenderInputs:
    """Everything the sampler needs, checked before any model is loaded."""

    reference: np.ndarray  # uint8 (H, W, 3), cropped
    pose_images: np.ndarray  # uint8 (F+1, H, W, 3), reference pose first
    fps: float
    audio_from: Optional[str]


def prepare_render_inputs(
    reference_path, *, driving_poses: Optional[PoseSequence] = None, driving_video=None, estimator=None,
    ref_pose: Optional[PoseSequence] = None, settings: RenderSettings = RenderSettings(), audio_from=None,
    progress: bool = True,
) -> RenderInputs:
    """Reference crop, driving poses (file or DWPose), alignment and pose images; the audio source.
    ``audio_from=False`` disables audio; None means the driving video's, if it has audio."""
    from mimicmotion.pose.extract import extract_video_poses
    from mimicmotion.video import has_audio

    settings.validate()
    reference = prepare_reference(reference_path, settings.resolution)
    height, width = reference.shape[:2]
    if driving_poses is None:
        if driving_video is None:
            raise ConfigError("pass driving poses (--poses FILE) or a driving video (--driving VIDEO)")
        if estimator is None:
            raise ConfigError("detecting poses in --driving needs a pose estimator (--pose-estimator auto, "
                              "mediapipe or dwpose with --dwpose-dir DIR)")
    ref = resolve_reference_pose(reference, ref_pose, estimator)
    if driving_poses is None:
        driving_poses = extract_video_poses(driving_video, estimator, settings.sample_stride, progress=progress)
        audio_from = driving_video if audio_from is None else audio_from
    elif audio_from is None and driving_poses.source and Path(driving_poses.source).is_file():
        audio_from = driving_poses.source
    if settings.max_frames is not None:
        n = settings.max_frames
        driving_poses = PoseSequence(**{**driving_poses.__dict__, "frames": driving_poses.frames[:n],
                                        "source_frames": driving_poses.source_frames[:n]})
    images = pose_condition_images(ref, driving_poses, height, width)
    audio = str(audio_from) if audio_from not in (None, False) and has_audio(audio_from) else None
    return RenderInputs(reference=reference, pose_images=images, fps=settings.fps or driving_poses.fps or 15.0,
                        audio_from=audio)


def render_video(
    reference_path, out_path, pipe=None, *, pipe_loader=None, settings: RenderSettings = RenderSettings(),
    device=None, progress: bool = True, pipeline_options: Optional[dict] = None, preview_path=None,
    **input_options,
) -> RenderResult:
    """Full render for the CLI: reference + (pose file | driving video with DWPose) -> mp4 with audio.
    Inputs are prepared and validated first; ``pipe_loader()`` (if given instead of ``pipe``) is only
    called once they are known to be good. ``preview_path``: also write the side-by-side preview
    (reference | pose | output) there, with the same audio."""
    from mimicmotion.video import write_video

    inputs = prepare_render_inputs(reference_path, settings=settings, progress=progress, **input_options)
    if pipe is None:
        pipe = pipe_loader()
    if progress:
        pipe.set_progress_bar_config(desc="Denoising (steps x tiles)")
    frames = generate(pipe, inputs.reference, inputs.pose_images, settings, device=device, **(pipeline_options or {}))
    write_video(out_path, frames, fps=inputs.fps, crf=settings.crf, audio_from=inputs.audio_from)
    if preview_path is not None:
        from mimicmotion.preview import side_by_side_frames

        write_video(preview_path, side_by_side_frames(inputs.reference, inputs.pose_images[1:], frames),
                    fps=inputs.fps, crf=settings.crf, audio_from=inputs.audio_from)
    h, w = inputs.reference.shape[:2]
    return RenderResult(video_path=Path(out_path), num_frames=len(frames), fps=inputs.fps, height=h, width=w,
                        has_audio=inputs.audio_from is not None,
                        preview_path=Path(preview_path) if preview_path is not None else None)
