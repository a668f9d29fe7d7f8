"""The 134-point pose layout (SPEC section 1) and the converter from DWPose's 133 COCO-WholeBody points.

A frame's poses are a float array ``(P, 134, 3)``: x and y normalised by the frame's width and height,
then the detector score. A point with no location has NaN coordinates and score 0. The release computes
keypoints in float64 (its SimCC decoding promotes to float64) and the pose images depend on the last bit
of a coordinate, so the converter returns float64 and pose files keep it.
"""
from __future__ import annotations

import numpy as np

NUM_POINTS = 134
BODY = slice(0, 18)  # OpenPose-18 order, synthetic neck at 1
FOOT = slice(18, 24)  # stored, never drawn
FACE = slice(24, 92)  # 68 points
LEFT_HAND = slice(92, 113)  # 21 points (COCO-WholeBody's first hand)
RIGHT_HAND = slice(113, 134)

BODY_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)

# Score above which a body joint is trusted (drawing, alignment fit).
VISIBLE_THRESHOLD = 0.3

# COCO-WholeBody (with the neck inserted at 17) -> OpenPose-18: position OPENPOSE[i] takes MMPOSE[i].
_MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]


def check_rgb_frame(frame, index: int, estimator: str = "pose") -> np.ndarray:
    """``frame`` as a contiguous RGB uint8 (H, W, 3) array, or a ConfigError naming the frame and the fix."""
    from mimicmotion.errors import ConfigError

    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(
            f"{estimator} frame {index} must be an RGB uint8 image of shape (H, W, 3); got shape {arr.shape} "
            f"dtype {arr.dtype}: convert it to 8-bit RGB first"
        )
    return np.ascontiguousarray(arr)


def empty_frame() -> np.ndarray:
    """A frame with no person: shape (0, 134, 3)."""
    return np.zeros((0, NUM_POINTS, 3), dtype=np.float64)


def from_coco_wholebody(xy, scores, width: int, height: int) -> np.ndarray:
    """Convert DWPose output (pixel ``xy`` (P,133,2), ``scores`` (P,133)) to the (P,134,3) layout.

    The neck is the midpoint of the two shoulders; its score is 1.0 when both shoulder scores are
    above 0.3, else 0.0 (the release's rule). Points whose score is <= 0 get NaN coordinates and score 0.
    """
    xy = np.asarray(xy, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[1:] != (133, 2) or scores.shape != xy.shape[:2]:
        raise ValueError(
            f"from_coco_wholebody expects xy (P,133,2) and scores (P,133); got {xy.shape} and {scores.shape}"
        )
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got width={width} height={height}")
    info = np.concatenate([xy, scores[..., None]], axis=-1)  # (P,133,3)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > VISIBLE_THRESHOLD, info[:, 6, 2] > VISIBLE_THRESHOLD)
    out = np.insert(info, 17, neck, axis=1)  # (P,134,3)
    out[:, _OPENPOSE_IDX] = out[:, _MMPOSE_IDX]
    out[..., 0] /= float(width)
    out[..., 1] /= float(height)
    missing = ~(out[..., 2] > 0)
    out[missing, 0:2] = np.nan
    out[missing, 2] = 0.0
    return out


def validate_frame(frame, name: str = "pose frame") -> np.ndarray:
    """Return ``frame`` as float (P,134,3) or raise a clear ValueError."""
    arr = np.asarray(frame)
    if arr.ndim == 2 and arr.shape == (NUM_POINTS, 3):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_POINTS, 3):
        raise ValueError(f"{name} must have shape (P, {NUM_POINTS}, 3), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr
