"""Curation of human-motion videos into training clips (the library side of the `curate` flow).

Per video: sampled-frame poses (a sidecar pose file or DWPose) -> which people are real -> the subject,
tracked from frame to frame -> runs of frames with a person -> clips of configurable length and stride ->
for each clip one fixed, person-centred crop to the training aspect (9:16 by default) that keeps the
subject's whole body for the whole clip -> quality statistics. Everything here is plain Python and numpy:
no Prefect, no Ray (those live in tasks/ and flows/), no catalog I/O (catalog/ turns the results into rows).

Conventions
-----------
* Poses are the project's (P, 134, 3) frames: x, y normalised by the frame's width and height, NaN where a
  point has no location. A point is *visible* when its score is above 0.3 (``VISIBLE_THRESHOLD``) and it
  has a location.
* A detected person *counts* when at least ``min_body_points`` of its 18 body joints are visible. DWPose
  returns one whole-frame "person" on frames where the detector finds nobody; on an empty frame its points
  are unreliable and it does not count, so such frames are personless.
* Frame positions (``start``, ``stop``) index the sampled sequence; ``source_frames`` maps them to decoded
  video frames. Stops are exclusive.
* Crop boxes are integer pixels ``(x, y, w, h)`` in the displayed (rotation-applied) source frame.

Sidecar pose files: ``clip.mp4`` may ship its poses as ``clip.poses.parquet`` next to it, in the pose-file
format of :mod:`mimicmotion.pose.io` (``mimicmotion pose clip.mp4 --out clip.poses.parquet`` writes one).
Its frames are used as they are (its own sampling); its width and height must be the video's.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from mimicmotion.errors import ConfigError, MimicMotionError, PoseError
from mimicmotion.pose.io import PoseSequence, load_poses
from mimicmotion.pose.layout import BODY, FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND, VISIBLE_THRESHOLD
from mimicmotion.video import effective_stride

SIDECAR_SUFFIX = ".poses.parquet"
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
DEFAULT_ASPECT = (9, 16)  # width : height of the training clips (SPEC 4: 576 x 1024)
LATENT_MULTIPLE = 64  # the long side of the output size is a multiple of this (SPEC 4)
# detect: run the pose estimator (see mimicmotion.pose.estimators); sidecar: <stem>.poses.parquet next to
# each video; auto: the sidecar when there is one, else detect; dwpose: detect with DWPose (older name).
POSE_SOURCES = ("detect", "sidecar", "auto", "dwpose")


class VideoRejected(MimicMotionError):
    """A readable video that yields no training clip; ``kind`` is ``no_person`` or ``too_short``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------------
# Settings

def parse_aspect(value) -> tuple[int, int]:
    """``"9:16"`` (or a pair) -> (9, 16): the width : height of the training clips."""
    if isinstance(value, str):
        parts = value.replace("/", ":").split(":")
        try:
            pair = tuple(int(p) for p in parts)
        except ValueError:
            pair = ()
    else:
        try:
            pair = tuple(int(p) for p in value)
        except (TypeError, ValueError):
            pair = ()
    if len(pair) != 2 or pair[0] <= 0 or pair[1] <= 0:
        raise ConfigError(f"aspect must be WIDTH:HEIGHT with positive integers, e.g. 9:16; got {value!r}")
    return pair


def output_size(aspect: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(width, height) of the training frames, SPEC section 4's rule: the short side is ``resolution`` and
    the long side is floor(resolution * long/short / 64) * 64, e.g. 9:16 at 576 -> (576, 1024)."""
    aw, ah = aspect
    if aw < ah:
        return resolution, int(resolution / (aw / ah) // LATENT_MULTIPLE) * LATENT_MULTIPLE
    if aw > ah:
        return int(resolution * (aw / ah) // LATENT_MULTIPLE) * LATENT_MULTIPLE, resolution
    return resolution, resolution


def _int_at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number_in(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CurationSettings:
    """How videos become clips. Lengths count sampled frames (after ``sample_stride``).

    ``clip_stride``: distance between the starts of consecutive clips of one run (None = ``clip_length``,
    adjacent clips; smaller values overlap). The last clip of a run may be shorter than ``clip_length``,
    never shorter than ``min_clip_length``.
    ``min_crop_fraction``: the crop's height is at least this fraction of the largest crop of the training
    aspect that fits in the frame. 1.0 (default) always uses that largest window, placed around the
    subject; smaller values let the crop zoom in on a small subject (down to this fraction).
    ``crop_margin``: room kept around the subject's body, as a fraction of its height on each side.
    ``hand_threshold``: a hand is reliable when all its 21 points score above this (the training loss's
    default for its hand-region weighting).
    """

    sample_stride: int = 2
    clip_length: int = 72
    clip_stride: Optional[int] = None
    min_clip_length: int = 16
    aspect: tuple = DEFAULT_ASPECT
    resolution: int = 576
    min_crop_fraction: float = 1.0
    crop_margin: float = 0.05
    min_body_points: int = 4
    hand_threshold: float = 0.6

    def validate(self) -> "CurationSettings":
        _int_at_least("sample_stride", self.sample_stride, 1)
        length = _int_at_least("clip_length", self.clip_length, 2)
        if self.clip_stride is not None:
            _int_at_least("clip_stride", self.clip_stride, 1)
        shortest = _int_at_least("min_clip_length", self.min_clip_length, 2)
        if shortest > length:
            raise ConfigError(f"min_clip_length ({shortest}) must not exceed clip_length ({length})")
        parse_aspect(self.aspect)
        _int_at_least("resolution", self.resolution, LATENT_MULTIPLE)
        _number_in("min_crop_fraction", self.min_crop_fraction, 0.0, 1.0, low_open=True)
        _number_in("crop_margin", self.crop_margin, 0.0, 1.0)
        _int_at_least("min_body_points", self.min_body_points, 1)
        if self.min_body_points > BODY.stop - BODY.start:
            raise ConfigError(f"min_body_points must be at most 18 (the body joints), got {self.min_body_points}")
        _number_in("hand_threshold", self.hand_threshold, 0.0, 1.0)
        return self

    @property
    def hop(self) -> int:
        return self.clip_stride if self.clip_stride is not None else self.clip_length

    @property
    def aspect_pair(self) -> tuple[int, int]:
        return parse_aspect(self.aspect)

    @property
    def output_size(self) -> tuple[int, int]:
        return output_size(self.aspect_pair, self.resolution)

    def to_json(self) -> str:
        data = asdict(self)
        data["aspect"] = list(self.aspect_pair)
        return json.dumps(data, sort_keys=True)


# ----------------------------------------------------------------------------------------------------
# Files

def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (videos never sit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(video_path) -> Path:
    """``dance.mp4`` -> ``dance.poses.parquet`` in the same folder."""
    p = Path(video_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def find_videos(inputs: Sequence, recursive: bool = True, settle_seconds: float = 0.0,
                now: Optional[float] = None) -> list[Path]:
    """The videos to curate: files given directly (any name), plus the files with a video extension
    (``VIDEO_SUFFIXES``) inside given folders. Hidden files and folders (name starting with '.') are
    skipped when scanning, as are files modified less than ``settle_seconds`` ago (still being copied into
    an inbox). Broken symbolic links with a video name are returned as they are, so that curating them reports
    why they failed. Sorted, without repeats. A missing input is a ConfigError."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    now = time.time() if now is None else now
    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_file():
            found[p.resolve()] = None
        elif p.is_dir():
            pattern = p.rglob("*") if recursive else p.glob("*")
            for f in pattern:
                rel = f.relative_to(p).parts
                if any(part.startswith(".") for part in rel) or f.suffix.lower() not in VIDEO_SUFFIXES:
                    continue
                if f.name.endswith(SIDECAR_SUFFIX):
                    continue
                if not f.is_file():
                    if f.is_symlink():  # dangling or a loop: reported as a failed video, not skipped silently
                        found[f.absolute()] = None
                    continue
                if settle_seconds > 0 and now - f.stat().st_mtime < settle_seconds:
                    continue
                found[f.resolve()] = None
        else:
            raise ConfigError(f"{p} does not exist: pass video files or folders of videos to curate")
    return sorted(found)


def load_sidecar(video_path, width: int, height: int, num_frames: int) -> PoseSequence:
    """The sidecar pose file of ``video_path``, checked against the video (size, frame indices)."""
    path = sidecar_path(video_path)
    if not path.is_file():
        raise PoseError(f"no sidecar pose file for {video_path}: expected {path} (write one with "
                        f"`mimicmotion pose {Path(video_path).name} --out {path.name}`, or curate with DWPose)")
    seq = load_poses(path)
    if (seq.width, seq.height) != (width, height):
        raise PoseError(f"{path} describes {seq.width}x{seq.height} frames but {video_path} is {width}x{height}: "
                        "the sidecar belongs to another video or version of it; re-extract it")
    src = np.asarray(seq.source_frames if seq.source_frames else range(len(seq)), dtype=np.int64)
    if len(src) != len(seq) or (len(src) and (src.min() < 0 or src.max() >= num_frames)):
        raise PoseError(f"{path} refers to frames outside 0..{num_frames - 1} of {video_path}: re-extract it")
    if len(src) > 1 and np.any(np.diff(src) <= 0):
        raise PoseError(f"{path}: its source frames are not strictly increasing; re-extract it")
    return PoseSequence(frames=list(seq.frames), width=width, height=height, fps=seq.fps,
                        source=str(video_path), source_frames=[int(s) for s in src],
                        sample_stride=seq.sample_stride)


def sample_sidecar(seq: PoseSequence, fps: float, sample_stride: int, sidecar_name: str = "sidecar") -> PoseSequence:
    """The sidecar's poses on the frames the release samples, so sidecar and DWPose curation make the same clips.

    A sidecar with every frame (stride 1) is thinned to the frames ``sample_indices`` picks (stride
    ``sample_stride * max(1, int(fps / 24))``); one already sampled at that stride is kept as it is. Any other
    stride would mix frame spacings across the catalog, so it is a PoseError that says how to fix it.
    """
    stride = effective_stride(fps, sample_stride)
    own = int(seq.sample_stride or 1)
    if own == stride:
        return seq
    if own != 1:
        raise PoseError(f"{sidecar_name} holds one frame in {own} but curation samples one in {stride} "
                        f"(sample_stride {sample_stride} at {fps:g} fps): curate with --sample-stride matching it, "
                        "or re-extract the sidecar with `mimicmotion pose VIDEO --sample-stride ...`")
    keep = [i for i, src in enumerate(seq.source_frames) if src % stride == 0]
    return PoseSequence(frames=[seq.frames[i] for i in keep], width=seq.width, height=seq.height,
                        fps=(seq.fps / stride) if seq.fps else seq.fps, source=seq.source,
                        source_frames=[seq.source_frames[i] for i in keep], sample_stride=stride)


# ----------------------------------------------------------------------------------------------------
# Pose detection over a video

def detect_poses(path, estimator, sample_stride: int = 2, batch_size: int = 16, info=None) -> PoseSequence:
    """Poses on the frames the release samples (stride = sample_stride * max(1, int(fps / 24))).

    ``estimator`` has ``estimate_batch(frames) -> list of (P, 134, 3)`` (DWPose or Holistic); one that also
    has ``estimate_batches(iterable of batches) -> iterator of results, in order`` (the Ray pool) gets the
    decoded batches as a stream, so decoding overlaps detection."""
    from mimicmotion.video import effective_stride, iter_frames, probe, sample_indices

    info = probe(path) if info is None else info
    indices = sample_indices(info.num_frames, info.fps, sample_stride)
    stride = effective_stride(info.fps, sample_stride)
    batches = (list(b) for b in iter_frames(path, indices, batch_size=batch_size))
    frames: list = []
    if hasattr(estimator, "estimate_batches"):
        for result in estimator.estimate_batches(batches):
            frames.extend(result)
    else:
        for batch in batches:
            frames.extend(estimator.estimate_batch(batch))
    if len(frames) != len(indices):
        raise PoseError(f"{path}: the pose estimator returned {len(frames)} frames for {len(indices)} sampled "
                        "frames")
    return PoseSequence(frames=frames, width=info.width, height=info.height, fps=info.fps / stride,
                        source=str(path), source_frames=list(indices), sample_stride=stride)


# ----------------------------------------------------------------------------------------------------
# People, boxes and the subject

def visible(points: np.ndarray, threshold: float = VISIBLE_THRESHOLD) -> np.ndarray:
    """Mask of points (..., 3) that have a location and a score above ``threshold``."""
    return (points[..., 2] > threshold) & np.isfinite(points[..., 0]) & np.isfinite(points[..., 1])


def real_people(frame: np.ndarray, min_body_points: int) -> np.ndarray:
    """Boolean (P,): which detections count as a person (>= ``min_body_points`` visible body joints)."""
    frame = np.asarray(frame, dtype=np.float64).reshape(-1, NUM_POINTS, 3)
    return visible(frame[:, BODY]).sum(axis=1) >= min_body_points


def person_box(person: np.ndarray, width: int, height: int) -> Optional[tuple[float, float, float, float]]:
    """Pixel box (x0, y0, x1, y1) around the person's visible points of every part, or None."""
    mask = visible(person)
    if not mask.any():
        return None
    xs, ys = person[mask, 0] * width, person[mask, 1] * height
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when the union has no area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def prominence(person: np.ndarray, box) -> float:
    """How much a person stands out: box area (pixels) times the mean score of its visible body joints."""
    body = person[BODY]
    mask = visible(body)
    return (box[2] - box[0]) * (box[3] - box[1]) * float(body[mask, 2].mean()) if mask.any() else 0.0


def track_subject(frames: Sequence[np.ndarray], width: int, height: int, min_body_points: int) -> list[int]:
    """The subject's person index in each frame, -1 where no person counts.

    The subject is followed from frame to frame: the counted person whose box overlaps the previous
    subject's box most (highest IoU). When nobody overlaps it, or after a personless frame, the most
    prominent counted person (area x confidence) is taken. Ties go to the lower index."""
    subjects: list[int] = []
    previous = None
    for frame in frames:
        frame = np.asarray(frame, dtype=np.float64).reshape(-1, NUM_POINTS, 3)
        counted = np.flatnonzero(real_people(frame, min_body_points))
        candidates = [(int(p), person_box(frame[p], width, height)) for p in counted]
        if not candidates:
            subjects.append(-1)
            previous = None
            continue
        chosen = None
        if previous is not None:
            overlaps = [box_iou(box, previous) for _, box in candidates]
            best = int(np.argmax(overlaps))
            if overlaps[best] > 0:
                chosen = candidates[best]
        if chosen is None:
            scores = [prominence(frame[p], box) for p, box in candidates]
            chosen = candidates[int(np.argmax(scores))]
        subjects.append(chosen[0])
        previous = chosen[1]
    return subjects


def person_runs(has_person: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive True values."""
    runs, start = [], None
    for i, flag in enumerate(has_person):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(has_person)))
    return runs


def split_run(start: int, stop: int, length: int, hop: int, min_length: int) -> list[tuple[int, int]]:
    """Clips [s, e) of one run: starts every ``hop`` frames, at most ``length`` long, at least
    ``min_length``; no clip starts after one has reached the end of the run."""
    clips = []
    s = start
    while s < stop:
        e = min(s + length, stop)
        if e - s >= min_length:
            clips.append((s, e))
        if e == stop:
            break
        s += hop
    return clips


# ----------------------------------------------------------------------------------------------------
# Crop

def crop_box(body_box, frame_width: int, frame_height: int, aspect: tuple[int, int] = DEFAULT_ASPECT,
             margin: float = 0.05, min_fraction: float = 1.0) -> tuple[int, int, int, int]:
    """A crop (x, y, w, h) of the training aspect, centred on ``body_box`` (x0, y0, x1, y1 pixels) and moved
    inside the frame.

    The crop must hold the box plus ``margin`` x box height on every side; its height is that need,
    raised to ``min_fraction`` of the largest crop of this aspect inside the frame and capped by it. When
    even the largest crop is too small for the body, the body's centre stays in the middle and the body is
    cut (the clip's ``body_coverage`` statistic then shows it)."""
    aw, ah = aspect
    x0, y0, x1, y1 = body_box
    pad = margin * (y1 - y0)
    need_h = max(y1 - y0 + 2 * pad, (x1 - x0 + 2 * pad) * ah / aw)
    max_h = min(frame_height, frame_width * ah / aw)
    h = min(max(need_h, min_fraction * max_h), max_h)
    crop_h = max(1, min(frame_height, round_half_up(h)))
    crop_w = max(1, min(frame_width, round_half_up(crop_h * aw / ah)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x = min(max(round_half_up(cx - crop_w / 2), 0), frame_width - crop_w)
    y = min(max(round_half_up(cy - crop_h / 2), 0), frame_height - crop_h)
    return x, y, crop_w, crop_h


def round_half_up(value: float) -> int:
    """Nearest integer, halves upwards (Python's round() sends halves to the even neighbour)."""
    return int(math.floor(value + 0.5))


def union_box(boxes: Iterable) -> tuple[float, float, float, float]:
    boxes = np.asarray([b for b in boxes if b is not None], dtype=np.float64)
    if boxes.size == 0:
        raise ValueError("union_box needs at least one box")
    return (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))


def to_crop_coordinates(frame: np.ndarray, crop, frame_width: int, frame_height: int) -> np.ndarray:
    """Keypoints (P, 134, 3) normalised to the full frame -> normalised to the crop (x, y, w, h). Points
    outside the crop get values outside [0, 1]; missing points stay NaN; scores are unchanged."""
    x, y, w, h = crop
    out = np.array(frame, dtype=np.float64, copy=True).reshape(-1, NUM_POINTS, 3)
    out[..., 0] = (out[..., 0] * frame_width - x) / w
    out[..., 1] = (out[..., 1] * frame_height - y) / h
    return out


def crop_and_resize(frame: np.ndarray, crop, out_width: int, out_height: int) -> np.ndarray:
    """The crop of an RGB frame resized to the output size (area averaging when shrinking)."""
    import cv2

    x, y, w, h = crop
    region = frame[y:y + h, x:x + w]
    shrink = out_width < w or out_height < h
    return cv2.resize(region, (out_width, out_height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------
# Quality statistics

@dataclass(frozen=True)
class ClipStats:
    """Quality of one clip; part confidences are of the subject (mean score over the part's points in a
    frame, then mean / min over the clip's frames; a missing point counts as 0)."""

    person_count: int  # most people counted in any frame
    mean_person_count: float
    body_conf_mean: float
    body_conf_min: float
    hand_conf_mean: float  # both hands' 42 points
    hand_conf_min: float
    face_conf_mean: float
    face_conf_min: float
    both_hands_fraction: float  # frames where both hands are reliable (every point > hand_threshold)
    motion_magnitude: Optional[float]  # mean speed of the body joints, crop heights per second
    body_coverage: float  # fraction of the subject's visible points inside the crop
    subject_height: float  # mean height of the subject's box over the crop's height


def part_confidence(person: np.ndarray, part: slice) -> float:
    scores = np.nan_to_num(person[part, 2], nan=0.0)
    return float(scores.mean())


def hand_reliable(person: np.ndarray, hand: slice, threshold: float) -> bool:
    return bool(visible(person[hand], threshold).all())


def motion_magnitude(subject_poses: Sequence[np.ndarray], width: int, height: int, crop_height: int,
                     fps: float) -> Optional[float]:
    """Mean displacement of the body joints visible in two consecutive frames, in crop heights per second
    (pixels use the frame's own width and height, so the measure is isotropic); None without such pairs."""
    steps = []
    for a, b in zip(subject_poses[:-1], subject_poses[1:]):
        both = visible(a[BODY]) & visible(b[BODY])
        if not both.any():
            continue
        dx = (b[BODY][both, 0] - a[BODY][both, 0]) * width
        dy = (b[BODY][both, 1] - a[BODY][both, 1]) * height
        steps.append(float(np.hypot(dx, dy).mean()))
    if not steps or fps <= 0:
        return None
    return float(np.mean(steps)) / crop_height * fps


def clip_stats(frames: Sequence[np.ndarray], subjects: Sequence[int], crop, width: int, height: int, fps: float,
               settings: CurationSettings) -> ClipStats:
    """Statistics of a clip: ``frames`` its (P, 134, 3) poses, ``subjects`` the subject index per frame."""
    counts = [int(real_people(f, settings.min_body_points).sum()) for f in frames]
    subject = [np.asarray(f, dtype=np.float64)[s] for f, s in zip(frames, subjects)]
    body = [part_confidence(p, BODY) for p in subject]
    hands = [float(np.nan_to_num(np.concatenate([p[LEFT_HAND, 2], p[RIGHT_HAND, 2]]), nan=0.0).mean())
             for p in subject]
    face = [part_confidence(p, FACE) for p in subject]
    both = [hand_reliable(p, LEFT_HAND, settings.hand_threshold) and hand_reliable(p, RIGHT_HAND, settings.hand_threshold)
            for p in subject]
    x, y, w, h = crop
    inside = total = 0
    heights = []
    for p in subject:
        mask = visible(p)
        px, py = p[mask, 0] * width, p[mask, 1] * height
        inside += int(((px >= x) & (px <= x + w) & (py >= y) & (py <= y + h)).sum())
        total += int(mask.sum())
        box = person_box(p, width, height)
        heights.append((box[3] - box[1]) / h if box is not None else 0.0)
    return ClipStats(
        person_count=max(counts), mean_person_count=float(np.mean(counts)),
        body_conf_mean=float(np.mean(body)), body_conf_min=float(np.min(body)),
        hand_conf_mean=float(np.mean(hands)), hand_conf_min=float(np.min(hands)),
        face_conf_mean=float(np.mean(face)), face_conf_min=float(np.min(face)),
        both_hands_fraction=float(np.mean(both)),
        motion_magnitude=motion_magnitude(subject, width, height, h, fps),
        body_coverage=inside / total if total else 0.0,
        subject_height=float(np.mean(heights)),
    )


# ----------------------------------------------------------------------------------------------------
# Clip planning

@dataclass(frozen=True)
class ClipPlan:
    """One clip of a video: sampled positions [start, stop), its crop and statistics."""

    index: int
    start: int
    stop: int
    crop: tuple  # (x, y, w, h) source pixels
    subjects: tuple  # subject's person index in each of the clip's frames
    stats: ClipStats

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


@dataclass
class VideoPlan:
    """Everything the catalog stores about a curated video besides the file facts."""

    poses: PoseSequence
    clips: list = field(default_factory=list)
    frames_with_person: int = 0


def plan_clips(seq: PoseSequence, settings: CurationSettings) -> VideoPlan:
    """Choose the subject, split into clips and crop them. Raises VideoRejected (``no_person`` or
    ``too_short``) when the video yields no clip; the message says why and what would help."""
    settings.validate()
    name = Path(seq.source).name or "the video"
    subjects = track_subject(seq.frames, seq.width, seq.height, settings.min_body_points)
    has_person = [s >= 0 for s in subjects]
    with_person = sum(has_person)
    if not seq.frames or with_person == 0:
        raise VideoRejected("no_person", f"{name}: no person found in any of its {len(seq.frames)} sampled frames "
                            f"(a person needs >= {settings.min_body_points} body joints scoring above "
                            f"{VISIBLE_THRESHOLD})")
    runs = person_runs(has_person)
    fps = seq.fps if seq.fps and seq.fps > 0 else 0.0
    clips = []
    for run_start, run_stop in runs:
        for start, stop in split_run(run_start, run_stop, settings.clip_length, settings.hop,
                                     settings.min_clip_length):
            frames = seq.frames[start:stop]
            subs = subjects[start:stop]
            boxes = [person_box(np.asarray(f, dtype=np.float64)[s], seq.width, seq.height) for f, s in zip(frames, subs)]
            crop = crop_box(union_box(boxes), seq.width, seq.height, settings.aspect_pair, settings.crop_margin,
                            settings.min_crop_fraction)
            stats = clip_stats(frames, subs, crop, seq.width, seq.height, fps, settings)
            clips.append(ClipPlan(index=len(clips), start=start, stop=stop, crop=crop, subjects=tuple(subs),
                                  stats=stats))
    if not clips:
        longest = max(stop - start for start, stop in runs)
        raise VideoRejected("too_short", f"{name}: too short: its longest stretch with a person is {longest} sampled "
                            f"frame(s) (sample stride {seq.sample_stride}), a clip needs at least "
                            f"{settings.min_clip_length}; lower min_clip_length or sample_stride to keep it")
    return VideoPlan(poses=seq, clips=clips, frames_with_person=with_person)


# ----------------------------------------------------------------------------------------------------
# Contact sheet

def overlay_pose(image: np.ndarray, frame_poses: np.ndarray) -> np.ndarray:
    """The image with the pose drawing (SPEC 3 style, all people) laid over it where it is not black."""
    from mimicmotion.pose.draw import draw_pose

    h, w = image.shape[:2]
    drawing = draw_pose(frame_poses, h, w, canvas_short_side=max(2 * min(h, w), 64))
    lit = drawing.max(axis=-1, keepdims=True) > 0
    return np.where(lit, drawing, (image * 0.6).astype(np.uint8))


def contact_sheet(tiles: Sequence[tuple[np.ndarray, str]], columns: int = 6, label_height: int = 18) -> np.ndarray:
    """Tiles (same-size RGB images) in a grid, each with its label written under it: uint8 RGB."""
    import cv2

    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    th, tw = tiles[0][0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    sheet = np.full((rows * (th + label_height), columns * tw, 3), 24, dtype=np.uint8)
    for k, (img, label) in enumerate(tiles):
        if img.shape[:2] != (th, tw):
            raise ValueError(f"tile {k} is {img.shape[1]}x{img.shape[0]}, the first is {tw}x{th}")
        r, c = divmod(k, columns)
        top, left = r * (th + label_height), c * tw
        sheet[top:top + th, left:left + tw] = img
        # Draw into the label strip alone (a contiguous row band), so text never spills onto a tile.
        strip = sheet[top + th:top + th + label_height]
        cv2.putText(strip, label[: max(4, tw // 8)], (left + 3, max(1, label_height - 5)), cv2.FONT_HERSHEY_SIMPLEX,
                    label_height / 50, (230, 230, 230), 1, cv2.LINE_AA)
    return sheet

