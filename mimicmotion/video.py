"""Video I/O: probe, decode (decord), encode H.264 (PyAV) and mux the driving video's audio (ffmpeg).

Orientation contract: every size and every frame this module hands out is in *display* orientation,
i.e. the container's rotation (display matrix) is already applied. ``VideoInfo.width/height`` are the
shape of the frames ``read_frames`` / ``iter_frames`` return. For unrotated files (the usual case and
the only case the public release handles) frames come straight from decord's ``get_batch``, exactly as
the release reads them. decord 0.6.0 cannot decode rotated files (it returns a 4-channel garbage buffer
for single frames and ``get_batch`` fails with a size-mismatch error), so files with a rotation are
decoded with PyAV instead and turned upright with ``np.rot90``.

Frame sampling (SPEC section 4): stride = sample_stride * max(1, int(fps / 24)), frames 0, stride, ...

Every problem with an input file raises :class:`mimicmotion.errors.VideoError` naming the file.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import av
import numpy as np

from mimicmotion.errors import ConfigError, VideoError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

REFERENCE_FPS = 24  # the sampling rule counts strides relative to 24 fps
DEFAULT_CRF = 18
AAC_BITRATE = "192k"
_MP4_LIKE = {".mp4", ".m4v", ".mov"}  # containers where AAC can be stream-copied and faststart applies
_FIX_HINT = "re-export it as an H.264 .mp4 (e.g. with ffmpeg or a video editor)"

# ITU-R BT.601 limited range: what swscale's default RGB->YUV conversion produces; tagging the stream
# with it stops players from guessing BT.709 for HD sizes and shifting the colours.
_SMPTE170M = 6  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC_SMPTE170M
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video file.

    ``width`` and ``height`` are the size of the frames ``read_frames`` returns, i.e. in display
    orientation with ``rotation`` already applied (for a 90/270 rotation they are the coded size
    swapped). ``rotation`` is informative: the clockwise angle (0/90/180/270) a player turns the coded
    picture by, the value of the legacy mp4 ``rotate`` tag (a portrait phone clip is typically 90).
    ``duration`` is the video stream's duration in seconds.
    """

    path: str
    fps: float
    num_frames: int
    width: int
    height: int
    rotation: int
    duration: float
    has_audio: bool
    video_codec: str
    audio_codec: Optional[str]


# ----------------------------------------------------------------------------------------------------
# Frame sampling (SPEC section 4)

def effective_stride(fps: float, sample_stride: int) -> int:
    """stride = sample_stride * max(1, int(fps / 24)): fast videos are thinned to about 24 fps first."""
    if isinstance(sample_stride, bool) or not isinstance(sample_stride, Integral) or sample_stride < 1:
        raise ConfigError(f"sample_stride must be an integer >= 1, got {sample_stride!r}")
    if isinstance(fps, bool) or not isinstance(fps, Real) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    return int(sample_stride) * max(1, int(fps / REFERENCE_FPS))


def sample_indices(num_frames: int, fps: float, sample_stride: int) -> list[int]:
    """Indices of the frames the release samples: 0, stride, 2*stride, ... below num_frames."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 0:
        raise ConfigError(f"num_frames must be an integer >= 0, got {num_frames!r}")
    return list(range(0, int(num_frames), effective_stride(fps, sample_stride)))


def as_frame_rate(fps: Union[float, Fraction]) -> Fraction:
    """An exact frame rate for the encoder: NTSC-style rates (23.976, 29.97, 11.988, ...) become
    k*1000/1001, others the nearest fraction with a denominator <= 1001 (12.5 -> 25/2)."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if isinstance(fps, bool) or not isinstance(fps, Real) or not math.isfinite(fps):
            raise ConfigError(f"fps must be a positive number, got {fps!r}")
        value = float(fps)
        ntsc = Fraction(round(value * 1.001) * 1000, 1001)
        if not value.is_integer() and ntsc > 0 and abs(float(ntsc) - value) < 1e-3:
            rate = ntsc
        else:
            rate = Fraction(value).limit_denominator(1001)
    if rate <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    return rate


# ----------------------------------------------------------------------------------------------------
# Opening and probing

def _check_file(path: PathLike) -> Path:
    """The path as a readable, non-empty regular file, or a VideoError saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p} does not exist: check the path (relative paths start in {Path.cwd()})")
    if p.is_dir():
        raise VideoError(f"{p} is a directory, not a video file: pass the path of a video file")
    if not p.is_file():
        raise VideoError(f"{p} is not a regular file: pass the path of a video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{p} is empty (0 bytes): the file was not written completely or the download "
                         "failed; export or download it again")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{p} cannot be read (permission denied): fix the file's permissions")
    return p


def _reason(exc: BaseException) -> str:
    """A one-line cause: FFmpeg's strerror, else the last line of the message (decord's are multi-line)."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _open_container(p: Path):
    try:
        return av.open(str(p), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{p} is not a readable media file (corrupt, truncated or not a video: "
                         f"{_reason(exc)}): {_FIX_HINT}") from exc


def _video_stream(container, p: Path):
    if not container.streams.video:
        what = "audio-only file?" if container.streams.audio else "no picture track found"
        raise VideoError(f"{p} has no video stream ({what}): pass a video with a picture track")
    return container.streams.video[0]


def _stream_fps(stream, p: Path) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoError(f"{p} does not state a frame rate: {_FIX_HINT}")


def _first_frame(container, stream, p: Path):
    try:
        for frame in container.decode(stream):
            return frame
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{p}: its video stream cannot be decoded ({_reason(exc)}): the file is corrupt "
                         f"or uses an unsupported codec; {_FIX_HINT}") from exc
    raise VideoError(f"{p} contains no decodable video frame (empty or truncated video stream): {_FIX_HINT}")


def _clockwise_rotation(ccw_degrees: float, p: Path) -> int:
    """FFmpeg reports the display matrix as a counter-clockwise angle; convert to 0/90/180/270 clockwise."""
    cw = (-float(ccw_degrees)) % 360.0
    snapped = int(round(cw / 90.0)) * 90 % 360
    if abs(((cw - snapped) + 180.0) % 360.0 - 180.0) > 1.0:
        logger.warning("%s has a display rotation of %.1f degrees; using %d", p, cw, snapped)
    return snapped


def _count_video_packets(p: Path) -> int:
    """Frame count for containers that do not store one (mkv, webm): count packets without decoding."""
    with _open_container(p) as container:
        stream = _video_stream(container, p)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{p}: reading its video packets failed ({_reason(exc)}): the file is "
                             f"corrupt or truncated; {_FIX_HINT}") from exc


def probe(path: PathLike) -> VideoInfo:
    """Container and stream facts (PyAV); decodes the first frame to read the rotation and to make sure
    the video stream is decodable at all."""
    p = _check_file(path)
    with _open_container(p) as container:
        stream = _video_stream(container, p)
        fps = _stream_fps(stream, p)
        num_frames = int(stream.frames or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        audio = container.streams.audio
        video_codec = stream.codec_context.name
        audio_codec = audio[0].codec_context.name if audio else None
        first = _first_frame(container, stream, p)
        rotation = _clockwise_rotation(first.rotation or 0, p)
        coded_w, coded_h = first.width, first.height
    if num_frames <= 0:
        num_frames = _count_video_packets(p)
    if duration <= 0:
        duration = num_frames / float(fps)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    return VideoInfo(path=str(p), fps=float(fps), num_frames=num_frames, width=width, height=height,
                     rotation=rotation, duration=duration, has_audio=bool(audio), video_codec=video_codec,
                     audio_codec=audio_codec)


def has_audio(path: PathLike) -> bool:
    """Whether the file has at least one audio stream (an audio-only file counts)."""
    p = _check_file(path)
    with _open_container(p) as container:
        return bool(container.streams.audio)


# ----------------------------------------------------------------------------------------------------
# Decoding

def _checked_indices(indices: Optional[Sequence[int]], num_frames: int, p: Path) -> list[int]:
    if indices is None:
        return list(range(num_frames))
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, Integral):
            raise ValueError(f"frame indices must be integers, got {i!r}")
        if not 0 <= i < num_frames:
            raise VideoError(f"{p} has {num_frames} frames (0..{num_frames - 1}); frame {int(i)} was "
                             "requested: take frame indices from probe(...).num_frames / sample_indices")
        out.append(int(i))
    return out


def _batches(indices: list[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def _open_decord(p: Path):
    import decord  # heavy native library: import only when decoding

    try:
        return decord.VideoReader(str(p), ctx=decord.cpu(0))
    except (decord.DECORDError, RuntimeError) as exc:
        raise VideoError(f"{p} cannot be opened for decoding ({_reason(exc)}): "
                         f"{_FIX_HINT}") from exc


def _iter_decord(p: Path, info: VideoInfo, indices: list[int], batch_size: int) -> Iterator[np.ndarray]:
    import decord

    reader = _open_decord(p)
    try:
        # decord's index is authoritative for what it can fetch; it can disagree with a container
        # that over-states its frame count.
        indices = _checked_indices(indices, min(len(reader), info.num_frames), p)
        done = 0
        for chunk in _batches(indices, batch_size):
            try:
                batch = reader.get_batch(chunk)
            except (decord.DECORDError, RuntimeError) as exc:
                if "DECORDArrayCopyFromTo" in str(exc):
                    # decord 0.6 cannot copy frames of some widths (e.g. 1 or 48 px: its row padding does
                    # not match); the file is fine, so decode it with PyAV instead.
                    logger.info("%s: decord cannot copy %dx%d frames, decoding with PyAV", p, info.width, info.height)
                    yield from _iter_pyav(p, info, indices[done:], batch_size)
                    return
                raise VideoError(f"{p}: decoding frames {chunk[0]}..{chunk[-1]} failed "
                                 f"({_reason(exc)}): the file is corrupt or truncated; "
                                 f"{_FIX_HINT}") from exc
            arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
            expected = (len(chunk), info.height, info.width, 3)
            if arr.shape != expected or arr.dtype != np.uint8:
                raise VideoError(f"{p}: the decoder returned frames of shape {arr.shape} {arr.dtype}, "
                                 f"expected {expected} uint8: {_FIX_HINT}")
            done += len(chunk)
            yield arr
    finally:
        del reader


def _iter_pyav(p: Path, info: VideoInfo, indices: list[int], batch_size: int) -> Iterator[np.ndarray]:
    """Sequential PyAV decode (rotated files, and sizes decord cannot copy); restarts from the top only when a
    batch goes backwards."""
    quarter_turns_ccw = (-info.rotation // 90) % 4  # np.rot90 turns counter-clockwise
    container = None
    frames: Iterator = iter(())
    position = 0  # index of the next frame the decoder will produce
    try:
        for chunk in _batches(indices, batch_size):
            wanted = set(chunk)
            if container is None or min(wanted) < position:
                if container is not None:
                    container.close()
                container = _open_container(p)
                frames = container.decode(_video_stream(container, p))
                position = 0
            got: dict[int, np.ndarray] = {}
            while len(got) < len(wanted):
                try:
                    frame = next(frames, None)
                except (av.FFmpegError, OSError) as exc:
                    raise VideoError(f"{p}: decoding frame {position} failed ({_reason(exc)}): the file is "
                                     f"corrupt or truncated; {_FIX_HINT}") from exc
                if frame is None:
                    raise VideoError(f"{p} ends after {position} decodable frames although it claims "
                                     f"{info.num_frames}: the file is truncated; {_FIX_HINT}")
                if position in wanted:
                    got[position] = np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns_ccw)
                position += 1
            yield np.ascontiguousarray(np.stack([got[i] for i in chunk]))
    finally:
        if container is not None:
            container.close()


MAX_FRAME_PIXELS_ENV = "MIMICMOTION_MAX_FRAME_PIXELS"
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320 * 5 // 4  # 8K UHD and a margin; a decoded frame is 3 bytes per pixel


def max_frame_pixels() -> int:
    value = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_FRAME_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise ConfigError(f"${MAX_FRAME_PIXELS_ENV} must be a whole number of pixels, got {value!r}") from None
    if limit < 1:
        raise ConfigError(f"${MAX_FRAME_PIXELS_ENV} must be >= 1, got {limit}")
    return limit


def check_frame_size(info: VideoInfo) -> None:
    """Refuse frames larger than the limit before any is decoded (a tiny file can declare 16000x16000)."""
    limit = max_frame_pixels()
    if info.width * info.height > limit:
        raise VideoError(f"{info.path}: frames of {info.width}x{info.height} ({info.width * info.height / 1e6:.0f} MP) "
                         f"are over the limit of {limit / 1e6:.1f} MP per frame: downscale the video (e.g. ffmpeg -vf "
                         f"scale=-2:1920), or raise ${MAX_FRAME_PIXELS_ENV} if the machine has the memory")


def _open_frame_iterator(path: PathLike, indices: Optional[Sequence[int]],
                         batch_size: int) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    info = probe(path)
    check_frame_size(info)
    p = Path(path)
    wanted = _checked_indices(indices, info.num_frames, p)
    decode = _iter_decord if info.rotation == 0 else _iter_pyav
    return info, decode(p, info, wanted, int(batch_size))


def iter_frames(path: PathLike, indices: Optional[Sequence[int]] = None,
                batch_size: int = 16) -> Iterator[np.ndarray]:
    """Yield (n, H, W, 3) uint8 RGB batches of the requested frames, in the requested order (repeats
    allowed), so a long video never sits in memory. ``indices=None`` means every frame. The file and
    the indices are checked before this returns; decoding happens as the batches are consumed."""
    return _open_frame_iterator(path, indices, batch_size)[1]


def read_frames(path: PathLike, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """The requested frames (default: all) as one (N, H, W, 3) uint8 RGB array in display orientation."""
    info, batches = _open_frame_iterator(path, indices, batch_size=64)
    out = list(batches)
    if not out:
        return np.empty((0, info.height, info.width, 3), dtype=np.uint8)
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------------------------------
# Encoding and muxing

def _temp_sibling(out: Path) -> Path:
    """A hidden unique name next to ``out`` with the same extension (so the muxer is chosen the same way);
    os.replace from it is atomic because it lives on the same filesystem."""
    return out.with_name(f".{out.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{out.suffix}")


def _remove_quietly(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row / column once where the size is odd."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_frame(frame, index: int, expected_shape: Optional[tuple]) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"frame {index} must be an HxWx3 uint8 RGB array, got shape {arr.shape} {arr.dtype}")
    if expected_shape is not None and arr.shape != expected_shape:
        raise ValueError(f"frame {index} is {arr.shape}, but the first frame was {expected_shape}: "
                         "all frames of a video must have the same size")
    return arr


def _encode_h264(tmp: Path, frames: Iterable, rate: Fraction, crf: int, out: Path) -> int:
    """Encode the frames into ``tmp``; returns the number of frames written."""
    options = {"movflags": "+faststart"} if out.suffix.lower() in _MP4_LIKE else {}
    try:
        container = av.open(str(tmp), mode="w", options=options)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot write {out} ({_reason(exc)}): use a .mp4 file name in a writable "
                         "folder") from exc
    count = 0
    try:
        stream = None
        first_shape = None
        for index, frame in enumerate(frames):
            arr = _check_frame(frame, index, first_shape)
            if stream is None:
                first_shape = arr.shape
                if arr.shape[0] % 2 or arr.shape[1] % 2:
                    logger.info("%s: %dx%d is odd; padding to even by repeating the last row/column",
                                out, arr.shape[1], arr.shape[0])
                padded_h, padded_w = arr.shape[0] + arr.shape[0] % 2, arr.shape[1] + arr.shape[1] % 2
                stream = container.add_stream("libx264", rate=rate, options={"crf": str(int(crf))})
                stream.width, stream.height, stream.pix_fmt = padded_w, padded_h, "yuv420p"
                ctx = stream.codec_context
                ctx.colorspace = ctx.color_primaries = ctx.color_trc = _SMPTE170M
                ctx.color_range = _MPEG_RANGE
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_to_even(arr)), format="rgb24")
            video_frame.pts = index
            video_frame.time_base = 1 / rate
            for packet in stream.encode(video_frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"no frames to write to {out}")
        for packet in stream.encode():
            container.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"encoding {out} failed ({_reason(exc)})") from exc
    finally:
        container.close()
    return count


VIDEO_OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


def check_output_path(path: PathLike, what: str = "output video", suffixes=VIDEO_OUTPUT_SUFFIXES) -> Path:
    """``path`` if a file can be written there (checked before any work): not a directory, a known suffix,
    and its nearest existing parent a writable directory (missing folders are created when writing)."""
    out = Path(path).expanduser()
    if str(path).strip() == "":
        raise ConfigError(f"the {what} path is empty: pass a file name such as out.mp4")
    if out.is_dir():
        raise ConfigError(f"the {what} {out} is a directory: pass a file name such as {out / 'out.mp4'}")
    if suffixes and out.suffix.lower() not in suffixes:
        raise ConfigError(f"the {what} {out} must end in {', '.join(suffixes)} (got {out.suffix or 'no suffix'!r})")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"the {what} {out} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"the {what} {out} cannot be written: {parent} is not writable")
    return out


def write_video(path: PathLike, frames, fps: Union[float, Fraction], crf: int = DEFAULT_CRF,
                audio_from: Optional[PathLike] = None) -> Path:
    """Write RGB frames as H.264 (libx264, yuv420p, BT.601 tagged) at ``fps`` (fractional rates are
    kept exact, see :func:`as_frame_rate`). ``frames``: an (N, H, W, 3) uint8 array or any iterable of
    HxWx3 uint8 frames (consumed once, never held in memory). Odd widths/heights are padded to even by
    repeating the last column/row, so the file is at most one pixel larger than the frames.

    ``audio_from``: a file whose first audio track is added, trimmed to the video's duration; a file
    without audio is ignored (video only). The result appears atomically: it is written under a hidden
    temporary name in the same folder and renamed at the end, so an interrupted run never leaves a
    partial file at ``path``. Returns ``path``."""
    out = Path(path)
    rate = as_frame_rate(fps)
    if isinstance(crf, bool) or not isinstance(crf, Integral) or not 0 <= crf <= 51:
        raise ConfigError(f"crf must be an integer from 0 (lossless) to 51, got {crf!r}")
    if out.is_dir():
        raise VideoError(f"{out} is a directory: pass an output file name such as out.mp4")
    # Check the audio source before spending time on encoding.
    audio_source = Path(audio_from) if audio_from is not None and has_audio(audio_from) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(out)
    try:
        _encode_h264(tmp, frames, rate, int(crf), out)
        if audio_source is not None:
            mux_audio(tmp, audio_source, out)
        else:
            os.replace(tmp, out)
    finally:
        _remove_quietly(tmp)
    return out


def _ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise VideoError(f"no ffmpeg binary is available for adding audio ({exc}): "
                         "`pip install imageio-ffmpeg`, or write without audio") from exc


def _ffmpeg_path_arg(p: Path) -> str:
    # Absolute path with the file: protocol so names with ':' or a leading '-' are never parsed as options
    # or protocols.
    return "file:" + str(p.resolve())


def mux_audio(video_path: PathLike, audio_source: PathLike, out_path: PathLike) -> Path:
    """Write ``out_path`` = the video stream of ``video_path`` (copied, not re-encoded) + the first audio
    stream of ``audio_source`` trimmed to the video's duration. AAC audio is copied into mp4/mov (it
    can then run past the video by less than one AAC frame, ~23 ms at 44.1 kHz); other audio is encoded
    to AAC. Atomic like :func:`write_video`. Returns ``out_path``."""
    video = probe(video_path)
    src = _check_file(audio_source)
    with _open_container(src) as container:
        if not container.streams.audio:
            raise VideoError(f"{src} has no audio track, so there is nothing to add to {video_path}: "
                             "pass a file with sound, or write the video without audio")
        audio_codec = container.streams.audio[0].codec_context.name
    out = Path(out_path)
    if out.is_dir():
        raise VideoError(f"{out} is a directory: pass an output file name such as out.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    mp4_like = out.suffix.lower() in _MP4_LIKE
    audio_args = ["-c:a", "copy"] if audio_codec == "aac" and mp4_like else ["-c:a", "aac", "-b:a", AAC_BITRATE]
    tmp = _temp_sibling(out)
    args = [
        _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-i", _ffmpeg_path_arg(Path(video_path)), "-i", _ffmpeg_path_arg(src),
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *audio_args,
        "-t", f"{video.duration:.6f}",
        *(["-movflags", "+faststart"] if mp4_like else []),
        _ffmpeg_path_arg(tmp),
    ]
    try:
        result = subprocess.run(args, capture_output=True, text=True, errors="replace", check=False)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-8:])
            raise VideoError(f"adding the audio of {src} to {video_path} failed (ffmpeg exit code "
                             f"{result.returncode}):\n{tail}")
        os.replace(tmp, out)
    finally:
        _remove_quietly(tmp)
    return out
