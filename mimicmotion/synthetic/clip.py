"""Render clips with ground-truth poses: (appearance, motion, seed) -> frames + PoseSequence.

Random streams are derived from the seed by name (``stream(seed, "camera")`` ...), so the camera, the
confidence wobble and the detector noise are independent of one another and of the appearance and
motion: turning detector noise on changes the poses and never the pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Optional, Union

import numpy as np

from mimicmotion.errors import ConfigError
from mimicmotion.pose.io import PoseSequence
from mimicmotion.pose.layout import FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND, VISIBLE_THRESHOLD
from mimicmotion.synthetic import kinematics as kin
from mimicmotion.synthetic.appearance import Appearance, sample_appearance
from mimicmotion.synthetic.motion import Channel, Motion, sample_motion
from mimicmotion.synthetic.render import Camera, build_scene, draw_scene

_STREAMS = {"appearance": 1, "motion": 2, "camera": 3, "scores": 4, "noise": 5, "reference": 6}
BODY_POINTS = slice(0, 18)
CROP_PROBABILITY = 0.2


def stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """An independent generator for one purpose (``name``) of one clip seed."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[name], *map(int, extra)]))


def sample_clip(seed: int, duration: float = 2.0) -> tuple[Appearance, Motion]:
    """The person and the dance of clip ``seed`` (``duration`` seconds places the occasional turn)."""
    return sample_appearance(stream(seed, "appearance")), sample_motion(stream(seed, "motion"), duration=duration)


# ------------------------------------------------------------------------------------------------ checks


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


# ------------------------------------------------------------------------------------------------ camera


def _figure_points(pose: kin.Pose3D) -> np.ndarray:
    """Keypoints plus the top of the head (N,135,3): what framing must keep in view."""
    return np.concatenate([kin.keypoints_3d(pose), pose.joints["head_top"][:, None]], 1)


def _inside(px: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    return ((px[..., 0] >= margin) & (px[..., 0] <= width - 1 - margin)
            & (px[..., 1] >= margin) & (px[..., 1] <= height - 1 - margin))


def sample_camera(rng: np.random.Generator, pose: kin.Pose3D, times, width: int, height: int,
                  crop_probability: float = CROP_PROBABILITY) -> Camera:
    """Framing for a clip: usually the whole figure in view at 60-86% of the frame height with a slow
    drift and zoom; with ``crop_probability`` a close-up or off-centre framing that cuts part of the
    body off (at least 8 of the 18 body points stay in view in every frame)."""
    pts = _figure_points(pose)
    t = np.asarray(times, np.float64)
    cropped = rng.random() < crop_probability
    if cropped:
        for _ in range(12):
            mode = rng.choice(["zoom", "side", "low"])
            frac, ground, x0 = rng.uniform(0.65, 0.85), rng.uniform(0.9, 0.97), rng.uniform(0.4, 0.6)
            if mode == "zoom":
                frac, ground = rng.uniform(1.0, 1.35), rng.uniform(1.0, 1.25)
            elif mode == "side":
                x0 = rng.choice([rng.uniform(0.02, 0.15), rng.uniform(0.85, 0.98)])
            else:
                ground = rng.uniform(1.05, 1.2)
            cam = Camera(scale=frac * height, x=x0 * width, ground=ground * height,
                         drift=rng.uniform(-0.03, 0.03) * width, zoom=rng.uniform(-0.03, 0.03), cropped=True)
            inside = _inside(cam.project(pts[:, BODY_POINTS], t), width, height)
            if inside.sum(1).min() >= 8 and inside.mean() >= 0.6:
                return cam
    frac, ground, x0 = rng.uniform(0.6, 0.86), rng.uniform(0.9, 0.97), rng.uniform(0.4, 0.6)
    drift, zoom = rng.uniform(-0.04, 0.04) * width, rng.uniform(-0.04, 0.04)
    for _ in range(20):
        cam = Camera(scale=frac * height, x=x0 * width, ground=ground * height, drift=drift, zoom=zoom)
        px = cam.project(pts, t)
        margin = 0.02 * frac * height
        if _inside(px, width, height, margin).all():
            return cam
        # Shrink and recentre on the clip's extent until it fits.
        lo, hi = px[..., 0].min(), px[..., 0].max()
        x0 += ((width - 1) / 2 - (lo + hi) / 2) / width
        top = px[..., 1].min()
        if top < margin:
            ground = min(ground + (margin - top) / height, 0.985)
        frac *= 0.93
        drift *= 0.5
        zoom *= 0.5
    return cam


# ------------------------------------------------------------------------------------------------ scores


def blur_factor(speed) -> np.ndarray:
    """How much motion blur lowers a detector's confidence: 1 up to 1 body height per second, then
    falling (0.67 at 2, 0.3 at 4 body heights/s)."""
    return np.exp(-np.maximum(np.asarray(speed, np.float64) - 1.0, 0.0) / 2.5)


def _base_scores(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Confidence of clearly visible points: 0.85-1.0 by body region, wobbling slowly."""
    lo = np.full(NUM_POINTS, 0.93)
    hi = np.full(NUM_POINTS, 1.0)
    lo[FACE], hi[FACE] = 0.9, 0.99
    for sl in (LEFT_HAND, RIGHT_HAND):
        lo[sl], hi[sl] = 0.86, 0.98
    level = rng.uniform(lo, hi)
    amp = rng.uniform(0.0, 0.02, NUM_POINTS)
    freq = rng.uniform(0.2, 1.0, NUM_POINTS)
    phase = rng.uniform(0, 2 * math.pi, NUM_POINTS)
    return np.clip(level + amp * np.sin(2 * math.pi * freq * times[:, None] + phase), 0.0, 1.0)


def finish_poses(xy_px: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel positions and scores -> normalised (N,134,3) poses: points outside the frame or with score
    0 get NaN and 0, and the neck follows the release's rule (midpoint of the shoulders, score 1.0 when
    both shoulders score above 0.3, else no neck)."""
    out = np.empty(xy_px.shape[:-1] + (3,), np.float64)
    out[..., 0] = xy_px[..., 0] / width
    out[..., 1] = xy_px[..., 1] / height
    out[..., 2] = scores
    neck_ok = (scores[..., 2] > VISIBLE_THRESHOLD) & (scores[..., 5] > VISIBLE_THRESHOLD) & \
        _inside(xy_px[..., 2, :], width, height) & _inside(xy_px[..., 5, :], width, height)
    out[..., 1, :2] = 0.5 * (out[..., 2, :2] + out[..., 5, :2])
    out[..., 1, 2] = np.where(neck_ok, 1.0, 0.0)
    missing = ~_inside(xy_px, width, height) | ~(out[..., 2] > 0) | ~np.isfinite(xy_px).all(-1)
    missing[..., 1] = ~neck_ok
    out[missing, 0:2] = np.nan
    out[missing, 2] = 0.0
    return out


@dataclass(frozen=True)
class DetectorNoise:
    """Detector-like corruption of the ground truth, for ablations (off by default everywhere).

    ``jitter``: position noise std as a fraction of the body height (doubled for a point scoring 0);
    ``drop_rate``: chance a located point is lost; ``false_rate``: chance a point is replaced by a false,
    low-confidence detection somewhere on the person's box; ``score_jitter``: noise on the scores."""

    jitter: float = 0.008
    drop_rate: float = 0.03
    false_rate: float = 0.01
    false_score: tuple = (0.05, 0.3)
    score_jitter: float = 0.03

    def validate(self) -> "DetectorNoise":
        for name in ("jitter", "drop_rate", "false_rate", "score_jitter"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"DetectorNoise.{name} must be in [0, 1], got {v!r}")
        lo, hi = self.false_score
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"DetectorNoise.false_score must be (low, high) within [0, 1], got {self.false_score!r}")
        return self


def resolve_noise(detector_noise) -> Optional[DetectorNoise]:
    """``None``/``False`` -> no noise, ``True`` -> defaults, a DetectorNoise -> itself (validated)."""
    if detector_noise is None or detector_noise is False:
        return None
    if detector_noise is True:
        return DetectorNoise()
    if isinstance(detector_noise, DetectorNoise):
        return detector_noise.validate()
    if isinstance(detector_noise, dict):
        score = tuple(detector_noise.get("false_score", DetectorNoise.false_score))
        return DetectorNoise(**{**detector_noise, "false_score": score}).validate()
    raise ConfigError(f"detector_noise must be a bool or DetectorNoise, got {detector_noise!r}")


def apply_detector_noise(xy_px: np.ndarray, scores: np.ndarray, body_px: np.ndarray, width: int, height: int,
                         noise: DetectorNoise, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt pixel positions (N,134,2) and scores (N,134) the way a pose detector would."""
    xy = xy_px.copy()
    sc = scores.copy()
    n = xy.shape[0]
    sigma = noise.jitter * body_px[:, None] * (2.0 - np.clip(sc, 0, 1))
    xy = xy + rng.normal(size=xy.shape) * sigma[..., None]
    sc = np.clip(sc + rng.normal(0.0, noise.score_jitter, sc.shape), 0.01, 1.0)
    drop = rng.random(sc.shape) < noise.drop_rate
    false = rng.random(sc.shape) < noise.false_rate
    located = np.isfinite(xy).all(-1) & _inside(xy_px, width, height)
    lo = np.where(located[..., None], xy_px, np.inf).min(1)  # (N,2) person's box from the clean points
    hi = np.where(located[..., None], xy_px, -np.inf).max(1)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, [width - 1, height - 1])
    pad = 0.1 * (hi - lo)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, [width - 1, height - 1])
    u = rng.random((n, NUM_POINTS, 2))
    fake_xy = lo[:, None] + u * (hi - lo)[:, None]
    fake_score = rng.uniform(noise.false_score[0], noise.false_score[1], sc.shape)
    xy = np.where(false[..., None], fake_xy, xy)
    sc = np.where(false, fake_score, sc)
    sc = np.where(drop & ~false, 0.0, sc)
    return xy, sc


# ------------------------------------------------------------------------------------------------ clips


@dataclass
class RenderedClip:
    frames: np.ndarray  # (N,H,W,3) uint8 RGB
    poses: PoseSequence  # what a sidecar holds (with detector noise when asked)
    clean: np.ndarray  # (N,134,3) ground truth before detector noise
    camera: Camera
    occlusion: np.ndarray  # (N,134)
    speed: np.ndarray  # (N,134) body heights per second


def _times(num_frames: int, fps: float, start_time: float) -> np.ndarray:
    return start_time + np.arange(num_frames, dtype=np.float64) / fps


def clip_camera(appearance: Appearance, motion: Motion, seed: int, *, width: int, height: int, num_frames: int,
                fps: float = 24.0, start_time: float = 0.0) -> Camera:
    """The framing ``render_clip`` uses for this clip."""
    times = _times(num_frames, fps, start_time)
    pose = kin.solve(appearance.body, motion.evaluate(times))
    return sample_camera(stream(seed, "camera"), pose, times - start_time, width, height)


def render_clip_detailed(appearance: Appearance, motion: Motion, seed: int, *, width: int = 128, height: int = 128,
                         num_frames: int = 48, fps: float = 24.0, camera: Optional[Camera] = None,
                         detector_noise: Union[bool, DetectorNoise, None] = None, start_time: float = 0.0,
                         source: str = "") -> RenderedClip:
    """:func:`render_clip` plus the clean poses, camera, occlusion and speeds (for tests and evaluation)."""
    width, height = _check_int("width", width, 16), _check_int("height", height, 16)
    num_frames = _check_int("num_frames", num_frames, 1)
    fps = _check_fps(fps)
    noise = resolve_noise(detector_noise)
    times = _times(num_frames, fps, start_time)
    pose = kin.solve(appearance.body, motion.evaluate(times))
    if camera is None:
        camera = sample_camera(stream(seed, "camera"), pose, times - start_time, width, height)
    scene = build_scene(appearance, pose, camera, times - start_time, width, height, fps)
    drawn = draw_scene(scene, appearance)
    base = _base_scores(stream(seed, "scores"), times)
    scores = base * (1.0 - 0.78 * drawn.occlusion) * scene.facing * blur_factor(scene.speed)
    clean = finish_poses(scene.keypoints, scores, width, height)
    poses = clean
    if noise is not None:
        xy, sc = apply_detector_noise(scene.keypoints, scores, scene.scale, width, height, noise,
                                      stream(seed, "noise"))
        poses = finish_poses(xy, sc, width, height)
    seq = PoseSequence(frames=[p[None] for p in poses], width=width, height=height, fps=fps, source=source,
                       source_frames=list(range(num_frames)), sample_stride=1)
    return RenderedClip(frames=drawn.frames, poses=seq, clean=clean, camera=camera, occlusion=drawn.occlusion,
                        speed=scene.speed)


def render_clip(appearance: Appearance, motion: Motion, seed: int, *, width: int = 128, height: int = 128,
                num_frames: int = 48, fps: float = 24.0, camera: Optional[Camera] = None,
                detector_noise: Union[bool, DetectorNoise, None] = None, start_time: float = 0.0,
                source: str = "") -> tuple[np.ndarray, PoseSequence]:
    """Frames (N,H,W,3) uint8 RGB and their poses (one person per frame, normalised, NaN + score 0 where
    a point is outside the frame). ``seed`` picks the framing, the confidence wobble and the detector
    noise; the same arguments always give the same result."""
    clip = render_clip_detailed(appearance, motion, seed, width=width, height=height, num_frames=num_frames, fps=fps,
                                camera=camera, detector_noise=detector_noise, start_time=start_time, source=source)
    return clip.frames, clip.poses


def reference_image(appearance: Appearance, motion: Motion, seed: int, *, width: int = 128, height: int = 128,
                    num_frames: int = 48, fps: float = 24.0, variant: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A frame of the same person, backdrop and framing as clip (appearance, motion, seed), in a pose of a
    different dance (mostly facing the camera, whole body in view): (H,W,3) uint8 and its pose (1,134,3).
    ``variant`` picks another reference of the same clip."""
    width, height = _check_int("width", width, 16), _check_int("height", height, 16)
    cam = clip_camera(appearance, motion, seed, width=width, height=height, num_frames=num_frames, fps=fps)
    still = Camera(scale=cam.scale, x=cam.x, ground=cam.ground, cropped=cam.cropped)
    rng = stream(seed, "reference", variant)
    for attempt in range(10):
        ref_motion = sample_motion(rng, turns=False)
        channels = dict(ref_motion.channels)
        channels["yaw"] = Channel(float(rng.uniform(-0.3, 0.3)))
        ref_motion = Motion(tempo=ref_motion.tempo, channels=channels, steps=ref_motion.steps,
                            bounce_depth=ref_motion.bounce_depth, bounce_phase=ref_motion.bounce_phase)
        t0 = float(rng.uniform(0.0, 4.0))
        pose = kin.solve(appearance.body, ref_motion.evaluate(np.array([t0])))
        body = still.project(kin.keypoints_3d(pose)[:, BODY_POINTS], np.zeros(1))
        if _inside(body, width, height).all() or attempt == 9:
            break
    clip = render_clip_detailed(appearance, ref_motion, seed, width=width, height=height, num_frames=1, fps=fps,
                                camera=still, start_time=t0)
    return clip.frames[0], clip.poses.frames[0]
