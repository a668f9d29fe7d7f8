"""Write a synthetic dataset: ``out/<split>/<name>.mp4`` + ``<name>.poses.parquet`` sidecars + a manifest.

Every video is rendered from its own seed (derived from the dataset seed and its index), so a video can be
regenerated alone and extending a dataset (more videos, same settings) leaves the existing ones and their
split untouched. Files appear atomically, the sidecar before its video, and a re-run skips every video
whose video and sidecar exist. The manifest lists the videos once a run completes.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict
from numbers import Integral, Real
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from mimicmotion.curation import sidecar_path
from mimicmotion.errors import ConfigError
from mimicmotion.pose.io import save_poses
from mimicmotion.synthetic.clip import (DetectorNoise, clip_camera, reference_image, render_clip_detailed,
                                        resolve_noise, sample_clip)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mimicmotion-synthetic"
# Bump when a change to the generator changes the pixels or poses of a given seed.
GENERATOR_VERSION = 1
_SPLIT_STREAM = 0x5B117
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def video_seed(seed: int, index: int) -> int:
    """The render seed of video ``index`` of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def is_test_video(seed: int, index: int, test_fraction: float) -> bool:
    """Whether video ``index`` is in the test split. Evenly spread with a seeded offset: any first n videos
    hold round(n * test_fraction) test videos, give or take one, and adding videos never moves one."""
    offset = np.random.SeedSequence([int(seed), _SPLIT_STREAM]).generate_state(1)[0] / 2.0**32
    return math.floor((index + 1) * test_fraction + offset) - math.floor(index * test_fraction + offset) == 1


def video_name(index: int) -> str:
    return f"synth_{index:05d}"


def _settings(seed, split, test_fraction, width, height, fps, num_frames, noise: Optional[DetectorNoise]) -> dict:
    return {"seed": int(seed), "split": list(split), "test_fraction": float(test_fraction), "width": int(width),
            "height": int(height), "fps": float(fps), "num_frames": int(num_frames),
            "detector_noise": None if noise is None else {**asdict(noise), "false_score": list(noise.false_score)},
            "generator_version": GENERATOR_VERSION}


def _validate(num_videos, seed, split, test_fraction, width, height, fps, num_frames):
    def integer(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")

    integer("num_videos", num_videos, 0)
    integer("seed", seed, 0)
    integer("width", width, 16)
    integer("height", height, 16)
    integer("num_frames", num_frames, 1)
    if isinstance(fps, bool) or not isinstance(fps, Real) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real) or not 0.0 <= test_fraction <= 1.0:
        raise ConfigError(f"test_fraction must be a number in [0, 1], got {test_fraction!r}")
    if (isinstance(split, str) or len(split) != 2 or len(set(split)) != 2
            or not all(isinstance(s, str) and _NAME_RE.match(s) for s in split)):
        raise ConfigError(f"split must be two different folder names (train, test), e.g. ('train', 'test'); "
                          f"got {split!r}")


def _write_json(path: Path, data: dict) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; True when written."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def load_manifest(out_dir) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{out_dir} has no {MANIFEST_NAME}: generate the dataset with "
                          f"`mimicmotion synth --out {out_dir}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); delete it and re-run `mimicmotion synth`") from exc
    if data.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{path} is not a synthetic-dataset manifest (format {data.get('format')!r})")
    return data


def entry_clip(entry: dict):
    """(appearance, motion, seed) of a manifest entry: re-renders its clip or a reference of its person."""
    app, motion = sample_clip(entry["seed"], duration=entry["num_frames"] / entry["fps"])
    return app, motion, entry["seed"]


def entry_reference(entry: dict, variant: int = 0):
    """A reference image of a manifest entry's person (same backdrop and framing, another pose)."""
    app, motion, seed = entry_clip(entry)
    return reference_image(app, motion, seed, width=entry["width"], height=entry["height"],
                           num_frames=entry["num_frames"], fps=entry["fps"], variant=variant)


def generate_dataset(out_dir, num_videos: int, seed: int = 0, split: Sequence[str] = ("train", "test"),
                     test_fraction: float = 0.2, width: int = 128, height: int = 128, fps: float = 24.0,
                     num_frames: int = 48, detector_noise: Union[bool, DetectorNoise, None] = False,
                     progress: Optional[Callable[[int, int, bool], None]] = None) -> dict:
    """Render ``num_videos`` dancing-figure clips into ``out_dir/<split>/`` with their pose sidecars and
    ``manifest.json``; returns the manifest. Re-running skips finished videos; a folder made with other
    settings (size, frames, seed, ...) is refused. ``progress(done, total, rendered)`` is called per video."""
    _validate(num_videos, seed, split, test_fraction, width, height, fps, num_frames)
    noise = resolve_noise(detector_noise)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder: pass a folder for the dataset")
    settings = _settings(seed, split, test_fraction, width, height, fps, num_frames, noise)
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file():
        old = load_manifest(out)["settings"]
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differ:
            was = ", ".join(f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in differ)
            raise ConfigError(f"{out} holds a synthetic dataset made with other settings: {was}; "
                              "use a new --out folder, or the same settings to extend it")
    out.mkdir(parents=True, exist_ok=True)
    for name in split:
        (out / name).mkdir(exist_ok=True)
    if not manifest_path.is_file():  # record the settings first, so a second run can check them
        _write_json(manifest_path, {"format": MANIFEST_FORMAT, "settings": settings, "videos": []})
    duration = num_frames / fps
    entries = []
    for index in range(num_videos):
        vseed = video_seed(seed, index)
        part = split[1] if is_test_video(seed, index, test_fraction) else split[0]
        name = video_name(index)
        video = out / part / f"{name}.mp4"
        poses = sidecar_path(video)
        app, motion = sample_clip(vseed, duration=duration)
        rendered = not (video.is_file() and poses.is_file())
        if rendered:
            from mimicmotion.video import write_video

            clip = render_clip_detailed(app, motion, vseed, width=width, height=height, num_frames=num_frames, fps=fps,
                                        detector_noise=noise, source=f"{part}/{video.name}")
            # Sidecar first: a video never appears without its poses (a curate run may be watching).
            save_poses(poses, clip.poses)
            write_video(video, clip.frames, fps=fps)
            camera = clip.camera
        else:
            camera = clip_camera(app, motion, vseed, width=width, height=height, num_frames=num_frames, fps=fps)
        entries.append({
            "name": name, "index": index, "split": part, "seed": vseed, "video": f"{part}/{video.name}",
            "poses": f"{part}/{poses.name}", "width": width, "height": height, "fps": float(fps),
            "num_frames": num_frames, "appearance": app.to_dict(), "motion": motion.summary(),
            "camera": {k: (round(float(v), 4) if not isinstance(v, bool) else v) for k, v in asdict(camera).items()},
        })
        if progress is not None:
            progress(index + 1, num_videos, rendered)
    # Entries of videos beyond num_videos from an earlier, larger run stay listed (their files exist).
    if manifest_path.is_file():
        known = {e["name"]: e for e in load_manifest(out).get("videos", [])}
        known.update({e["name"]: e for e in entries})
        entries = [known[k] for k in sorted(known)]
    manifest = {"format": MANIFEST_FORMAT, "settings": settings, "videos": entries,
                "counts": {name: sum(1 for e in entries if e["split"] == name) for name in split}}
    _write_json(manifest_path, manifest)
    return load_manifest(out)  # as stored (JSON types), so callers see what later runs will read
