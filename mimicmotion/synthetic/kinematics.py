"""Forward kinematics of the synthetic dancer: joint angles -> 3D points, batched over frames.

Body frame: x = the person's left (image right when facing the camera), y = down, z = away from the
camera; the ground is y = 0 and the body faces -z at yaw 0. Lengths are in body heights (the standing
person is 1 tall). Every function takes arrays with a leading frame axis N, so a whole clip is solved in
one pass. The camera (render module) is orthographic: it drops z and keeps it for depth ordering.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ------------------------------------------------------------------------------------------------ rotations


def rot_x(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_y(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def mat(*rs) -> np.ndarray:
    """Product of batched rotations, left to right."""
    out = rs[0]
    for r in rs[1:]:
        out = np.einsum("nij,njk->nik", out, r)
    return out


def apply(r: np.ndarray, v) -> np.ndarray:
    """Rotate vectors: r (N,3,3), v (3,) or (N,3) or (N,K,3) -> same leading shape."""
    v = np.asarray(v, np.float64)
    if v.ndim == 1:
        return np.einsum("nij,j->ni", r, v)
    if v.ndim == 2:
        return np.einsum("nij,nj->ni", r, v)
    return np.einsum("nij,nkj->nki", r, v)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def smooth_max(a, b, eps: float = 0.004):
    """A differentiable max (keeps motion smooth where a constraint takes over)."""
    return 0.5 * (a + b + np.sqrt((a - b) ** 2 + eps * eps))


def two_bone_ik(root, target, l1: float, l2: float, pole):
    """Middle joint and (possibly pulled-in) end of a two-bone chain reaching for ``target``, bending
    towards ``pole``. All (N,3). The reach is clamped just short of straight so the knee never locks."""
    v = target - root
    d = np.linalg.norm(v, axis=-1, keepdims=True)
    vh = v / np.maximum(d, 1e-9)
    dc = np.clip(d, abs(l1 - l2) + 1e-4, (l1 + l2) * 0.999)
    end = root + vh * dc
    a = (l1 * l1 - l2 * l2 + dc * dc) / (2 * dc)
    h = np.sqrt(np.maximum(l1 * l1 - a * a, 0.0))
    p = pole - np.sum(pole * vh, -1, keepdims=True) * vh
    mid = root + vh * a + _unit(p) * h
    return mid, end


# ------------------------------------------------------------------------------------------------ head


def head_profile(v) -> np.ndarray:
    """Half-width of the head (in units of its half-width a) at height v in [-1 top, 1 chin]."""
    v = np.clip(np.asarray(v, np.float64), -1.0, 1.0)
    return np.sqrt(np.maximum(1.0 - v * v, 0.0)) * (1.0 - 0.12 * np.maximum(v, 0.0))


def head_surface(phi, v, a: float, b: float) -> np.ndarray:
    """Points on the head surface in head coordinates; ``phi`` = angle around the vertical axis from the
    face's front (positive towards the person's left), ``v`` = height. Shapes broadcast; returns (...,3)."""
    phi, v = np.broadcast_arrays(np.asarray(phi, np.float64), np.asarray(v, np.float64))
    w = head_profile(v)
    return np.stack([a * w * np.sin(phi), b * v, -a * w * np.cos(phi)], -1)


def head_normal(points: np.ndarray, a: float, b: float) -> np.ndarray:
    return _unit(points / np.array([a * a, b * b, a * a]))


_EYE_W, _EYE_H, _EYE_Y, _EYE_X = 0.19, 0.085, 0.05, 0.37
_MOUTH_W, _MOUTH_Y = 0.30, 0.64


def face_template(mouth_open) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 68 face landmarks (iBUG order) as (u, v, protrusion), u = frontal x over the local half-width.

    ``mouth_open`` (N,) in [0, 1] drops the lower lip. Returns u (N,68), v (N,68), protrusion (68,) in units
    of the head half-width; for the jaw points (``JAW``) u holds their angle around the head instead."""
    m = np.asarray(mouth_open, np.float64)[:, None]
    n = m.shape[0]
    u = np.zeros((n, 68))
    v = np.zeros((n, 68))
    prot = np.zeros(68)
    # Jaw 0..16: from the right ear (image left) down round the chin to the left ear; u holds phi here.
    t = np.linspace(0.0, 1.0, 17)
    s = np.cos(np.pi * t)
    u[:, :17] = -s * 0.46 * np.pi
    v[:, :17] = 0.08 + 0.92 * np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0)) ** 0.9
    # Brows 17..21 (right, image left) and 22..26 (left), arched.
    arch = np.sin(np.pi * np.linspace(0.0, 1.0, 5))
    u[:, 17:22] = np.linspace(-0.74, -0.16, 5)
    u[:, 22:27] = np.linspace(0.16, 0.74, 5)
    v[:, 17:22] = -0.17 - 0.07 * arch
    v[:, 22:27] = -0.17 - 0.07 * arch
    prot[17:27] = 0.04
    # Nose bridge 27..30 (30 = tip) and the nostril base 31..35.
    v[:, 27:31] = np.array([-0.02, 0.12, 0.26, 0.38])
    prot[27:31] = np.array([0.06, 0.12, 0.18, 0.26])
    u[:, 31:36] = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    v[:, 31:36] = np.array([0.43, 0.46, 0.47, 0.46, 0.43])
    prot[31:36] = np.array([0.08, 0.12, 0.16, 0.12, 0.08])
    # Eyes: outer corner, two upper-lid points, inner corner, two lower-lid points (clockwise in the image).
    ring_u = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
    ring_v = np.array([0.0, -1.0, -1.0, 0.0, 1.0, 1.0])
    u[:, 36:42] = -_EYE_X + _EYE_W * ring_u
    v[:, 36:42] = _EYE_Y + _EYE_H * ring_v
    u[:, 42:48] = _EYE_X + _EYE_W * ring_u
    v[:, 42:48] = _EYE_Y + _EYE_H * ring_v
    prot[36:48] = 0.02
    # Outer lip 48..59 from the right corner along the upper lip, back along the lower lip.
    w = _MOUTH_W
    u[:, 48:60] = np.array([-w, -2 * w / 3, -w / 3, 0.0, w / 3, 2 * w / 3,
                            w, 2 * w / 3, w / 3, 0.0, -w / 3, -2 * w / 3])
    upper = np.array([0.0, -0.065, -0.08, -0.06, -0.08, -0.065, 0.0])
    lower = np.array([0.07, 0.09, 0.095, 0.09, 0.07])
    v[:, 48:55] = _MOUTH_Y + upper
    v[:, 55:60] = _MOUTH_Y + lower + 0.14 * m
    # Inner lip 60..67: right corner, upper inner, left corner, lower inner.
    u[:, 60:68] = np.array([-0.8 * w, -w / 3, 0.0, w / 3, 0.8 * w, w / 3, 0.0, -w / 3])
    v[:, 60:65] = _MOUTH_Y + np.array([0.0, -0.015, -0.015, -0.015, 0.0])
    v[:, 65:68] = _MOUTH_Y + 0.015 + 0.13 * m
    prot[48:68] = 0.06
    return u, v, prot


JAW = slice(0, 17)


def face_points_local(mouth_open, a: float, b: float):
    """68 face landmarks on the head surface in head coordinates (N,68,3), their surface angles phi and
    heights v (N,68) (for drawing with the silhouette clamp) and normals (N,68,3)."""
    u, v, prot = face_template(mouth_open)
    phi = np.arcsin(np.clip(u / np.maximum(head_profile(v), 1e-3), -0.999, 0.999))
    phi[:, JAW] = u[:, JAW]
    surf = head_surface(phi, v, a, b)
    normal = head_normal(surf, a, b)
    pts = surf + normal * (prot * a)[None, :, None]
    return pts, phi, v, normal


# ------------------------------------------------------------------------------------------------ hands

# Hand geometry in units of the body height (scaled by the person's hand size).
_PALM_LEN, _PALM_W = 0.052, 0.044
_MCP_OFFSET = (0.38, 0.13, -0.12, -0.36)  # across the palm, towards the thumb = +
_MCP_REACH = (0.97, 1.0, 0.96, 0.88)
_PHALANGES = ((0.026, 0.016, 0.012), (0.029, 0.018, 0.013), (0.027, 0.017, 0.012), (0.021, 0.013, 0.011))
_SPREAD = (1.2, 0.35, -0.4, -1.1)
_THUMB = (0.024, 0.020, 0.016)


def hand_points_local(side: int, curl, spread, thumb_curl, size: float):
    """21 hand points (COCO-WholeBody hand order) in hand coordinates: wrist at 0, fingers along +y, palm
    facing -z, thumb on the ``side`` (x sign: -1 right hand, +1 left hand). Batched (N,21,3).
    ``curl`` in [0,1] closes the fingers into a fist, ``spread`` fans them (radians), ``thumb_curl`` folds
    the thumb across the palm."""
    curl = np.asarray(curl, np.float64)
    n = curl.shape[0]
    out = np.zeros((n, 21, 3))
    palm_normal = np.array([0.0, 0.0, -1.0])
    # Thumb: CMC near the wrist on the thumb side, then three segments bending across the palm.
    cmc = np.array([side * 0.30 * _PALM_W, 0.16 * _PALM_LEN, -0.01 * _PALM_LEN]) * size
    base = _unit(np.array([side * 0.8, 0.6, -0.45]))
    across = np.array([-side * 0.7, 0.35, -0.6])
    across = _unit(across - across.dot(base) * base)
    out[:, 1] = cmc
    cur = np.broadcast_to(cmc, (n, 3)).copy()
    theta = np.zeros(n)
    for k, (length, bend) in enumerate(zip(_THUMB, (0.35, 0.7, 0.7))):
        theta = theta + np.asarray(thumb_curl) * bend
        d = np.cos(theta)[:, None] * base + np.sin(theta)[:, None] * across
        cur = cur + d * length * size
        out[:, 2 + k] = cur
    # Fingers: MCP on the knuckle line, three phalanges curling towards the palm side.
    bends = (1.3, 1.6, 1.0)
    for f in range(4):
        mcp = np.array([side * _MCP_OFFSET[f] * _PALM_W, _MCP_REACH[f] * _PALM_LEN, 0.0]) * size
        ang = np.asarray(spread) * _SPREAD[f]
        d0 = np.stack([side * np.sin(ang), np.cos(ang), np.zeros(n)], -1)
        j = 5 + 4 * f
        out[:, j] = mcp
        cur = np.broadcast_to(mcp, (n, 3)).copy()
        theta = np.zeros(n)
        for k in range(3):
            theta = theta + curl * bends[k]
            d = np.cos(theta)[:, None] * d0 + np.sin(theta)[:, None] * palm_normal
            cur = cur + d * _PHALANGES[f][k] * size
            out[:, j + 1 + k] = cur
    return out


def palm_outline_local(side: int, size: float) -> np.ndarray:
    """Corner points of the palm (hand coordinates, (6,3)) for drawing; the knuckles lie on its edge."""
    pw, pl = _PALM_W * size, _PALM_LEN * size
    return np.array([
        [side * 0.36 * pw, 0.02 * pl, 0.0], [side * 0.48 * pw, 0.45 * pl, 0.0],
        [side * 0.46 * pw, 0.92 * pl, 0.0], [0.0, 1.02 * pl, 0.0],
        [-side * 0.47 * pw, 0.86 * pl, 0.0], [-side * 0.36 * pw, 0.02 * pl, 0.0],
    ])


FINGER_WIDTH = 0.0085  # body heights, times the hand size


# ------------------------------------------------------------------------------------------------ body


@dataclass
class Pose3D:
    """One clip's solved skeleton in body-frame-then-world coordinates (N frames)."""

    joints: dict            # name -> (N,3) world points
    face: np.ndarray        # (N,68,3) world
    face_normals: np.ndarray  # (N,68,3) world
    face_phi: np.ndarray    # (N,68) surface angle of each face point (head coordinates)
    face_v: np.ndarray      # (N,68)
    hands: dict             # "r"/"l" -> (N,21,3) world
    palms: dict             # "r"/"l" -> (N,6,3) world palm outline
    head_center: np.ndarray  # (N,3)
    head_rot: np.ndarray    # (N,3,3) head -> world
    chest_rot: np.ndarray   # (N,3,3) chest -> world
    pelvis_rot: np.ndarray  # (N,3,3) pelvis -> world
    body_rot: np.ndarray    # (N,3,3)
    root: np.ndarray        # (N,3)


SIDES = (("r", -1), ("l", 1))


def solve(shape, ch: dict) -> Pose3D:
    """Joint angles (``Motion.evaluate`` output) and body proportions -> world 3D points for every frame."""
    n = ch["yaw"].shape[0]
    zeros = np.zeros(n)
    L = shape.thigh + shape.shin
    r_body = rot_y(ch["yaw"])
    root = np.stack([ch["root_x"], zeros, ch["root_z"]], -1)

    # Feet: ankles on (or lifted above) the ground around the stance centre.
    ankles = {}
    for s, m in SIDES:
        ankles[s] = np.stack([m * ch["stance"] + ch[f"foot_x_{s}"], -shape.ankle_height - ch[f"lift_{s}"],
                              ch[f"foot_z_{s}"]], -1)
    r_pelvis = mat(rot_y(ch["pelvis_twist"]), rot_z(ch["pelvis_roll"]))
    hip_off = {s: apply(r_pelvis, np.array([m * shape.hip_half_width, 0.03, 0.0])) for s, m in SIDES}
    px = 0.5 * (ankles["r"][:, 0] + ankles["l"][:, 0]) + ch["sway"]
    pz = 0.5 * (ankles["r"][:, 2] + ankles["l"][:, 2])
    py = -(shape.ankle_height + 0.985 * L * (1.0 - ch["bounce"])) - 0.03
    for s, _ in SIDES:  # lower the pelvis where a foot could not be reached otherwise
        dx = ankles[s][:, 0] - (px + hip_off[s][:, 0])
        dz = ankles[s][:, 2] - (pz + hip_off[s][:, 2])
        dy = np.sqrt(np.maximum((0.985 * L) ** 2 - dx * dx - dz * dz, 1e-4))
        py = smooth_max(py, ankles[s][:, 1] - dy - hip_off[s][:, 1])
    pelvis = np.stack([px, py, pz], -1)

    j = {"pelvis": pelvis}
    for s, m in SIDES:
        hip = pelvis + hip_off[s]
        turn = ch["pelvis_twist"] * 0.4 + m * 0.2
        pole = apply(rot_y(turn), np.array([m * 0.25, 0.0, -1.0]))
        knee, ankle = two_bone_ik(hip, ankles[s], shape.thigh, shape.shin, pole)
        foot_rot = mat(rot_y(turn), rot_x(0.9 * ch[f"lift_{s}"] / 0.1))
        fl = shape.foot_length
        j[f"hip_{s}"], j[f"knee_{s}"], j[f"ankle_{s}"] = hip, knee, ankle
        j[f"big_toe_{s}"] = ankle + apply(foot_rot, np.array([-m * 0.22 * fl, shape.ankle_height * 0.85, -0.78 * fl]))
        j[f"small_toe_{s}"] = ankle + apply(foot_rot, np.array([m * 0.28 * fl, shape.ankle_height * 0.9, -0.6 * fl]))
        j[f"heel_{s}"] = ankle + apply(foot_rot, np.array([0.0, shape.ankle_height * 0.9, 0.28 * fl]))

    # Spine, shoulders, head.
    r_chest = mat(r_pelvis, rot_y(ch["chest_twist"]), rot_z(ch["spine_roll"]), rot_x(-ch["spine_pitch"]))
    neck_base = pelvis + apply(r_chest, np.array([0.0, -shape.torso_length, 0.0]))
    for s, m in SIDES:
        j[f"shoulder_{s}"] = neck_base + apply(r_chest, np.stack(
            [m * shape.shoulder_half_width + zeros, 0.012 - ch[f"shrug_{s}"], zeros], -1))
    j["neck"] = 0.5 * (j["shoulder_r"] + j["shoulder_l"])
    j["neck_base"] = neck_base
    j["neck_top"] = neck_base + apply(r_chest, np.array([0.0, -shape.neck_length, 0.0]))
    r_head = mat(r_chest, rot_y(ch["head_yaw"]), rot_x(-ch["head_pitch"]), rot_z(ch["head_roll"]))
    a, b = shape.head_half_width, shape.head_half_height
    head_center = j["neck_top"] - apply(r_head, np.array([0.0, 0.72 * b, 0.12 * a]))
    face_local, phi, v, normal_local = face_points_local(ch["mouth"], a, b)
    face = head_center[:, None] + apply(r_head, face_local)
    face_normals = apply(r_head, normal_local)
    for s, m in SIDES:
        j[f"ear_{s}"] = head_center + apply(r_head, np.array([m * 1.0 * a, 0.1 * b, 0.08 * a]))
        j[f"ear_normal_{s}"] = apply(r_head, _unit(np.array([m * 0.75, 0.0, -0.65])))
    j["head_top"] = head_center + apply(r_head, np.array([0.0, -b, 0.0]))

    # Arms and hands.
    hands, palms = {}, {}
    for s, m in SIDES:
        r_arm = mat(r_chest, rot_z(-m * ch[f"abd_{s}"]), rot_x(-ch[f"flex_{s}"]), rot_y(m * ch[f"twist_{s}"]))
        elbow = j[f"shoulder_{s}"] + apply(r_arm, np.array([0.0, shape.upper_arm, 0.0]))
        r_fore = mat(r_arm, rot_x(-ch[f"elbow_{s}"]))
        wrist = elbow + apply(r_fore, np.array([0.0, shape.forearm, 0.0]))
        r_hand = mat(r_fore, rot_y(m * ch[f"roll_{s}"]), rot_x(-ch[f"wrist_flex_{s}"]), rot_z(m * ch[f"wrist_dev_{s}"]))
        local = hand_points_local(m, ch[f"curl_{s}"], ch[f"spread_{s}"], ch[f"thumb_{s}"], shape.hand_size)
        hands[s] = wrist[:, None] + apply(r_hand, local)
        palms[s] = wrist[:, None] + apply(r_hand, np.broadcast_to(palm_outline_local(m, shape.hand_size), (n, 6, 3)))
        j[f"elbow_{s}"], j[f"wrist_{s}"] = elbow, wrist
        j[f"palm_normal_{s}"] = apply(r_hand, np.array([0.0, 0.0, -1.0]))

    # Body frame -> world.
    def world(p):
        return root[:, None] + apply(r_body, p) if p.ndim == 3 else root + apply(r_body, p)

    def world_dir(p):
        return apply(r_body, p)

    joints = {k: (world_dir(p) if "normal" in k else world(p)) for k, p in j.items()}
    return Pose3D(
        joints=joints, face=world(face), face_normals=world_dir(face_normals), face_phi=phi, face_v=v,
        hands={s: world(h) for s, h in hands.items()}, palms={s: world(p) for s, p in palms.items()},
        head_center=world(head_center), head_rot=mat(r_body, r_head), chest_rot=mat(r_body, r_chest),
        pelvis_rot=mat(r_body, r_pelvis), body_rot=r_body, root=root,
    )


def keypoints_3d(p: Pose3D) -> np.ndarray:
    """The 134 layout points in 3D (N,134,3): body (OpenPose-18), feet, face, left hand, right hand."""
    jn = p.joints
    n = p.face.shape[0]
    out = np.zeros((n, 134, 3))
    body = [
        p.face[:, 30], jn["neck"], jn["shoulder_r"], jn["elbow_r"], jn["wrist_r"], jn["shoulder_l"],
        jn["elbow_l"], jn["wrist_l"], jn["hip_r"], jn["knee_r"], jn["ankle_r"], jn["hip_l"], jn["knee_l"],
        jn["ankle_l"], p.face[:, 36:42].mean(1), p.face[:, 42:48].mean(1), jn["ear_r"], jn["ear_l"],
    ]
    out[:, :18] = np.stack(body, 1)
    # COCO-WholeBody foot order: left big toe, left small toe, left heel, then the right foot.
    out[:, 18:24] = np.stack([jn["big_toe_l"], jn["small_toe_l"], jn["heel_l"],
                              jn["big_toe_r"], jn["small_toe_r"], jn["heel_r"]], 1)
    out[:, 24:92] = p.face
    out[:, 92:113] = p.hands["l"]
    out[:, 113:134] = p.hands["r"]
    return out
