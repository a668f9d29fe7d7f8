"""Map driving poses into the reference image's frame (SPEC section 4).

The release fits a per-axis linear map ``p_ref = a * p_drv + b`` on the body points {0,1,2,5,8..17} (no
arms) that are visible (score > 0.3) in the reference's person 0:

- vertical: least squares ``y_ref ~ a_y * y_drv + b_y`` (``np.polyfit``, degree 1) over every
  (frame, point) pair of the frames that hold exactly one person;
- horizontal: ``a_x = a_y / (H_drv / W_drv / H_ref * W_ref)`` keeps pixels square, and
  ``b_x = mean(x_ref - a_x * x_drv)``.

Coordinates are normalised (x by width, y by height), as in the pose layout. When every driving point
used is reliable, :func:`fit_alignment` builds the same arrays in the same order and makes the same
calls as the release, so ``(a, b)`` is bit-identical. Where the release crashes or fits on junk, this
module does what a user wants instead:

- pairs whose driving point is unreliable (score <= threshold) or has no location are left out;
- when no frame has exactly one person (or those frames have no usable point), each frame's most
  confident person (highest mean score over the fit points) is used;
- when the reference's person 0 has no usable fit point, its most confident person is used (the release
  always uses person 0);
- when the points carry no vertical scale information (the driving or the reference y values spread by
  less than ``MIN_VERTICAL_SPREAD`` of the frame height, e.g. a single visible reference point), the fit
  falls back to scale 1 (``a_y = 1``, ``a_x`` from the square-pixel rule) with least-squares offsets,
  with a warning. The release's fit would collapse the pose onto a line or a point there.

A :class:`~mimicmotion.errors.PoseError` is raised only when the reference or every driving frame has no
usable person.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.layout import NUM_POINTS, VISIBLE_THRESHOLD

log = logging.getLogger(__name__)

# Body points the release fits on: nose, neck, shoulders, hips, knees, ankles, eyes, ears (no arms).
FIT_POINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)

# Below this vertical spread (normalised units) the points say nothing about scale.
MIN_VERTICAL_SPREAD = 1e-3


def _frame64(frame, name: str) -> np.ndarray:
    """``frame`` as a float64 (P, 134, 3) array; a single person (134, 3) is accepted."""
    arr = np.asarray(frame)
    if arr.ndim == 2 and arr.shape == (NUM_POINTS, 3):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_POINTS, 3):
        raise PoseError(
            f"{name} must have shape (people, {NUM_POINTS}, 3), got {arr.shape}: "
            "re-extract the poses with `mimicmotion pose`"
        )
    return arr.astype(np.float64)


def _size(size, name: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be (height, width), got {size!r}") from None
    if height <= 0 or width <= 0:
        raise ConfigError(f"{name} must be positive (height, width), got {size!r}")
    return height, width


def _usable(points: np.ndarray, threshold: float) -> np.ndarray:
    """Mask over (..., 3) points: reliable score and a location."""
    return (points[..., 2] > threshold) & np.isfinite(points[..., 0]) & np.isfinite(points[..., 1])


def _most_confident(people: np.ndarray, ids: Sequence[int], threshold: float) -> int | None:
    """Index of the person with the highest mean score over ``ids`` among those with a usable point
    there (ties: the first), or None."""
    sub = people[:, list(ids)]
    has_point = _usable(sub, threshold).any(axis=1)
    if not has_point.any():
        return None
    mean_score = np.nan_to_num(sub[..., 2], nan=0.0).mean(axis=1)
    mean_score[~has_point] = -np.inf
    return int(np.argmax(mean_score))


def _reference_points(reference: np.ndarray, points: Sequence[int], threshold: float):
    """(point ids, (K, 2) normalised xy) of the reference person the fit uses."""
    person = None
    if reference.shape[0] and _usable(reference[0, list(points)], threshold).any():
        person = 0  # the release's choice
    elif reference.shape[0]:
        person = _most_confident(reference, points, threshold)
        if person is not None:
            log.info("reference person 0 has no visible fit point; aligning to person %d", person)
    if person is None:
        raise PoseError(
            "no person detected in the reference image (no visible nose, neck, shoulder, hip, leg, eye or "
            "ear point): use an image with one clearly visible person"
        )
    usable = _usable(reference[person, list(points)], threshold)
    ids = [i for i, ok in zip(points, usable.tolist()) if ok]
    return ids, reference[person, ids, :2]


def _driving_bodies(frames: list, ids: list, threshold: float) -> np.ndarray:
    """(N, K, 3) fit points of the driving people the fit uses: the release's single-person frames, or
    else the most confident person of every frame that has one."""
    single = [f[0, ids] for f in frames if f.shape[0] == 1]
    if single and _usable(np.stack(single), threshold).any():
        return np.stack(single)
    chosen = []
    for f in frames:
        person = _most_confident(f, ids, threshold) if f.shape[0] else None
        if person is not None:
            chosen.append(f[person, ids])
    if not chosen:
        raise PoseError(
            "no usable person in any driving frame (no reliable body point matching the reference's visible "
            "points): use a driving video where one person is clearly visible"
        )
    log.info("no single-person driving frame with usable points; fitting on the most confident person "
             "of %d frames", len(chosen))
    return np.stack(chosen)


def fit_alignment(
    reference,
    frames,
    ref_size,
    drv_size,
    *,
    points: Sequence[int] = FIT_POINTS,
    threshold: float = VISIBLE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the driving -> reference map; returns float64 ``a = [a_x, a_y]`` and ``b = [b_x, b_y]``.

    ``reference`` is the reference image's pose (P, 134, 3); ``frames`` the driving poses, one
    (P_i, 134, 3) array per frame; ``ref_size`` and ``drv_size`` are (height, width) of the reference
    image and of the driving video. Aligned normalised coordinates are ``xy * a + b``.
    """
    ref_h, ref_w = _size(ref_size, "ref_size")
    drv_h, drv_w = _size(drv_size, "drv_size")
    points = [int(i) for i in points]
    if not points or min(points) < 0 or max(points) >= NUM_POINTS:
        raise ConfigError(f"fit points must be indices in 0..{NUM_POINTS - 1}, got {points}")
    ids, ref_xy = _reference_points(_frame64(reference, "reference pose"), points, threshold)
    bodies = _driving_bodies([_frame64(f, f"driving pose frame {i}") for i, f in enumerate(frames)], ids, threshold)

    # Frame-major pairs, exactly as the release flattens and tiles them.
    count = bodies.shape[0]
    keep = _usable(bodies, threshold).reshape(-1)
    x_drv = bodies[:, :, 0].flatten()[keep]
    y_drv = bodies[:, :, 1].flatten()[keep]
    x_ref = np.tile(ref_xy[:, 0], count)[keep]
    y_ref = np.tile(ref_xy[:, 1], count)[keep]

    if np.ptp(y_drv) < MIN_VERTICAL_SPREAD or np.ptp(y_ref) < MIN_VERTICAL_SPREAD:
        log.warning(
            "pose alignment: the visible body points have no vertical extent (%d point pairs), so no scale "
            "can be fitted; keeping the driving scale and fitting the offset only", y_drv.size,
        )
        a_y = np.float64(1.0)
        b_y = np.mean(y_ref - y_drv)
    else:
        a_y, b_y = np.polyfit(y_drv, y_ref, 1)
    a_x = a_y / (drv_h / drv_w / ref_h * ref_w)  # the release's expression, same rounding
    b_x = np.mean(x_ref - x_drv * a_x)
    return np.array([a_x, a_y], dtype=np.float64), np.array([b_x, b_y], dtype=np.float64)


def apply_alignment(frame, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``frame`` (P, 134, 3) with every point's x, y mapped to ``xy * a + b``: float64, a new array.
    NaN (no location) stays NaN; scores are unchanged."""
    out = _frame64(frame, "pose frame")
    out[..., :2] = out[..., :2] * a + b
    return out


def align_poses(reference, frames, ref_size, drv_size, **fit_kwargs) -> list[np.ndarray]:
    """Driving poses mapped into the reference frame (body, foot, face and hands of every person).

    Returns one new float64 (P_i, 134, 3) array per driving frame. The reference pose itself is not
    part of the output: it is drawn unchanged as frame 0 elsewhere. ``fit_kwargs`` go to
    :func:`fit_alignment` (``points``, ``threshold``).
    """
    frames = list(frames)
    a, b = fit_alignment(reference, frames, ref_size, drv_size, **fit_kwargs)
    return [apply_alignment(f, a, b) for f in frames]
