"""Synthesise tiny test media with PyAV: index-coded video frames, sine-wave audio, rotation tags.

Frames are flat colours coded by their index plus a fixed red block in the top-left corner, so a test
can tell which frame it got back (nearest source frame) and which way up it is (where the block is).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np

SAMPLE_RATE = 44100
AAC_FRAME_SAMPLES = 1024  # samples per AAC frame: the granularity of AAC stream copies


def coded_frame(index: int, width: int = 32, height: int = 24) -> np.ndarray:
    """Frame ``index``: background colour unique per index (steps of 40 in R and G, well above codec
    error), a red block in the top-left quarter marking orientation."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = (20 + 40 * (index % 6), 20 + 40 * ((index // 6) % 6), 200)
    frame[: height // 2, : width // 2] = (250, 0, 0)
    return frame


def coded_frames(num_frames: int, width: int = 32, height: int = 24) -> np.ndarray:
    return np.stack([coded_frame(i, width, height) for i in range(num_frames)])


def sine_wave(seconds: float, freq: float = 440.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _add_audio_stream(container, codec: str, sample_rate: int = SAMPLE_RATE):
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    return stream


def _encode_audio(container, stream, samples: np.ndarray, codec: str, sample_rate: int) -> None:
    fmt = "fltp" if codec == "aac" else "s16"
    data = samples[None, :] if fmt == "fltp" else (samples * 32767).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_video(path: Path, num_frames: int = 30, width: int = 32, height: int = 24,
               fps: Fraction | int = 24, audio_seconds: Optional[float] = None,
               rotation_ccw: Optional[int] = None) -> np.ndarray:
    """Write coded frames as H.264 (B-frames on, so random access is really exercised); optionally a
    mono AAC sine track of ``audio_seconds`` and a display-matrix rotation (counter-clockwise degrees,
    FFmpeg's convention). Returns the source frames."""
    frames = coded_frames(num_frames, width, height)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": "12", "bf": "2"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if rotation_ccw is not None:
        stream.set_display_rotation(rotation_ccw)
    # Every stream must exist before the first packet is muxed (that writes the header).
    audio = _add_audio_stream(container, "aac") if audio_seconds is not None else None
    for i, arr in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
        frame.pts = i
        frame.time_base = 1 / Fraction(fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    if audio is not None:
        _encode_audio(container, audio, sine_wave(audio_seconds), "aac", SAMPLE_RATE)
    container.close()
    return frames


def make_audio_only(path: Path, seconds: float = 1.0) -> None:
    """An audio-only file: AAC for .m4a/.mp4, 16-bit PCM for .wav."""
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    container = av.open(str(path), mode="w")
    _encode_audio(container, _add_audio_stream(container, codec), sine_wave(seconds), codec, SAMPLE_RATE)
    container.close()


def stream_seconds(path: Path, kind: str) -> float:
    """Duration of the first stream of ``kind`` ('video' or 'audio'), from its packets' timestamps."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        ends = [p.pts + p.duration for p in container.demux(stream) if p.size > 0]
        starts = max(0, stream.start_time or 0)
        return float((max(ends) - starts) * stream.time_base)


def decoded_rms(path: Path) -> float:
    """RMS of the first audio stream's decoded samples (0 for silence)."""
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().astype(np.float64).ravel() for f in container.decode(audio=0)]
    samples = np.concatenate(chunks)
    return float(np.sqrt(np.mean(samples ** 2)))
