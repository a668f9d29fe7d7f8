"""Drawing the synthetic dancer from its solved 3D points, and the confidences a detector would give.

The figure is a list of primitives (capsules for limbs, polygons for the torso, head, hair, hands and
face features), each built from the same projected points that become the keypoints, so pixels and
poses agree. Primitives are painted far-to-near into an *index map* at ``ss`` times the output size:
each pixel records which primitive is on top. Colours, clothing patterns and part outlines are looked
up from that map, and the frame is box-filtered down to the output size (anti-aliasing). The same map
tells, for every keypoint, whether something nearer covers it (occlusion lowers its score).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from mimicmotion.synthetic import kinematics as kin
from mimicmotion.synthetic.appearance import Appearance, render_background

SHIFT = 4  # fractional bits for OpenCV drawing (sub-pixel precision)
ONE = 1 << SHIFT
NUM_POINTS = 134
FIRST_RANK = 2  # index-map values: 0 = background, 1 = floor shadow, 2.. = primitives in drawing order
MAX_PRIMS = 250

# Keypoint indices (SPEC section 1 layout) used to say which primitives a keypoint belongs to.
R_HAND0, L_HAND0 = 113, 92
FACE0 = 24
_BODY = {"r": dict(sh=2, el=3, wr=4, hip=8, kn=9, an=10, ear=16, eye=14, hand0=R_HAND0, feet=(21, 22, 23)),
         "l": dict(sh=5, el=6, wr=7, hip=11, kn=12, an=13, ear=17, eye=15, hand0=L_HAND0, feet=(18, 19, 20))}
FACE_OWNERS = (0, 14, 15, 16, 17) + tuple(range(FACE0, FACE0 + 68))  # points on the head's own surfaces

# Part ids: pixels where a nearer part meets a different one get a dark outline.
PART = {"torso": 1, "lower": 2, "arm_r": 3, "arm_l": 4, "hand_r": 5, "hand_l": 6, "leg_r": 7, "leg_l": 8,
        "foot_r": 9, "foot_l": 10, "head": 11, "ear": 12, "hair": 13, "neck": 14, "back_hair": 15,
        "sleeve_r": 16, "sleeve_l": 17, "skirt": 18, "shorts_r": 19, "shorts_l": 20}
# Every finger is its own part, so overlapping fingers stay outlined.
FINGER_PART = {"r": 21, "l": 26}

OUTLINE_DARKEN = 0.72


@dataclass(frozen=True)
class Camera:
    """Orthographic framing: x = x + drift*t + s(t)*X, y = ground + s(t)*Y with s(t) = scale*(1 + zoom*t)
    (output pixels; X, Y in body heights, t in seconds from the clip start)."""

    scale: float
    x: float
    ground: float
    drift: float = 0.0
    zoom: float = 0.0
    cropped: bool = False

    def scale_at(self, t):
        return self.scale * (1.0 + self.zoom * np.asarray(t, np.float64))

    def project(self, points: np.ndarray, t) -> np.ndarray:
        """(N,...,3) body-unit points at times t (N,) -> (N,...,2) output pixels (pixel centres at integers)."""
        t = np.asarray(t, np.float64)
        s = self.scale_at(t).reshape((-1,) + (1,) * (points.ndim - 2))
        x = (self.x + self.drift * t).reshape(s.shape) + s * points[..., 0]
        y = self.ground + s * points[..., 1]
        return np.stack([x, y], -1)


@dataclass
class Prim:
    """One drawing primitive over all frames. ``pts`` are float supersampled pixels (N,K,2); for an
    ellipse ``pts`` is its centre (N,1,2) and ``axes`` (N,2) its half-axes."""

    name: str
    kind: str  # poly | hull | line | ellipse
    pts: np.ndarray
    depth: np.ndarray  # (N,) larger = farther; painted far to near
    colour: tuple
    part: int
    owns: tuple = ()
    garment: int = 0  # 1 shirt, 2 lower garment: gets the clothing pattern
    enabled: Optional[np.ndarray] = None
    thickness: Optional[np.ndarray] = None
    axes: Optional[np.ndarray] = None
    angle: Optional[np.ndarray] = None
    shade: Optional[np.ndarray] = None


@dataclass
class Scene:
    width: int
    height: int
    ss: int
    prims: list
    keypoints: np.ndarray  # (N,134,2) output pixels
    facing: np.ndarray  # (N,134) visibility factor from where the head faces (1 for other points)
    speed: np.ndarray  # (N,134) in body heights per second
    scale: np.ndarray  # (N,) output pixels per body height
    patterns: dict = field(default_factory=dict)  # garment id -> (kind, anchor (N,2), angle (N,), period (N,))
    shadow: Optional[tuple] = None  # (centre (N,2), axes (N,2)) in supersampled pixels


def supersample_factor(width: int, height: int) -> int:
    """Drawing resolution multiple: at least 2, enough to draw a 64 px frame at 256 px."""
    return int(np.clip(math.ceil(256 / max(1, min(width, height))), 2, 4))


def _capsule(a, b, ra, rb, n_arc: int = 5) -> np.ndarray:
    """Outline of a tapered capsule from a to b (N,2) with end radii (N,) -> (N, 2*(n_arc+1), 2)."""
    d = b - a
    ang = np.arctan2(d[:, 1], d[:, 0])[:, None]
    arc = np.linspace(-math.pi / 2, math.pi / 2, n_arc + 1)[None]
    tb, ta = ang + arc, ang + arc + math.pi
    pb = b[:, None] + rb[:, None, None] * np.stack([np.cos(tb), np.sin(tb)], -1)
    pa = a[:, None] + ra[:, None, None] * np.stack([np.cos(ta), np.sin(ta)], -1)
    return np.concatenate([pb, pa], 1)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _shade(rgb, factor) -> tuple:
    return tuple(int(np.clip(round(c * factor), 0, 255)) for c in rgb)


def _wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


# Hairline heights (front, side, back) per style, in head heights v (-1 top .. 1 chin).
_HAIRLINE = {"short": (-0.5, -0.05, 0.45), "long": (-0.55, 0.3, 0.9), "bun": (-0.52, -0.05, 0.35),
             "buzz": (-0.58, -0.12, 0.4)}


def _hairline(phi, style: str) -> np.ndarray:
    front, side, back = _HAIRLINE[style]
    c = np.cos(phi)
    return np.where(c > 0, side + (front - side) * c * c, side + (back - side) * c * c)


def build_scene(app: Appearance, pose: kin.Pose3D, camera: Camera, times, width: int, height: int,
                fps: float, ss: Optional[int] = None) -> Scene:
    """All primitives, keypoints and visibility cues of a clip (no pixels yet)."""
    ss = ss or supersample_factor(width, height)
    t = np.asarray(times, np.float64)
    n = t.shape[0]
    shape = app.body
    g = shape.girth
    scale = camera.scale_at(t)  # output px per body height
    k = scale * ss  # supersampled px per body height
    jn = pose.joints

    def proj(p):  # world points -> supersampled pixels
        return camera.project(p, t) * ss + (ss - 1) / 2.0

    def z(p):
        return p[..., 2]

    pelvis_z = z(jn["pelvis"])

    def shade(depth):
        return np.clip(1.0 - 0.9 * (depth - pelvis_z), 0.82, 1.06)

    prims: list[Prim] = []

    def add(name, kind, pts, depth, colour, part, owns=(), **kw):
        prims.append(Prim(name=name, kind=kind, pts=pts, depth=np.asarray(depth, np.float64), colour=colour,
                          part=part, owns=tuple(owns), shade=kw.pop("shade", shade(depth)), **kw))

    def capsule(name, a3, b3, ra, rb, colour, part, owns, depth=None, **kw):
        """A limb segment; ``depth`` overrides its painting depth (clothing over the limb it covers)."""
        pts = _capsule(proj(a3), proj(b3), np.full(n, ra) * k, np.full(n, rb) * k)
        add(name, "poly", pts, 0.5 * (z(a3) + z(b3)) if depth is None else depth, colour, part, owns, **kw)

    def limb_depth(a3, b3):
        return 0.5 * (z(a3) + z(b3))

    skin = app.skin
    shirt, lower = app.shirt.colour, app.lower.colour

    # ---- torso: elliptic cross-sections at a few heights, outlined in the image
    chest_rot, pelvis_rot = pose.chest_rot, pose.pelvis_rot
    pel, neck_base = jn["pelvis"], jn["neck_base"]
    shw, hipw = shape.shoulder_half_width, shape.hip_half_width
    soft = 0.75 + 0.25 * g

    def along_spine(frac):
        return pel + (neck_base - pel) * frac

    # Cross-sections: (centre, orientation, half-width, half-depth).
    collar = (neck_base + kin.apply(chest_rot, np.array([0.0, -0.004, 0.0])), chest_rot, 0.45 * shw,
              0.3 * shw)  # sloping shoulders up to the neck
    top = (0.5 * (jn["shoulder_r"] + jn["shoulder_l"]), chest_rot, shw + 0.008 * g, 0.42 * shw * soft)
    chest = (along_spine(0.74), chest_rot, 0.95 * shw * soft, 0.55 * shw * soft)
    waist = (along_spine(0.36), pelvis_rot, (0.68 * shw + 0.25 * hipw) * soft, 0.5 * shw * soft)
    hip = (pel + kin.apply(pelvis_rot, np.array([0.0, 0.035, 0.0])), pelvis_rot, hipw + 0.036 * g,
           0.7 * (hipw + 0.036 * g))
    crotch = (pel + kin.apply(pelvis_rot, np.array([0.0, 0.085, 0.0])), pelvis_rot, 0.6 * hipw * soft,
              0.5 * hipw * soft)
    hem_f = app.shirt_length  # the shirt ends between the waist (0) and the hips (1)
    hem = (waist[0] + (hip[0] - waist[0]) * hem_f, pelvis_rot, waist[2] + (hip[2] - waist[2]) * hem_f,
           waist[3] + (hip[3] - waist[3]) * hem_f)
    spine_img = proj(neck_base) - proj(pel)
    spine_img /= np.maximum(np.linalg.norm(spine_img, axis=-1, keepdims=True), 1e-6)
    perp = np.stack([-spine_img[:, 1], spine_img[:, 0]], -1)

    def outline(levels):
        left, right = [], []
        for c, rot, w, d in levels:
            hw = np.sqrt((w * rot[:, 0, 0]) ** 2 + (d * rot[:, 0, 2]) ** 2) * k
            cp = proj(c)
            left.append(cp + perp * hw[:, None])
            right.append(cp - perp * hw[:, None])
        return np.stack(left + right[::-1], 1)

    torso_key = 0.5 * (z(neck_base) + z(pel))
    b = _BODY
    add("torso_lower", "poly", outline([waist, hip, crotch]), torso_key - 0.003, lower, PART["lower"],
        owns=(1, b["r"]["hip"], b["l"]["hip"]), garment=2)
    add("shirt", "poly", outline([collar, top, chest, waist, hem]), torso_key - 0.0035, shirt, PART["torso"],
        owns=(1, 2, 5, b["r"]["hip"], b["l"]["hip"]), garment=1)
    add("neck", "poly", _capsule(proj(jn["neck"]), proj(jn["neck_top"]), np.full(n, 0.027 * soft) * k,
                                  np.full(n, 0.025 * soft) * k), torso_key + 0.02, _shade(skin, 0.93),
        PART["neck"], owns=(1,))

    # ---- limbs
    for s, m in kin.SIDES:
        ix = b[s]
        sleeve_owns = (ix["sh"], ix["el"])
        upper_col = shirt if app.sleeves == "long" else skin
        capsule(f"upper_arm_{s}", jn[f"shoulder_{s}"], jn[f"elbow_{s}"], 0.031 * g, 0.025 * g, upper_col,
                PART[f"sleeve_{s}"] if app.sleeves == "long" else PART[f"arm_{s}"], sleeve_owns,
                garment=1 if app.sleeves == "long" else 0)
        if app.sleeves == "short":
            cuff = jn[f"shoulder_{s}"] + 0.55 * (jn[f"elbow_{s}"] - jn[f"shoulder_{s}"])
            capsule(f"sleeve_{s}", jn[f"shoulder_{s}"], cuff, 0.035 * g, 0.03 * g, shirt, PART[f"sleeve_{s}"],
                    sleeve_owns, depth=limb_depth(jn[f"shoulder_{s}"], jn[f"elbow_{s}"]) - 0.0005, garment=1)
        fore_col = shirt if app.sleeves == "long" else skin
        capsule(f"forearm_{s}", jn[f"elbow_{s}"], jn[f"wrist_{s}"], 0.025 * g, 0.018 * g, fore_col,
                PART[f"sleeve_{s}"] if app.sleeves == "long" else PART[f"arm_{s}"], (ix["el"], ix["wr"]),
                garment=1 if app.sleeves == "long" else 0)
        # legs
        trousers = app.lower_style == "trousers"
        leg_col = lower if trousers else skin
        capsule(f"thigh_{s}", jn[f"hip_{s}"], jn[f"knee_{s}"], 0.052 * g, 0.038 * g, leg_col, PART[f"leg_{s}"],
                (ix["hip"], ix["kn"]), garment=2 if trousers else 0)
        capsule(f"shin_{s}", jn[f"knee_{s}"], jn[f"ankle_{s}"], 0.037 * g, 0.025 * g, leg_col, PART[f"leg_{s}"],
                (ix["kn"], ix["an"]) + ix["feet"], garment=2 if trousers else 0)
        if app.lower_style == "shorts":
            hem_pt = jn[f"hip_{s}"] + 0.6 * (jn[f"knee_{s}"] - jn[f"hip_{s}"])
            capsule(f"shorts_{s}", jn[f"hip_{s}"], hem_pt, 0.058 * g, 0.047 * g, lower, PART[f"shorts_{s}"],
                    (ix["hip"], ix["kn"]), depth=limb_depth(jn[f"hip_{s}"], jn[f"knee_{s}"]) - 0.0005, garment=2)
        # shoe: hull of heel, toes and the ankle's width
        ank = proj(jn[f"ankle_{s}"])
        r = (0.03 * g * k)[:, None]
        shoe_pts = np.stack([proj(jn[f"heel_{s}"]), proj(jn[f"big_toe_{s}"]), proj(jn[f"small_toe_{s}"]),
                             ank + np.concatenate([r, 0 * r], 1), ank - np.concatenate([r, 0 * r], 1),
                             ank - np.concatenate([0 * r, r], 1)], 1)
        foot_depth = z(np.stack([jn[f"heel_{s}"], jn[f"big_toe_{s}"], jn[f"ankle_{s}"]], 1)).mean(1)
        add(f"shoe_{s}", "hull", shoe_pts, foot_depth - 0.001, app.shoes, PART[f"foot_{s}"], (ix["an"],) + ix["feet"])
        # hand: palm, then each finger as a thick line (the 21 keypoints are its joints)
        hand = pose.hands[s]
        h0 = ix["hand0"]
        hand_px = proj(hand)
        palm = proj(pose.palms[s])
        palm_owns = (ix["wr"], h0, h0 + 1, h0 + 5, h0 + 9, h0 + 13, h0 + 17)
        add(f"palm_{s}", "hull", np.concatenate([palm, hand_px[:, [0, 1, 2]]], 1), z(pose.palms[s]).mean(1),
            _shade(skin, 0.97), PART[f"hand_{s}"], palm_owns)
        fw = np.maximum(1, np.round(kin.FINGER_WIDTH * shape.hand_size * g * k)).astype(np.int32)
        for f, start in enumerate((1, 5, 9, 13, 17)):  # thumb from its CMC joint, fingers from the knuckle
            idx = [start, start + 1, start + 2, start + 3]
            owns = tuple(h0 + i for i in idx) + ((ix["wr"], h0) if f == 0 else ())  # the thumb starts at the wrist
            add(f"finger{f}_{s}", "line", hand_px[:, idx], z(hand[:, idx]).mean(1), skin, FINGER_PART[s] + f,
                owns, thickness=fw + (1 if f == 0 else 0))

    if app.lower_style == "skirt":
        hem_y = 0.72
        left_hem = jn["hip_l"] + hem_y * (jn["knee_l"] - jn["hip_l"])
        right_hem = jn["hip_r"] + hem_y * (jn["knee_r"] - jn["hip_r"])
        hem_r, hem_l = proj(right_hem), proj(left_hem)
        # The hem flares outwards: away from its middle, whichever way the person faces.
        side = np.sign(np.sum((hem_l - hem_r) * perp, -1, keepdims=True) + 1e-9)
        flare = (0.07 * g * k)[:, None] * perp * side
        hip_px, hip_hw = proj(hip[0]), perp * (hip[2] * k)[:, None]
        waist_px, waist_hw = proj(waist[0]), perp * (waist[2] * k)[:, None]
        pts = np.stack([hip_px + hip_hw, hip_px - hip_hw, hem_r - flare, hem_l + flare,
                        waist_px + waist_hw, waist_px - waist_hw], 1)
        thigh_keys = [0.5 * (z(jn[f"hip_{s}"]) + z(jn[f"knee_{s}"])) for s in ("r", "l")]
        add("skirt", "hull", pts, np.minimum(np.minimum(*thigh_keys), torso_key) - 0.004, lower, PART["skirt"],
            (b["r"]["hip"], b["l"]["hip"], b["r"]["kn"], b["l"]["kn"]), garment=2)

    # ---- head: silhouette, hair, ears, face features
    a, bh = shape.head_half_width, shape.head_half_height
    hc = pose.head_center
    r_head = pose.head_rot
    psi = np.arctan2(r_head[:, 0, 2], r_head[:, 2, 2])  # the head's turn about the vertical
    r_rest = kin.mat(r_head, np.transpose(kin.rot_y(psi), (0, 2, 1)))
    head_key = z(hc)

    def head_view(theta, v, grow=1.0):
        """Head-surface points given by view angle theta (0 = facing the camera) -> supersampled px."""
        loc = kin.head_surface(np.clip(theta, -math.pi / 2, math.pi / 2), v, a * grow, bh * grow)
        return proj(hc[:, None] + kin.apply(r_rest, loc))

    vs = np.linspace(-1.0, 1.0, 15)
    sil_theta = np.concatenate([np.full(15, -math.pi / 2), np.full(15, math.pi / 2)])
    sil_v = np.concatenate([vs, vs[::-1]])
    add("head", "poly", head_view(np.broadcast_to(sil_theta, (n, 30)), np.broadcast_to(sil_v, (n, 30))), head_key,
        skin, PART["head"], FACE_OWNERS, shade=np.ones(n))
    # Hair: the part of the head above the hairline, traced in view angles so the back of the head shows
    # as hair when the person turns away.
    style = app.hair_style
    theta = np.linspace(-math.pi, math.pi, 41)
    hair_phi = psi[:, None] + theta[None]  # head angle of each view angle
    line_v = _hairline(hair_phi, style)
    up_r = np.linspace(0.0, 1.0, 7)[None]
    back_v = line_v[:, -1:] + (-1.0 - line_v[:, -1:]) * up_r
    front_v = -1.0 + (line_v[:, :1] + 1.0) * up_r
    loop_theta = np.concatenate([np.broadcast_to(theta, (n, 41)), np.full((n, 7), math.pi),
                                 np.full((n, 7), -math.pi)], 1)
    loop_v = np.concatenate([line_v, back_v, front_v], 1)
    hair_col = app.hair if style != "buzz" else tuple(int(0.55 * h + 0.45 * s) for h, s in zip(app.hair, skin))
    add("hair", "poly", head_view(loop_theta, loop_v, grow=1.045), head_key - 0.0005, hair_col, PART["hair"],
        (), shade=np.ones(n))
    if style == "long":
        corners = np.array([[sx * wx, y, zz] for y, wx in ((-0.25 * bh, 1.03 * a), (2.1 * bh, 1.25 * a))
                            for sx in (-1, 1) for zz in (0.3 * a, 1.05 * a)])
        pts3 = hc[:, None] + kin.apply(r_head, np.broadcast_to(corners, (n, 8, 3)))
        add("back_hair", "hull", proj(pts3), z(pts3).mean(1), app.hair, PART["back_hair"], ())
    elif style == "bun":
        centre = hc + kin.apply(r_head, np.array([0.0, -0.78 * bh, 0.85 * a]))
        rad = 0.42 * a * k
        add("bun", "ellipse", proj(centre)[:, None], z(centre), app.hair, PART["hair"], (),
            axes=np.stack([rad, rad], -1), angle=np.zeros(n))
    head_up = kin.apply(r_head, np.array([0.0, 1.0, 0.0]))
    roll_deg = np.degrees(np.arctan2(-head_up[:, 0], head_up[:, 1]))
    for s, m in kin.SIDES:
        ear = jn[f"ear_{s}"]
        facing_ear = -jn[f"ear_normal_{s}"][:, 2]
        axes = np.stack([a * (0.08 + 0.14 * np.clip(facing_ear, 0, 1)) * k, 0.24 * bh * k], -1)
        add(f"ear_{s}", "ellipse", proj(ear)[:, None], z(ear), _shade(skin, 0.9), PART["ear"], FACE_OWNERS,
            axes=axes, angle=roll_deg)
    face_px = proj(pose.face)
    # > 0 where a face point faces the camera: its surface normal leaned towards where the face looks, so
    # the chin and jaw (normals pointing down or sideways) hide when the head turns away.
    head_fwd = kin.apply(r_head, np.array([0.0, 0.0, -1.0]))[:, None]
    lean = pose.face_normals + 0.6 * head_fwd
    facing_face = -lean[..., 2] / np.linalg.norm(lean, axis=-1)

    def feature(name, idx, kind, colour, min_facing, when=True, **kw):
        enabled = (facing_face[:, idx].mean(1) > min_facing) & when
        add(name, kind, face_px[:, idx], head_key - 0.001, colour, PART["head"], FACE_OWNERS, enabled=enabled,
            shade=np.ones(n), **kw)

    eye_col = (35, 28, 30)
    lip_col = tuple(int(np.clip(v, 0, 255)) for v in (skin[0] * 0.78 + 40, skin[1] * 0.5, skin[2] * 0.55))
    brow_col = _shade(app.hair, 0.8) if style != "buzz" else _shade(skin, 0.55)
    brow_w = np.maximum(1, np.round(0.1 * a * k)).astype(np.int32)
    feature("eye_r", list(range(36, 42)), "poly", eye_col, 0.2)
    feature("eye_l", list(range(42, 48)), "poly", eye_col, 0.2)
    feature("brow_r", list(range(17, 22)), "line", brow_col, 0.2, thickness=brow_w)
    feature("brow_l", list(range(22, 27)), "line", brow_col, 0.2, thickness=brow_w)
    feature("nose", [27, 30, 31, 33, 35], "hull", _shade(skin, 0.82), -0.2)
    feature("mouth", list(range(48, 60)), "poly", lip_col, 0.15)
    lips_apart = np.linalg.norm(pose.face[:, 66] - pose.face[:, 62], axis=-1) / bh > 0.05
    feature("mouth_inner", list(range(60, 68)), "poly", (70, 25, 30), 0.15, when=lips_apart)

    assert len(prims) <= MAX_PRIMS, "the index map is uint8"

    # ---- keypoints, visibility cues, speeds
    kp3 = kin.keypoints_3d(pose)
    kp = camera.project(kp3, t)
    facing = np.ones((n, NUM_POINTS))
    face_vis = 0.1 + 0.9 * _smoothstep((facing_face + 0.25) / 0.4)
    facing[:, FACE0:FACE0 + 68] = face_vis
    facing[:, 0] = face_vis[:, 30]
    facing[:, 14] = face_vis[:, 36:42].mean(1)
    facing[:, 15] = face_vis[:, 42:48].mean(1)
    for s, _ in kin.SIDES:
        fe = -jn[f"ear_normal_{s}"][:, 2]
        facing[:, b[s]["ear"]] = 0.1 + 0.9 * _smoothstep((fe + 0.35) / 0.45)
    if n > 1:
        speed = np.linalg.norm(np.gradient(kp3[..., :2], axis=0), axis=-1) * fps
    else:
        speed = np.zeros((n, NUM_POINTS))

    patterns = {}
    angle = np.arctan2(spine_img[:, 0], -spine_img[:, 1])
    for gid, garment, anchor in ((1, app.shirt, proj(jn["neck"])), (2, app.lower, proj(pel))):
        if garment.pattern != "solid":
            period = np.maximum(garment.period * k, 4.0 * ss)
            patterns[gid] = (garment.pattern, anchor, angle, period)
    shadow = None
    if app.background.kind in ("floor", "tiles"):
        centre = proj(np.stack([pel[:, 0], np.zeros(n), pel[:, 2]], -1))
        shadow = (centre, np.stack([0.2 * k, 0.035 * k], -1))
    return Scene(width=width, height=height, ss=ss, prims=prims, keypoints=kp, facing=facing, speed=speed,
                 scale=scale, patterns=patterns, shadow=shadow)


# ------------------------------------------------------------------------------------------------ drawing


def _ints(p) -> np.ndarray:
    return np.ascontiguousarray(np.round(np.asarray(p) * ONE).astype(np.int32))


def _pattern_mask(kind: str, xs, ys, anchor, angle: float, period: float) -> np.ndarray:
    dx, dy = xs - anchor[0], ys - anchor[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / period
    v = (-dx * s + dy * c) / period
    if kind == "stripes":
        return (v - np.floor(v)) < 0.5
    if kind == "vstripes":
        return (u - np.floor(u)) < 0.5
    return ((np.floor(u) + np.floor(v)) % 2) == 0


@dataclass
class DrawnClip:
    frames: np.ndarray  # (N,H,W,3) uint8
    occlusion: np.ndarray  # (N,134) fraction of a keypoint's neighbourhood covered by a nearer part


_SAMPLE_OFFSETS = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])


def drawn_window(idx: np.ndarray, ss: int):
    """(y0, y1, x0, x1) in output pixels: the whole ss x ss blocks of the index map holding anything drawn, with a
    block to spare on each side (clipped to the frame), or None when nothing was drawn. Every pixel pair an
    outline compares then lies inside it (pairs of background pixels never make one)."""
    rows, cols = np.flatnonzero(idx.any(axis=1)), np.flatnonzero(idx.any(axis=0))
    if not rows.size:
        return None
    h, w = idx.shape[0] // ss, idx.shape[1] // ss
    return (max(rows[0] // ss - 1, 0), min(rows[-1] // ss + 2, h),
            max(cols[0] // ss - 1, 0), min(cols[-1] // ss + 2, w))


def compose_frame(idx, bg, bg_shadow, lut, lut2, part_lut, garment_lut, patterns, origin=(0, 0)) -> np.ndarray:
    """A supersampled frame (float32) from its index map (or a window of it, whose top-left pixel in the frame is
    ``origin`` = (x, y): the clothing patterns are anchored to the frame): the background, the floor shadow,
    each primitive's colour (``lut`` by index), the clothing patterns (``patterns``: (garment id, kind, anchor,
    angle, period); ``lut2`` where a pattern is on), then outlines where a nearer part meets another part."""
    img = np.array(bg, dtype=np.float32)  # a copy
    # Masked copies in OpenCV (numpy's boolean gathers were most of the time). cv2.copyTo writes into img only
    # when source and img agree in type, hence float32 throughout.
    cv2.copyTo(np.ascontiguousarray(bg_shadow, dtype=np.float32), (idx == 1).view(np.uint8), img)
    colours = cv2.LUT(cv2.merge([idx, idx, idx]), np.ascontiguousarray(lut, dtype=np.float32).reshape(1, 256, 3))
    cv2.copyTo(colours, (idx >= FIRST_RANK).view(np.uint8), img)
    if patterns:
        gmap = garment_lut[idx]
        for gid, kind, anchor, angle, period in patterns:
            ys, xs = np.nonzero(gmap == gid)
            if ys.size:
                on = _pattern_mask(kind, (xs + origin[0]).astype(np.float32), (ys + origin[1]).astype(np.float32),
                                   anchor, angle, period)
                ys, xs = ys[on], xs[on]
                img[ys, xs] = lut2[idx[ys, xs]]
    pmap = part_lut[idx]
    hs, ws = idx.shape
    edge = np.zeros((hs, ws), bool)
    for dy, dx in ((0, 1), (1, 0)):
        a_idx, b_idx = idx[: hs - dy, : ws - dx], idx[dy:, dx:]
        a_p, b_p = pmap[: hs - dy, : ws - dx], pmap[dy:, dx:]
        differ = a_p != b_p
        edge[: hs - dy, : ws - dx] |= differ & (a_idx > b_idx)
        edge[dy:, dx:] |= differ & (b_idx > a_idx)
    cv2.copyTo(img * np.float32(OUTLINE_DARKEN), edge.view(np.uint8), img)  # img[edge] *= 0.72, in float32
    return img


def downscale_to_uint8(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """A supersampled float image to output pixels: INTER_AREA (each ss x ss block averaged on its own at an
    integer scale), rounded and clipped to uint8. The background and every drawn window go through this one
    function, so a window's pixels equal the whole frame's."""
    return np.clip(np.round(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)), 0, 255).astype(np.uint8)


def draw_scene(scene: Scene, app: Appearance) -> DrawnClip:
    """Paint every frame and measure keypoint occlusion on the index map."""
    ss, w, h = scene.ss, scene.width, scene.height
    ws, hs = w * ss, h * ss
    bg = render_background(app.background, ws, hs)
    bg_shadow = bg * 0.72
    # Away from the figure and its shadow a frame is the background: downscaled once; each frame composes only
    # the window around what was drawn (INTER_AREA at an integer scale averages each ss x ss block on its own,
    # so a block-aligned window downscales to the same pixels as the whole frame).
    bg_small = downscale_to_uint8(bg, w, h)
    prims = scene.prims
    n_prims = len(prims)
    n = scene.keypoints.shape[0]
    depth = np.stack([p.depth for p in prims], 1)  # (N,P)
    enabled = np.stack([p.enabled if p.enabled is not None else np.ones(n, bool) for p in prims], 1)
    own = np.zeros((NUM_POINTS, n_prims), bool)
    for j, p in enumerate(prims):
        own[list(p.owns), j] = True
    colours = np.array([p.colour for p in prims], np.float32)
    shades = np.stack([p.shade for p in prims], 1).astype(np.float32)
    parts = np.array([p.part for p in prims], np.uint8)
    garments = np.array([p.garment for p in prims], np.uint8)
    colour2 = {1: np.asarray(app.shirt.colour2, np.float32), 2: np.asarray(app.lower.colour2, np.float32)}
    int_pts = [_ints(p.pts) for p in prims]
    int_axes = [_ints(p.axes) if p.axes is not None else None for p in prims]
    kp_ss = np.round(scene.keypoints * ss + (ss - 1) / 2.0).astype(np.int64)

    out = np.empty((n, h, w, 3), np.uint8)
    occlusion = np.zeros((n, NUM_POINTS))
    idx = np.zeros((hs, ws), np.uint8)
    for f in range(n):
        idx[:] = 0
        if scene.shadow is not None:
            c, ax = _ints(scene.shadow[0][f]), _ints(scene.shadow[1][f])
            cv2.ellipse(idx, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])), 0.0, 0.0, 360.0, 1, -1, cv2.LINE_8,
                        SHIFT)
        order = np.argsort(-depth[f], kind="stable")
        rank_of = np.full(n_prims, -1, np.int64)
        rank = FIRST_RANK
        lut = np.zeros((256, 3), np.float32)
        lut2 = np.zeros((256, 3), np.float32)  # second clothing colour (patterns)
        part_lut = np.zeros(256, np.uint8)
        garment_lut = np.zeros(256, np.uint8)
        for j in order:
            if not enabled[f, j]:
                continue
            p = prims[j]
            pts = int_pts[j][f]
            colour = rank
            if p.kind == "poly":
                cv2.fillPoly(idx, [pts], colour, cv2.LINE_8, SHIFT)
            elif p.kind == "hull":
                cv2.fillConvexPoly(idx, cv2.convexHull(pts), colour, cv2.LINE_8, SHIFT)
            elif p.kind == "line":
                cv2.polylines(idx, [pts], False, colour, int(p.thickness[f]), cv2.LINE_8, SHIFT)
            else:  # ellipse
                ax = int_axes[j][f]
                cv2.ellipse(idx, (int(pts[0, 0]), int(pts[0, 1])), (max(int(ax[0]), 1), max(int(ax[1]), 1)),
                            float(p.angle[f]), 0.0, 360.0, colour, -1, cv2.LINE_8, SHIFT)
            rank_of[j] = rank
            lut[rank] = colours[j] * shades[f, j]
            if garments[j]:
                lut2[rank] = colour2[garments[j]] * shades[f, j]
            part_lut[rank] = parts[j]
            garment_lut[rank] = garments[j]
            rank += 1
        out[f] = bg_small
        window = drawn_window(idx, ss)
        if window is not None:
            by0, by1, bx0, bx1 = window
            rows, cols = slice(by0 * ss, by1 * ss), slice(bx0 * ss, bx1 * ss)
            patterns = [(gid, kind, anchor[f], float(angle[f]), float(period[f]))
                        for gid, (kind, anchor, angle, period) in scene.patterns.items()]
            img = compose_frame(idx[rows, cols], bg[rows, cols], bg_shadow[rows, cols], lut, lut2, part_lut,
                                garment_lut, patterns, origin=(bx0 * ss, by0 * ss))
            out[f, by0:by1, bx0:bx1] = downscale_to_uint8(img, bx1 - bx0, by1 - by0)
        # Occlusion: a keypoint is covered where the pixel shows a primitive it does not belong to that was
        # painted after all of its own primitives.
        own_rank = np.where(own, rank_of[None], -1).max(1)  # (134,)
        sx = np.clip(kp_ss[f, :, 0][:, None] + _SAMPLE_OFFSETS[None, :, 0], 0, ws - 1)
        sy = np.clip(kp_ss[f, :, 1][:, None] + _SAMPLE_OFFSETS[None, :, 1], 0, hs - 1)
        q = idx[sy, sx].astype(np.int64)  # (134,5)
        prim_at = np.full(256, -1, np.int64)
        prim_at[rank_of[rank_of >= 0]] = np.nonzero(rank_of >= 0)[0]
        pj = prim_at[q]
        belongs = np.where(pj >= 0, own[np.arange(NUM_POINTS)[:, None], np.maximum(pj, 0)], False)
        covered = (q >= FIRST_RANK) & ~belongs & (q > own_rank[:, None])
        occlusion[f] = covered.mean(1)
    return DrawnClip(frames=out, occlusion=occlusion)
