"""`mimicmotion demo`: the project's main job end to end on CPU, on a generated sample, in about a minute.

1. sample: a procedurally animated dancer (``mimicmotion.synthetic``) as a 128x192, 24 fps clip with a
   sound track and its exact pose sidecar, plus a reference image of the same person in another pose and
   its pose file. The dancer is video ``DEMO_VIDEO_INDEX`` of dataset seed ``DEMO_DATASET_SEED`` (7): the
   demo model is trained on ``mimicmotion synth --seed 0`` datasets, so this person is not in its data.
2. curate: the `curate` Prefect flow puts the clip into a local catalog (``<out>/catalog``) from the sidecar,
   sampled at the release's stride 2, as one clip.
3. render: the `render` Prefect flow animates the reference with the catalog clip's poses on the project's
   small demo model (``mimicmotion.demo_model``), denoising on Ray actors of a local Ray, and writes
   ``render.mp4`` (with the driving audio), ``render_preview.mp4`` (reference | pose | output) and
   ``render_thumbs.png``.

Prefect runs against the server ``PREFECT_API_URL`` names, else against a temporary local one that Prefect
starts and stops itself (no setup needed). Ray is started for the run and shut down after it.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mimicmotion.errors import ConfigError, MimicMotionError

# The demo dancer: video DEMO_VIDEO_INDEX of `mimicmotion synth --seed 7` (the demo model trains on seed 0
# datasets; keep seed 7 out of its training data). Index 2 is a whole-body, uncropped framing.
DEMO_DATASET_SEED = 7
DEMO_VIDEO_INDEX = 2
DEMO_FPS = 24.0
DEMO_SAMPLE_STRIDE = 2  # the release's sampling: 12 driving poses per second at 24 fps
DEMO_ASPECT = "2:3"  # 128 x 192
DEMO_FRAMES = 96  # 4 s: 48 rendered frames, 8 tiles of 8 (the model's tile size) spread over the actors
DEMO_STEPS = 10
DEMO_ACTORS = 2
QUICK_FRAMES = 24  # 1 s: 12 rendered frames, 2 tiles
QUICK_STEPS = 2
MIN_FRAMES = 8

SAMPLE_DIR = "sample"
CATALOG_DIR = "catalog"
RENDER_NAME = "render"


@dataclass
class DemoSample:
    driving_video: Path  # with audio
    driving_poses: Path  # its sidecar, <stem>.poses.parquet
    reference: Path
    reference_pose: Path
    video_seed: int
    num_frames: int
    fps: float


@dataclass
class DemoOutputs:
    sample: DemoSample
    catalog: Path
    clip_id: str
    base_model: Path
    checkpoint: Path
    render: Path
    preview: Path
    thumbnails: Path
    num_frames: int  # rendered frames
    fps: float  # of the render
    has_audio: bool
    seconds: dict = field(default_factory=dict)  # wall time per stage, and "total"


def demo_video_seed() -> int:
    """The render seed of the demo dancer (video DEMO_VIDEO_INDEX of dataset seed DEMO_DATASET_SEED)."""
    from mimicmotion.synthetic import video_seed

    return video_seed(DEMO_DATASET_SEED, DEMO_VIDEO_INDEX)


def sampled_length(num_frames: int, sample_stride: int = DEMO_SAMPLE_STRIDE) -> int:
    """How many poses the release samples from ``num_frames`` frames at 24 fps (frames 0, s, 2s, ...)."""
    return math.ceil(num_frames / sample_stride)


# ---------------------------------------------------------------------------------------------- sample
def write_demo_sample(out_dir, num_frames: int = DEMO_FRAMES, fps: float = DEMO_FPS) -> DemoSample:
    """``out_dir/dancer.mp4`` (with a melody) + ``dancer.poses.parquet``, ``reference.png`` + its pose file.

    The same arguments always give the same pixels and poses. Every file appears atomically."""
    from PIL import Image

    from mimicmotion.curation import sidecar_path
    from mimicmotion.demo_model import DEMO_HEIGHT, DEMO_WIDTH
    from mimicmotion.pose.io import PoseSequence, save_poses
    from mimicmotion.synthetic import reference_image, render_clip, sample_clip
    from mimicmotion.video import write_video

    num_frames = _check_int("frames", num_frames, MIN_FRAMES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = demo_video_seed()
    appearance, motion = sample_clip(seed, duration=num_frames / fps)
    frames, poses = render_clip(appearance, motion, seed, width=DEMO_WIDTH, height=DEMO_HEIGHT,
                                num_frames=num_frames, fps=fps, source="dancer.mp4")
    driving = out / "dancer.mp4"
    save_poses(sidecar_path(driving), poses)  # the sidecar first: a video never appears without its poses
    tone = out / f".tone-{os.getpid()}.m4a"
    try:
        _write_tone(tone, seconds=num_frames / fps)
        write_video(driving, frames, fps=fps, audio_from=tone)
    finally:
        tone.unlink(missing_ok=True)

    image, pose = reference_image(appearance, motion, seed, width=DEMO_WIDTH, height=DEMO_HEIGHT,
                                  num_frames=num_frames, fps=fps)
    reference = out / "reference.png"
    tmp = out / f".reference-{os.getpid()}.png"
    try:
        Image.fromarray(image).save(tmp)
        os.replace(tmp, reference)
    finally:
        tmp.unlink(missing_ok=True)
    reference_pose = save_poses(out / "reference.poses.parquet", PoseSequence(
        frames=[pose], width=DEMO_WIDTH, height=DEMO_HEIGHT, source=reference.name))
    return DemoSample(driving_video=driving, driving_poses=sidecar_path(driving), reference=reference,
                      reference_pose=reference_pose, video_seed=seed, num_frames=num_frames, fps=float(fps))


def write_sample(out_dir, num_frames: int = 48, fps: float = 24.0, size=(512, 288), seed: int = 0):
    """A small hand-drawn sample (stick figure, any size) for tests of the pose and render commands:
    driving video with audio + its poses, a 704x1216 reference + its pose file."""
    from PIL import Image

    from mimicmotion.pose.io import PoseSequence, save_poses
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    poses = dance_poses(num_frames, fps, w, h, seed=seed)
    driving = out / "driving.mp4"
    audio = out / ".tone.m4a"
    try:
        _write_tone(audio, seconds=num_frames / fps)
        write_video(driving, (draw_figure(p, h, w, seed=seed) for p in poses), fps=fps, audio_from=audio)
    finally:
        audio.unlink(missing_ok=True)
    save_poses(out / "driving_poses.parquet", PoseSequence(
        frames=poses, width=w, height=h, fps=fps, source=str(driving.resolve()),
        source_frames=list(range(num_frames)), sample_stride=1))

    ref_pose = dance_poses(1, fps, 704, 1216, seed=seed + 1)
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


# ---------------------------------------------------------------------------------------------- run
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"demo {name} must be an integer >= {minimum}, got {value!r}")
    return value


def run_demo(out_dir="out/demo", *, model_dir=None, actors: int = DEMO_ACTORS, steps: Optional[int] = None,
             frames: Optional[int] = None, quick: bool = False, progress: bool = True,
             log: Optional[Callable[[str], None]] = None) -> DemoOutputs:
    """Sample -> `curate` flow -> `render` flow (see the module docstring); returns where everything is.

    ``model_dir``: a demo-model folder (``base/`` + ``mimicmotion-demo.safetensors``; default: the one shipped
    in the package). ``actors``: Ray actors that denoise (0 = in this process). ``quick``: the short run CI
    uses (``QUICK_FRAMES`` frames, ``QUICK_STEPS`` steps) unless ``frames``/``steps`` are given.
    ``progress``: print one line per stage (to ``log``, default ``print``)."""
    from mimicmotion.demo_model import DEMO_RESOLUTION, DEMO_TILE_OVERLAP, DEMO_TILE_SIZE, demo_model_paths

    start = time.perf_counter()
    if frames is None:
        frames = QUICK_FRAMES if quick else DEMO_FRAMES
    if steps is None:
        steps = QUICK_STEPS if quick else DEMO_STEPS
    frames, steps = _check_int("frames", frames, MIN_FRAMES), _check_int("steps", steps, 1)
    actors = _check_int("actors", actors, 0)
    say = (log or print) if progress else (lambda _: None)
    base_model, checkpoint = demo_model_paths(model_dir)  # before any work: a missing model is one clear error
    out = Path(out_dir)
    seconds = {}

    t = time.perf_counter()
    sample = write_demo_sample(out / SAMPLE_DIR, num_frames=frames)
    seconds["sample"] = time.perf_counter() - t
    say(f"[1/3] sample: {sample.num_frames} frames of a generated dancer -> {sample.driving_video} "
        f"({seconds['sample']:.1f} s)")

    with ExitStack() as stack:
        stack.enter_context(_quiet_model_loading())
        stack.enter_context(prefect_session())
        t = time.perf_counter()
        catalog = out / CATALOG_DIR
        clip_id, clip_frames = curate_sample(sample, catalog)
        seconds["curate"] = time.perf_counter() - t
        say(f"[2/3] curate: clip {clip_id} ({clip_frames} poses) in {catalog} ({seconds['curate']:.1f} s)")

        t = time.perf_counter()
        if actors:
            stack.enter_context(_local_ray())
        from flows.render import render

        result = render(reference=str(sample.reference), base_model=str(base_model), checkpoint=str(checkpoint),
                        out_dir=str(out), name=RENDER_NAME, clip_id=clip_id, catalog=str(catalog),
                        ref_pose=str(sample.reference_pose), resolution=DEMO_RESOLUTION,
                        sample_stride=DEMO_SAMPLE_STRIDE, tile_size=DEMO_TILE_SIZE, tile_overlap=DEMO_TILE_OVERLAP,
                        steps=steps, actors=actors, device="cpu")
    seconds["render"] = time.perf_counter() - t
    say(f"[3/3] render: {result['frames']} frames, {steps} steps, "
        f"{f'{actors} Ray actors' if actors else 'in this process'} -> {result['video']} ({seconds['render']:.1f} s)")
    seconds["total"] = time.perf_counter() - start
    return DemoOutputs(sample=sample, catalog=catalog, clip_id=clip_id, base_model=Path(base_model),
                       checkpoint=Path(checkpoint), render=Path(result["video"]), preview=Path(result["preview"]),
                       thumbnails=Path(result["thumbnails"]), num_frames=int(result["frames"]),
                       fps=float(result["fps"]), has_audio=bool(result["audio"]), seconds=seconds)


def curate_sample(sample: DemoSample, catalog) -> tuple[str, int]:
    """Curate the driving clip into ``catalog`` as one clip with the `curate` flow; returns (clip id, poses).
    A re-run with the same sample finds it already curated (same content, same clip id)."""
    from catalog import Catalog
    from catalog.ingest import video_id_of
    from flows.curate import curate
    from mimicmotion.curation import file_sha256
    from mimicmotion.demo_model import DEMO_RESOLUTION

    length = sampled_length(sample.num_frames)
    summary = curate(inputs=[str(sample.driving_video)], catalog=str(catalog), pose_source="sidecar",
                     sample_stride=DEMO_SAMPLE_STRIDE, clip_length=length, min_clip_length=length,
                     aspect=DEMO_ASPECT, resolution=DEMO_RESOLUTION, contact_sheet_tiles=1)
    if summary["failed"]:
        failure = summary["failures"][0]
        raise MimicMotionError(f"curating the demo clip {failure['path']} failed ({failure['kind']}): "
                               f"{failure['reason']}")
    video_id = video_id_of(file_sha256(sample.driving_video))
    clips = Catalog(catalog).query("SELECT clip_id, num_frames FROM clips WHERE video_id = $video_id "
                                   "ORDER BY clip_index", {"video_id": video_id}).to_pylist()
    if len(clips) != 1 or clips[0]["num_frames"] != length:
        raise MimicMotionError(f"the demo clip {sample.driving_video} became {len(clips)} clip(s) "
                               f"({[c['num_frames'] for c in clips]} poses) in {catalog}, expected one of {length}: "
                               f"delete {catalog} and run the demo again")
    return clips[0]["clip_id"], length


# ---------------------------------------------------------------------------------------------- environment
@contextmanager
def prefect_session():
    """Flows run against ``PREFECT_API_URL`` when it is set (checked to answer first), else against a
    temporary local server Prefect starts on first use and stops at exit, whatever the active profile says.
    Anonymous usage reporting is off (no network is needed)."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    api_url = PREFECT_API_URL.value()
    if api_url:
        _check_prefect_api(api_url)
        yield
        return
    updates = {PREFECT_SERVER_EPHEMERAL_ENABLED: True, PREFECT_SERVER_ANALYTICS_ENABLED: False,
               # a first start creates the database; a busy 2-core machine needs more than the default 20 s
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:
                   max(120, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())}
    with temporary_settings(updates=updates):
        yield


def _check_prefect_api(api_url: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise MimicMotionError(f"the Prefect server at PREFECT_API_URL={api_url} does not answer ({error}): start "
                               "it (`prefect server start`), or unset PREFECT_API_URL to use a temporary local one")


class _NoPrefectInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("prefect")


def hide_prefect_info() -> None:
    """Keep Prefect's INFO lines (temporary server, flow and task states) off the console handlers of the
    root logger for the rest of the process; they still reach Prefect's database. Warnings still show."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoPrefectInfo) for f in handler.filters):
            handler.addFilter(_NoPrefectInfo())


# Start-up notices of a local Ray: "Started a local Ray instance." and that it uses token authentication
# (its secure default, announced as a warning). Anything else Ray says still shows.
_RAY_START_LOGGERS = ("ray._private.worker", "ray._private.authentication.authentication_token_setup")


class _NoRayStartNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.getMessage().startswith(
            "Token authentication is enabled")


@contextmanager
def _local_ray():
    """Ray for the render flow's actors: started here (the flow would start it too) so it is shut down after."""
    import ray

    from tasks.ray_render import ensure_ray

    started = not ray.is_initialized()
    quiet = _NoRayStartNotice()
    for name in _RAY_START_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        ensure_ray()
    finally:
        for name in _RAY_START_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _quiet_model_loading():
    """Hide the model libraries' load-time notices and progress bars (tiny local files, nothing to report)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    levels = [(lib, lib.get_verbosity()) for lib in (diffusers_logging, transformers_logging)]
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in levels:
        lib.set_verbosity(logging.ERROR)
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level in levels:
            lib.set_verbosity(level)
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()


def format_outputs(outputs: DemoOutputs) -> str:
    """Where everything is, one line each (what `mimicmotion demo` prints at the end)."""
    s = outputs.sample
    lines = [
        ("driving video", f"{s.driving_video} ({s.num_frames} frames at {s.fps:g} fps, with audio; "
                          f"synthetic dancer {DEMO_VIDEO_INDEX} of `mimicmotion synth --seed {DEMO_DATASET_SEED}`)"),
        ("driving poses", f"{s.driving_poses}"),
        ("reference", f"{s.reference} + {s.reference_pose}"),
        ("catalog", f"{outputs.catalog} (clip {outputs.clip_id})"),
        ("model", f"{outputs.base_model} + {outputs.checkpoint}"),
        ("render", f"{outputs.render} ({outputs.num_frames} frames at {outputs.fps:g} fps, "
                   f"audio {'kept' if outputs.has_audio else 'none'})"),
        ("preview", f"{outputs.preview} (reference | pose | output)"),
        ("thumbnails", f"{outputs.thumbnails}"),
    ]
    total = outputs.seconds.get("total")
    if total is not None:
        lines.append(("time", f"{total:.1f} s"))
    return "\n".join(f"{name:<14} {text}" for name, text in lines)
