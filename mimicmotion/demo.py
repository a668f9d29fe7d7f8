"""`mimicmotion demo`: the whole pose -> render path on a generated sample, on CPU, in about a minute.

It writes a driving clip of a procedurally animated dancer (with a sound track) and its ground-truth
poses, a reference image, the confidence-aware pose video, a tiny model in the released checkpoint
layout, and the rendered mp4 with the driving audio. Until the project's trained demo model ships, the
tiny model is randomly initialised, so the rendered pixels are noise: the run exercises every stage
(alignment, drawing, tiled progressive-fusion sampling, decoding, encoding, audio muxing) for real.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DemoOutputs:
    reference: Path
    driving_video: Path
    driving_poses: Path
    pose_video: Path
    base_model: Path
    checkpoint: Path
    render: Path


def write_sample(out_dir, num_frames: int = 48, fps: float = 24.0, size=(512, 288), seed: int = 0):
    """Driving video with audio + its sidecar poses, and a reference image + its pose file."""
    from mimicmotion.pose.io import PoseSequence, save_poses
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import mux_audio, write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    poses = dance_poses(num_frames, fps, w, h, seed=seed)
    silent = out / ".driving_silent.mp4"
    write_video(silent, (draw_figure(p, h, w, seed=seed) for p in poses), fps=fps)
    audio = out / ".tone.m4a"
    _write_tone(audio, seconds=num_frames / fps)
    driving = out / "driving.mp4"
    mux_audio(silent, audio, driving)
    silent.unlink()
    audio.unlink()
    save_poses(out / "driving_poses.parquet", PoseSequence(
        frames=poses, width=w, height=h, fps=fps, source=str(driving.resolve()),
        source_frames=list(range(num_frames)), sample_stride=1))

    ref_pose = dance_poses(1, fps, 704, 1216, seed=seed + 1)
    from PIL import Image

    Image.fromarray(draw_figure(ref_pose[0], 1216, 704, seed=seed + 1)).save(out / "ref.png")
    save_poses(out / "ref_pose.parquet", PoseSequence(frames=ref_pose, width=704, height=1216, source="ref.png"))
    return out / "ref.png", driving, out / "driving_poses.parquet", out / "ref_pose.parquet"


def _write_tone(path, seconds: float, rate: int = 44100):
    """A short melody as AAC, so the demo shows the driving audio carried into the render."""
    import av

    t = np.arange(int(seconds * rate)) / rate
    notes = 220.0 * 2 ** (np.floor(t * 4) % 5 / 12 * 3)
    samples = (0.2 * np.sin(2 * np.pi * notes * t)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame_size = 1024
        for i in range(0, len(samples), frame_size):
            chunk = samples[i:i + frame_size][None]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def run_demo(out_dir="out/demo", resolution: int = 128, steps: int = 4, tile_size: int = 16, tile_overlap: int = 4,
             num_frames: int = 48, progress: bool = True) -> DemoOutputs:
    import torch

    from mimicmotion.cli import _write_pose_video
    from mimicmotion.loading import load_pipeline
    from mimicmotion.pose.io import load_poses
    from mimicmotion.render import RenderSettings, render_video
    from mimicmotion.tiny import save_tiny_model

    out = Path(out_dir)
    ref, driving, driving_poses, ref_pose = write_sample(out / "sample", num_frames=num_frames)
    seq = load_poses(driving_poses)
    # Sample the driving poses as the release samples frames (stride 2 at 24 fps).
    stride = 2
    sampled = type(seq)(frames=seq.frames[::stride], width=seq.width, height=seq.height, fps=seq.fps / stride,
                        source=seq.source, source_frames=seq.source_frames[::stride], sample_stride=stride)
    pose_video = out / "pose.mp4"
    _write_pose_video(sampled, pose_video, None)
    base, ckpt = save_tiny_model(out / "model")
    pipe = load_pipeline(base, ckpt, dtype=torch.float32, device="cpu")
    pipe.set_progress_bar_config(disable=not progress)
    settings = RenderSettings(resolution=resolution, num_inference_steps=steps, tile_size=tile_size,
                              tile_overlap=tile_overlap, decode_chunk_size=8)
    result = render_video(ref, out / "render.mp4", pipe, driving_poses=sampled, ref_pose=load_poses(ref_pose),
                          settings=settings, device="cpu", progress=progress)
    return DemoOutputs(reference=ref, driving_video=driving, driving_poses=driving_poses, pose_video=pose_video,
                       base_model=base, checkpoint=ckpt, render=result.video_path)
