"""The confidence-aware pose image (SPEC section 3), drawn exactly as the public release draws it.

The released weights were trained on these images, so every detail is kept: the canvas is scaled so its
short side is 2160 px, body limbs are filled ellipses dimmed by the product of their end scores, the whole
canvas is then multiplied by 0.6, joints / hands / faces are drawn on top in the release's order (later
draws overwrite earlier ones), the canvas is resized to the output size with bilinear interpolation and
its channels are swapped BGR -> RGB. The release returns CHW; this module returns HWC.

Arithmetic is float64 throughout. The release's keypoint arrays are float64 (DWPose's decoding divides
float32 SimCC locations by an integer array, which promotes), so its products, comparisons with 0.3 and
``int()`` truncations all happen on float64 values; float32 input is widened first. One consequence: a
float32 score of 0.3 is 0.30000001 and counts as above 0.3, as it does in the release.

Deliberate differences from the release (SPEC section 3):
- A point with no location (non-finite x or y; the layout stores NaN with score 0) is never drawn. The
  release draws such points at a junk location with colour 0 (black), erasing what lies under them.
- A limb end whose score is exactly 0.3 (possible only with float64 input; float32 scores never equal
  0.3) is drawn at its own location. The release looks such an end up at index -1 of its flattened body
  array, i.e. at the last person's left ear.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.layout import BODY, FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND, VISIBLE_THRESHOLD

CANVAS_SHORT_SIDE = 2160

# OpenPose limbs as 0-based joint pairs: the first 17 of the usual 19 (the release draws only these).
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# One colour per limb and per joint, as OpenCV receives it (so the first is blue in the final RGB image).
PALETTE = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# The 21-point hand graph: wrist to each finger base, then along each finger.
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)

# HSV(edge / 20, 1, 1) as floats in [0, 1]; colorsys computes these exactly as matplotlib's hsv_to_rgb
# (which the release calls) does for full saturation and value.
HAND_EDGE_RGB = tuple(colorsys.hsv_to_rgb(ie / float(len(HAND_EDGES)), 1.0, 1.0) for ie in range(len(HAND_EDGES)))

LIMB_HALF_WIDTH = 4  # ellipse minor half-axis, canvas pixels
JOINT_RADIUS = 4
HAND_LINE_THICKNESS = 2
HAND_POINT_RADIUS = 4
FACE_POINT_RADIUS = 3
DIM_FACTOR = 0.6
# Hand and face points are drawn only when both integer pixel coordinates exceed this (i.e. are >= 1).
EDGE_EPS = 0.01

# (canvas * 0.6).astype(uint8), the release's dimming of the limb canvas, as a per-value table.
_DIM_LUT = (np.arange(256, dtype=np.float64) * DIM_FACTOR).astype(np.uint8)

# Pixel coordinates beyond this are far off any canvas; skipping them keeps int conversion and OpenCV's
# fixed-point drawing safe for wild (badly aligned) poses.
_MAX_ABS_PIXEL = float(2**24)


def canvas_size(height: int, width: int, canvas_short_side: int = CANVAS_SHORT_SIDE) -> tuple[int, int]:
    """(canvas height, canvas width): the output size scaled so the short side is ``canvas_short_side``,
    truncated to int as the release does."""
    short = min(height, width)
    scale = (canvas_short_side / short) if short != canvas_short_side else 1
    return int(height * scale), int(width * scale)


def _checked_frame(keypoints) -> np.ndarray:
    """``keypoints`` as float64 (P, 134, 3); a single person (134, 3) is accepted."""
    arr = np.asarray(keypoints)
    if arr.ndim == 2 and arr.shape == (NUM_POINTS, 3):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_POINTS, 3):
        raise PoseError(
            f"a pose frame must have shape (people, {NUM_POINTS}, 3), got {arr.shape}: "
            "re-extract the poses with `mimicmotion pose`"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise PoseError(f"pose keypoints must be numbers, got dtype {arr.dtype}")
    frame = arr.astype(np.float64)
    unknown_score = ~np.isfinite(frame[..., 2])
    if unknown_score.any():  # not produced by the layout; treat as a point without location
        frame[unknown_score] = (np.nan, np.nan, 0.0)
    return frame


def _checked_size(height, width) -> tuple[int, int]:
    try:
        h, w = int(height), int(width)
        whole = h == height and w == width and not isinstance(height, bool) and not isinstance(width, bool)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ConfigError(f"pose image size must be whole numbers, got height={height!r} width={width!r}")
    if h <= 0 or w <= 0:
        raise ConfigError(f"pose image size must be positive, got height={h} width={w}")
    return h, w


def _pixel_coords(points: np.ndarray, canvas_h: int, canvas_w: int):
    """Integer pixel coordinates (as the release's ``int(x * W)``) and a mask of drawable points.

    ``points`` is (..., 3) float64 normalised (x, y, score)."""
    px = points[..., 0] * canvas_w
    py = points[..., 1] * canvas_h
    drawable = (
        np.isfinite(px) & np.isfinite(py) & (np.abs(px) < _MAX_ABS_PIXEL) & (np.abs(py) < _MAX_ABS_PIXEL)
    )
    ix = np.trunc(np.where(drawable, px, 0.0)).astype(np.int64)
    iy = np.trunc(np.where(drawable, py, 0.0)).astype(np.int64)
    return ix, iy, drawable


def _scaled_color(color, factor: float) -> list[int]:
    """Each channel times ``factor``, truncated to int (the release's alpha blend)."""
    return [int(c * factor) for c in color]


def _draw_limbs(canvas: np.ndarray, bodies: np.ndarray) -> None:
    """Limb ellipses, limb by limb and within a limb person by person (the release's overlap order), already
    dimmed: the release fills them and then multiplies the whole canvas by 0.6, and since a fill overwrites
    (no blending) and the dimming is per value with 0 -> 0, filling with the dimmed colour gives the same
    bytes without a pass over the 2160-px canvas (which was most of the drawing's time)."""
    canvas_h, canvas_w = canvas.shape[:2]
    fw, fh = float(canvas_w), float(canvas_h)
    xs, ys, scores = (bodies[..., c].tolist() for c in range(3))
    for limb, (ja, jb) in enumerate(LIMBS):
        for p in range(len(scores)):
            sa, sb = scores[p][ja], scores[p][jb]
            if not (sa >= VISIBLE_THRESHOLD and sb >= VISIBLE_THRESHOLD):  # NaN-safe "< 0.3 -> skip"
                continue
            # The release names pixel x "Y" and pixel y "X"; kept as x/y here.
            xa, xb = xs[p][ja] * fw, xs[p][jb] * fw
            ya, yb = ys[p][ja] * fh, ys[p][jb] * fh
            if not all(math.isfinite(v) and abs(v) < _MAX_ABS_PIXEL for v in (xa, xb, ya, yb)):
                continue
            mean_x = (xa + xb) / 2  # np.mean of two float64 values
            mean_y = (ya + yb) / 2
            length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly(
                (int(mean_x), int(mean_y)), (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1
            )
            # OpenCV saturates a colour to the canvas's 0..255 (DWPose scores can exceed 1) before the dimming.
            dimmed = [int(_DIM_LUT[min(max(c, 0), 255)]) for c in _scaled_color(PALETTE[limb], sa * sb)]
            cv2.fillConvexPoly(canvas, polygon, dimmed)


def _draw_joints(canvas: np.ndarray, bodies: np.ndarray) -> None:
    """Joint circles (score > 0.3), joint by joint and within a joint person by person."""
    ix, iy, drawable = _pixel_coords(bodies, *canvas.shape[:2])
    visible = (bodies[..., 2] > VISIBLE_THRESHOLD) & drawable
    scores = bodies[..., 2].tolist()
    ix, iy, visible = ix.tolist(), iy.tolist(), visible.tolist()
    for j in range(bodies.shape[1]):
        for p in range(bodies.shape[0]):
            if visible[p][j]:
                color = _scaled_color(PALETTE[j], scores[p][j])
                cv2.circle(canvas, (ix[p][j], iy[p][j]), JOINT_RADIUS, color, thickness=-1)


def _draw_hands(canvas: np.ndarray, hands: np.ndarray) -> None:
    """Hands in the given order: for each, its 20 edges, then its 21 points. No score threshold."""
    if hands.shape[0] == 0:
        return
    ix, iy, drawable = _pixel_coords(hands, *canvas.shape[:2])
    inside = drawable & (ix > EDGE_EPS) & (iy > EDGE_EPS)
    scores = hands[..., 2]
    ea = [a for a, _ in HAND_EDGES]
    eb = [b for _, b in HAND_EDGES]
    edge_levels = (scores[:, ea] * scores[:, eb] * 255).tolist()  # int() below, per the release
    point_levels = (scores * 255).tolist()
    ix, iy, inside = ix.tolist(), iy.tolist(), inside.tolist()
    for h in range(hands.shape[0]):
        x, y, ok = ix[h], iy[h], inside[h]
        for ie, (a, b) in enumerate(HAND_EDGES):
            if ok[a] and ok[b]:
                level = int(edge_levels[h][ie])
                # Float channels, as the release passes them; OpenCV rounds them when drawing.
                color = tuple(c * level for c in HAND_EDGE_RGB[ie])
                cv2.line(canvas, (x[a], y[a]), (x[b], y[b]), color, thickness=HAND_LINE_THICKNESS)
        for i in range(hands.shape[1]):
            if ok[i]:
                cv2.circle(canvas, (x[i], y[i]), HAND_POINT_RADIUS, (0, 0, int(point_levels[h][i])), thickness=-1)


def _draw_faces(canvas: np.ndarray, faces: np.ndarray) -> None:
    """Grey face-landmark circles, person by person. No score threshold."""
    if faces.shape[0] == 0:
        return
    ix, iy, drawable = _pixel_coords(faces, *canvas.shape[:2])
    inside = (drawable & (ix > EDGE_EPS) & (iy > EDGE_EPS)).tolist()
    levels = (faces[..., 2] * 255).tolist()
    ix, iy = ix.tolist(), iy.tolist()
    for p in range(faces.shape[0]):
        for i in range(faces.shape[1]):
            if inside[p][i]:
                grey = int(levels[p][i])
                cv2.circle(canvas, (ix[p][i], iy[p][i]), FACE_POINT_RADIUS, (grey, grey, grey), thickness=-1)


def draw_pose(keypoints, height: int, width: int, *, canvas_short_side: int = CANVAS_SHORT_SIDE) -> np.ndarray:
    """Draw one frame's people as the network's pose image: uint8 (height, width, 3), RGB order.

    ``keypoints`` is (P, 134, 3) in the project layout (x, y normalised to the frame; NaN = no location).
    ``canvas_short_side`` is the release's 2160; other values are for tests and quick previews only.
    """
    height, width = _checked_size(height, width)
    if int(canvas_short_side) <= 0:
        raise ConfigError(f"canvas_short_side must be positive, got {canvas_short_side}")
    frame = _checked_frame(keypoints)
    if frame.shape[0] == 0:
        return np.zeros((height, width, 3), dtype=np.uint8)

    canvas = np.zeros((*canvas_size(height, width, canvas_short_side), 3), dtype=np.uint8)
    bodies = frame[:, BODY]
    _draw_limbs(canvas, bodies)  # dimmed as it draws
    _draw_joints(canvas, bodies)
    # The release stacks every person's first (left) hand, then every person's second hand.
    _draw_hands(canvas, np.concatenate([frame[:, LEFT_HAND], frame[:, RIGHT_HAND]], axis=0))
    _draw_faces(canvas, frame[:, FACE])
    resized = cv2.resize(canvas, (width, height))  # INTER_LINEAR, OpenCV's default
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def draw_pose_sequence(frames, height: int, width: int, *, canvas_short_side: int = CANVAS_SHORT_SIDE) -> np.ndarray:
    """:func:`draw_pose` for each frame: uint8 (F, height, width, 3)."""
    height, width = _checked_size(height, width)
    images = [draw_pose(f, height, width, canvas_short_side=canvas_short_side) for f in frames]
    if not images:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(images)


def pose_images_to_tensor(images, dtype=None):
    """uint8 (F, H, W, 3) pose images -> torch tensor (F, 3, H, W) = x / 127.5 - 1, as the network reads them.

    ``dtype`` defaults to float32. The release computes this in its default dtype, which is float16 unless
    run with ``--no_use_float16``; pass ``torch.float16`` to get those exact half-precision values.
    """
    import torch

    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"pose images must be uint8 (F, H, W, 3), got {arr.dtype} {arr.shape}")
    dtype = torch.float32 if dtype is None else dtype
    pixels = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
    return pixels.to(dtype) / 127.5 - 1
