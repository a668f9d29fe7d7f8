"""A procedural dancing figure: a shippable sample with exact ground-truth poses (no model download).

`dance_poses` animates an articulated skeleton (body, 21-point hands, 68-point face) in the project's
134-point layout; `draw_figure` paints a simple person from the same skeleton, so a video and its poses
agree exactly. Deterministic given the seed. The demo uses it as the driving clip and the reference.
"""
from __future__ import annotations

import math

import numpy as np

from mimicmotion.pose.layout import FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND

# Segment lengths as fractions of the body height.
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.14, 0.13, 0.19, 0.19
_FINGER = (0.018, 0.014, 0.012, 0.010)


def _polar(origin, angle, length):
    return origin + length * np.array([math.sin(angle), math.cos(angle)])


def _hand(wrist, direction, spread, mirror):
    """21 hand points: wrist, then 4 joints for each of thumb..little finger, fanned around ``direction``."""
    pts = [wrist]
    for f in range(5):
        ang = direction + mirror * (f - 2) * spread
        base = _polar(wrist, ang, 0.03 + (0.004 if f == 2 else 0))
        pts.append(base)
        cur = base
        for seg in _FINGER[1:]:
            cur = _polar(cur, ang, seg)
            pts.append(cur)
    return np.array(pts)


def _face(nose, scale):
    """68 face points in the iBUG order (jaw, brows, nose, eyes, mouth), an ellipse-shaped face."""
    c = nose + np.array([0.0, -0.005])
    rx, ry = 0.045 * scale, 0.06 * scale
    jaw = [c + [rx * math.cos(a), ry * math.sin(a)] for a in np.linspace(math.pi, 0.0, 17)]  # lower half
    brows = [c + [rx * x, -0.55 * ry] for x in np.linspace(-0.8, -0.2, 5)] + \
            [c + [rx * x, -0.55 * ry] for x in np.linspace(0.2, 0.8, 5)]
    nose_pts = [c + [0, ry * y] for y in np.linspace(-0.35, 0.05, 4)] + [c + [rx * x, 0.15 * ry] for x in np.linspace(-0.3, 0.3, 5)]
    eyes = []
    for cx in (-0.45, 0.45):
        for a in np.linspace(0, 2 * math.pi, 7)[:-1]:
            eyes.append(c + [rx * (cx + 0.18 * math.cos(a)), ry * (-0.25 + 0.07 * math.sin(a))])
    mouth = [c + [rx * 0.45 * math.cos(a), ry * (0.45 + 0.12 * math.sin(a))] for a in np.linspace(0, 2 * math.pi, 13)[:-1]]
    mouth += [c + [rx * 0.3 * math.cos(a), ry * (0.45 + 0.05 * math.sin(a))] for a in np.linspace(0, 2 * math.pi, 9)[:-1]]
    return np.array(jaw + brows + nose_pts + eyes + mouth)


def skeleton(t: float, rng_phase: np.ndarray, aspect: float) -> np.ndarray:
    """Keypoints (134, 3) at time t (seconds); x,y normalised for a frame of width/height = aspect."""
    p = rng_phase
    hip_c = np.array([0.5 + 0.04 * math.sin(1.3 * t + p[0]), 0.52 + 0.01 * math.sin(2.6 * t)])
    neck = hip_c + np.array([0.01 * math.sin(1.3 * t + p[1]), -0.3])
    nose = neck + np.array([0.0, -0.08])
    xs = 1.0 / aspect  # keep body proportions in pixels: x distances scale with height / width
    k = np.zeros((NUM_POINTS, 3))
    body = {}
    body[0], body[1] = nose, neck
    for side, sgn, ph in (("r", -1, p[2]), ("l", 1, p[3])):
        sh = neck + np.array([sgn * 0.09 * xs, 0.01])
        up = math.pi / 2 * sgn * (0.35 + 0.45 * (0.5 + 0.5 * math.sin(2.0 * t + ph)))
        el = _polar(sh, up, _UPPER_ARM)
        fore = up + sgn * (0.3 + 0.9 * (0.5 + 0.5 * math.sin(2.0 * t + ph + 1.2)))
        wr = _polar(el, fore, _FOREARM)
        hp = hip_c + np.array([sgn * 0.05 * xs, 0.0])
        th = sgn * 0.08 + 0.15 * math.sin(2.6 * t + ph)
        kn = _polar(hp, th, _THIGH)
        an = _polar(kn, th - 0.2 * abs(math.sin(2.6 * t + ph)), _SHIN)
        idx = dict(r=(2, 3, 4, 8, 9, 10), l=(5, 6, 7, 11, 12, 13))[side]
        for i, v in zip(idx, (sh, el, wr, hp, kn, an)):
            body[i] = v
        hand = _hand(wr, fore, 0.25, sgn)
        sl = RIGHT_HAND if side == "r" else LEFT_HAND
        k[sl, :2] = hand
        k[sl, 2] = 0.55 + 0.4 * (0.5 + 0.5 * math.sin(3.1 * t + ph))  # hands blur at speed
        foot = 18 + (3 if side == "r" else 0)
        for j in range(3):
            k[foot + j, :2] = an + np.array([sgn * 0.02 * j * xs, 0.01])
            k[foot + j, 2] = 0.8
    body[14], body[15] = nose + np.array([-0.02 * xs, -0.015]), nose + np.array([0.02 * xs, -0.015])
    body[16], body[17] = nose + np.array([-0.04 * xs, -0.005]), nose + np.array([0.04 * xs, -0.005])
    for i, v in body.items():
        k[i, :2] = v
        k[i, 2] = 0.92
    k[FACE, :2] = _face(nose, 1.0)
    k[FACE, 0] = nose[0] + (k[FACE, 0] - nose[0]) * xs
    k[FACE, 2] = 0.85
    for sl in (LEFT_HAND, RIGHT_HAND):
        k[sl, 0] = k[sl][0, 0] + (k[sl, 0] - k[sl][0, 0]) * xs
    return k.astype(np.float32)


def dance_poses(num_frames: int, fps: float, width: int, height: int, seed: int = 0) -> list:
    """A list of (1, 134, 3) frames of one dancing person."""
    phase = np.random.default_rng(seed).uniform(0, 2 * math.pi, 4)
    return [skeleton(i / fps, phase, width / height)[None] for i in range(num_frames)]


_LIMBS = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (8, 11), (2, 8), (5, 11))


def draw_figure(keypoints: np.ndarray, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Paint a simple clothed person (uint8 RGB) from one (1,134,3) or (134,3) skeleton."""
    import cv2

    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 200, 3)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bg
    img[int(height * 0.88):] = (bg * 0.6).astype(np.uint8)  # floor
    k = np.asarray(keypoints).reshape(-1, NUM_POINTS, 3)[0]
    px = np.stack([k[:, 0] * width, k[:, 1] * height], -1)
    shirt, trousers, skin = rng.integers(0, 255, 3), rng.integers(0, 120, 3), np.array([224, 180, 150])
    thick = max(2, int(0.035 * height))
    torso = np.array([px[2], px[5], px[11], px[8]], np.int32)
    cv2.fillConvexPoly(img, torso, shirt.tolist())
    for a, b in _LIMBS:
        colour = trousers if a in (8, 9, 11, 12) else (shirt if a in (1, 2, 5) and b in (3, 6) else skin)
        if (a, b) in ((1, 2), (1, 5), (1, 8), (1, 11), (8, 11), (2, 8), (5, 11)):
            colour = shirt
        cv2.line(img, tuple(px[a].astype(int)), tuple(px[b].astype(int)), colour.tolist(), thick, cv2.LINE_AA)
    for sl in (LEFT_HAND, RIGHT_HAND):
        hand = px[sl]
        for f in range(5):
            chain = [hand[0]] + list(hand[1 + 4 * f:5 + 4 * f])
            for a, b in zip(chain[:-1], chain[1:]):
                cv2.line(img, tuple(a.astype(int)), tuple(b.astype(int)), skin.tolist(), max(1, thick // 4), cv2.LINE_AA)
    head_r = int(0.065 * height)
    cv2.circle(img, tuple(px[0].astype(int) + [0, -head_r // 3]), head_r, skin.tolist(), -1, cv2.LINE_AA)
    for eye in (14, 15):
        cv2.circle(img, tuple(px[eye].astype(int)), max(1, head_r // 8), (30, 30, 30), -1, cv2.LINE_AA)
    mouth = px[FACE][48:60].astype(np.int32)
    cv2.polylines(img, [mouth], True, (150, 60, 60), max(1, head_r // 12), cv2.LINE_AA)
    return img
