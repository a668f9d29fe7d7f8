"""Dance motions: every joint angle is a few sinusoids on the music's beat, plus stepping feet and turns.

A :class:`Motion` is pure data (JSON-able through ``to_dict``/``from_dict``); ``evaluate(t)`` gives every
channel for times ``t`` (seconds) as arrays, which :func:`mimicmotion.synthetic.kinematics.solve` turns
into 3D points. Frequencies stay in 0.3-2 Hz, the range of human dance movement; limits are applied with
a smooth clamp so joint angles (and hence keypoints) stay smooth.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from mimicmotion.errors import ConfigError

MIN_HZ, MAX_HZ = 0.3, 2.0
SIDES = ("r", "l")

# name: (centre range, total amplitude range, limits). Angles in radians, distances in body heights.
TRUNK_CHANNELS = {
    "sway": ((0.0, 0.0), (0.005, 0.035), (-0.08, 0.08)),
    "pelvis_twist": ((-0.1, 0.1), (0.0, 0.3), (-0.6, 0.6)),
    "pelvis_roll": ((0.0, 0.0), (0.0, 0.1), (-0.2, 0.2)),
    "spine_roll": ((-0.05, 0.05), (0.0, 0.15), (-0.3, 0.3)),
    "spine_pitch": ((-0.03, 0.12), (0.0, 0.1), (-0.2, 0.35)),
    "chest_twist": ((-0.1, 0.1), (0.0, 0.3), (-0.5, 0.5)),
    "head_yaw": ((-0.25, 0.25), (0.0, 0.45), (-1.0, 1.0)),
    "head_pitch": ((-0.1, 0.15), (0.0, 0.2), (-0.4, 0.45)),
    "head_roll": ((-0.1, 0.1), (0.0, 0.2), (-0.35, 0.35)),
    "mouth": ((0.0, 0.3), (0.0, 0.35), (0.0, 1.0)),
}
ARM_CHANNELS = {
    "abd": ((0.2, 1.7), (0.2, 1.0), (0.0, 2.95)),
    "flex": ((-0.2, 0.7), (0.05, 0.6), (-0.7, 1.7)),
    "twist": ((-0.6, 0.9), (0.0, 0.6), (-1.2, 1.4)),
    "elbow": ((0.15, 1.5), (0.1, 0.9), (0.03, 2.4)),
    "roll": ((0.0, 1.8), (0.2, 1.0), (-0.8, 2.6)),
    "wrist_flex": ((-0.2, 0.3), (0.05, 0.4), (-0.9, 0.9)),
    "wrist_dev": ((-0.1, 0.1), (0.0, 0.2), (-0.4, 0.4)),
    "curl": ((0.05, 0.7), (0.1, 0.5), (0.0, 1.0)),
    "spread": ((0.05, 0.3), (0.0, 0.12), (0.0, 0.4)),
    "thumb": ((0.0, 0.6), (0.0, 0.4), (0.0, 1.0)),
    "shrug": ((0.0, 0.0), (0.0, 0.012), (-0.02, 0.02)),
}
STEP_STYLES = ("bounce", "step_touch", "knee_lift", "front_back", "march")
TURN_KINDS = ("spin", "half", "profile")


@dataclass(frozen=True)
class Channel:
    """centre + sum_k amps[k] * sin(2 pi freqs[k] t + phases[k]), smoothly clamped to [lo, hi]."""

    center: float
    amps: tuple = ()
    freqs: tuple = ()
    phases: tuple = ()
    lo: float = -math.inf
    hi: float = math.inf

    def __call__(self, t: np.ndarray) -> np.ndarray:
        x = np.full_like(t, self.center, dtype=np.float64)
        for a, f, p in zip(self.amps, self.freqs, self.phases):
            x = x + a * np.sin(2 * math.pi * f * t + p)
        return soft_clip(x, self.lo, self.hi)


@dataclass(frozen=True)
class Steps:
    """Feet: each foot lifts once per cycle (the two half a cycle apart) and may move while lifted."""

    style: str = "bounce"
    freq: float = 0.5
    phase: float = 0.0
    stance: float = 0.09  # half the distance between the feet
    lateral: float = 0.0  # side-step amplitude
    forward: float = 0.0  # forward/back step amplitude
    lift: float = 0.0  # ankle lift at the top of a step


@dataclass(frozen=True)
class Turn:
    """``spin``: a full turn; ``half``: turn the back to the camera; ``profile``: to the side and back."""

    kind: str
    start: float
    duration: float
    direction: int = 1

    def __call__(self, t: np.ndarray) -> np.ndarray:
        q = np.clip((t - self.start) / self.duration, 0.0, 1.0)
        if self.kind == "spin":
            return self.direction * 2 * math.pi * smootherstep(q)
        if self.kind == "half":
            return self.direction * math.pi * smootherstep(q)
        # profile: a third of the time turning, a third held, a third turning back
        up = smootherstep(np.clip(3 * q, 0, 1))
        down = smootherstep(np.clip(3 * q - 2, 0, 1))
        return self.direction * 0.5 * math.pi * (up - down)


@dataclass(frozen=True)
class Motion:
    tempo: float  # beats per second
    channels: dict = field(default_factory=dict)  # name -> Channel (arm channels as name_r / name_l)
    steps: Steps = Steps()
    turn: Optional[Turn] = None
    bounce_depth: float = 0.0
    bounce_phase: float = 0.0

    def evaluate(self, t) -> dict:
        """Every channel at times ``t`` (seconds): name -> (N,) array, as ``kinematics.solve`` expects."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        out = {name: ch(t) for name, ch in self.channels.items()}
        out["yaw"] = out.get("yaw", np.zeros_like(t)) + (self.turn(t) if self.turn is not None else 0.0)
        # Knees bend on every beat; the pelvis drops by up to bounce_depth of the leg length.
        out["bounce"] = self.bounce_depth * (0.5 - 0.5 * np.cos(2 * math.pi * self.tempo * t + self.bounce_phase))
        st = self.steps
        out["stance"] = np.full_like(t, st.stance)
        for k, s in enumerate(SIDES):
            u = 2 * math.pi * st.freq * t + st.phase + k * math.pi
            g = step_position(u)
            out[f"foot_x_{s}"] = st.lateral * g
            out[f"foot_z_{s}"] = st.forward * g
            out[f"lift_{s}"] = st.lift * np.maximum(np.sin(u), 0.0) ** 2
        out["root_x"] = np.zeros_like(t)
        out["root_z"] = np.zeros_like(t)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {k: asdict(v) for k, v in self.channels.items()}
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Motion":
        channels = {k: Channel(**{**v, "amps": tuple(v["amps"]), "freqs": tuple(v["freqs"]),
                                  "phases": tuple(v["phases"]), "lo": _unsafe(v["lo"]), "hi": _unsafe(v["hi"])})
                    for k, v in d["channels"].items()}
        turn = Turn(**d["turn"]) if d.get("turn") else None
        return cls(tempo=d["tempo"], channels=channels, steps=Steps(**d["steps"]), turn=turn,
                   bounce_depth=d.get("bounce_depth", 0.0), bounce_phase=d.get("bounce_phase", 0.0))

    def summary(self) -> dict:
        return {"tempo_hz": round(self.tempo, 3), "steps": self.steps.style,
                "turn": self.turn.kind if self.turn else None}


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _unsafe(x):
    return float(x) if isinstance(x, str) else x


def soft_clip(x, lo: float, hi: float):
    """Clamp to [lo, hi] with rounded corners (width 4% of the range), so the result stays smooth."""
    if math.isinf(lo) and math.isinf(hi):
        return x
    k = 25.0 / max(hi - lo, 1e-6)
    if not math.isinf(hi):
        x = x - np.logaddexp(0.0, (x - hi) * k) / k
    if not math.isinf(lo):
        x = x + np.logaddexp(0.0, (lo - x) * k) / k
    return x


def smootherstep(q):
    q = np.clip(q, 0.0, 1.0)
    return q * q * q * (q * (6 * q - 15) + 10)


def step_position(u) -> np.ndarray:
    """Foot position in [-1, 1] for step phase ``u``: it moves only while the foot is up (sin u > 0),
    alternating direction every cycle, and holds still while the foot is on the ground."""
    u = np.asarray(u, np.float64)
    cycle = np.floor(u / (2 * math.pi))
    r = u - cycle * 2 * math.pi
    sign = np.where(np.mod(cycle, 2) == 0, 1.0, -1.0)
    progress = np.where(r < math.pi, 0.5 - 0.5 * np.cos(r), 1.0)
    return sign * (2 * progress - 1)


# ------------------------------------------------------------------------------------------------ sampling


def _freqs(rng, tempo: float, count: int) -> tuple:
    first = tempo * rng.choice([0.5, 1.0])
    rest = [tempo * rng.choice([0.25, 0.5, 1.0, 1.5, 2.0]) for _ in range(count - 1)]
    return tuple(float(np.clip(f, MIN_HZ, MAX_HZ)) for f in [first, *rest])


def _channel(rng, tempo: float, spec) -> Channel:
    (c_lo, c_hi), (a_lo, a_hi), (lo, hi) = spec
    count = int(rng.integers(1, 4))
    weights = np.sort(rng.dirichlet(np.ones(count)))[::-1]
    total = rng.uniform(a_lo, a_hi)
    return Channel(center=float(rng.uniform(c_lo, c_hi)), amps=tuple(float(total * w) for w in weights),
                   freqs=_freqs(rng, tempo, count), phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, count)),
                   lo=lo, hi=hi)


def _mirrored(ch: Channel, shift: float) -> Channel:
    return Channel(ch.center, ch.amps, ch.freqs, tuple(p + shift for p in ch.phases), ch.lo, ch.hi)


def sample_motion(rng: np.random.Generator, duration: float = 2.0, turns: bool = True) -> Motion:
    """A random dance: tempo 0.7-1.6 beats/s, trunk and head sway, arm and hand channels (independent,
    mirrored or alternating between the sides), a stepping style and, sometimes, a turn."""
    tempo = float(rng.uniform(0.7, 1.6))
    channels = {name: _channel(rng, tempo, spec) for name, spec in TRUNK_CHANNELS.items()}
    # Facing: mostly the camera, sometimes three-quarter view.
    base_yaw = float(np.clip(rng.normal(0.0, 0.2), -0.5, 0.5))
    if rng.random() < 0.15:
        base_yaw = float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.1))
    yaw_amp = float(rng.uniform(0.0, 0.3))
    channels["yaw"] = Channel(base_yaw, (yaw_amp,), (float(np.clip(tempo * 0.5, MIN_HZ, MAX_HZ)),),
                              (float(rng.uniform(0, 2 * math.pi)),))
    arm_mode = rng.choice(["independent", "mirror", "alternate"], p=[0.4, 0.35, 0.25])
    for name, spec in ARM_CHANNELS.items():
        right = _channel(rng, tempo, spec)
        if arm_mode == "independent" or name == "shrug":
            left = _channel(rng, tempo, spec)
        else:
            left = _mirrored(right, 0.0 if arm_mode == "mirror" else math.pi)
        channels[f"{name}_r"], channels[f"{name}_l"] = right, left
    style = str(rng.choice(STEP_STYLES, p=[0.2, 0.3, 0.15, 0.15, 0.2]))
    lift_range = {"bounce": (0.0, 0.0), "step_touch": (0.02, 0.05), "knee_lift": (0.08, 0.16),
                  "front_back": (0.02, 0.05), "march": (0.03, 0.08)}[style]
    steps = Steps(style=style, freq=float(np.clip(tempo / 2, MIN_HZ, MAX_HZ)), phase=float(rng.uniform(0, 2 * math.pi)),
                  stance=float(rng.uniform(0.06, 0.12)),
                  lateral=float(rng.uniform(0.04, 0.1)) if style == "step_touch" else 0.0,
                  forward=float(rng.uniform(0.04, 0.1)) if style == "front_back" else 0.0,
                  lift=float(rng.uniform(*lift_range)))
    turn = None
    if turns and rng.random() < 0.3:
        kind = str(rng.choice(TURN_KINDS, p=[0.4, 0.3, 0.3]))
        # A full turn takes 1.4-2.2 s (about a bar of music); part of it may fall outside a short clip.
        length = float(rng.uniform(1.4, 2.2) if kind == "spin" else rng.uniform(1.0, 1.8))
        start = float(rng.uniform(-0.3 * length, max(-0.3 * length, duration - 0.7 * length) + 1e-6))
        turn = Turn(kind=kind, start=start, duration=length, direction=int(rng.choice([-1, 1])))
    return Motion(tempo=tempo, channels=channels, steps=steps, turn=turn,
                  bounce_depth=float(rng.uniform(0.0, 0.07)), bounce_phase=float(rng.uniform(0, 2 * math.pi)))


def still_motion(**values) -> Motion:
    """A motion that holds one pose: every channel at a mid-range value, overridden by ``values``
    (e.g. ``yaw=math.pi`` for the back, ``abd_r=2.5`` for a raised right arm). For tests and references."""
    defaults = {"sway": 0.0, "pelvis_twist": 0.0, "pelvis_roll": 0.0, "spine_roll": 0.0, "spine_pitch": 0.03,
                "chest_twist": 0.0, "head_yaw": 0.0, "head_pitch": 0.0, "head_roll": 0.0, "mouth": 0.1, "yaw": 0.0}
    arm = {"abd": 0.35, "flex": 0.1, "twist": 0.3, "elbow": 0.4, "roll": 0.9, "wrist_flex": 0.0, "wrist_dev": 0.0,
           "curl": 0.2, "spread": 0.15, "thumb": 0.2, "shrug": 0.0}
    for name, value in arm.items():
        defaults[f"{name}_r"] = defaults[f"{name}_l"] = value
    unknown = set(values) - set(defaults) - {"stance"}
    if unknown:
        raise ConfigError(f"still_motion: unknown channels {sorted(unknown)}; known: {sorted(defaults)}")
    defaults.update({k: v for k, v in values.items() if k != "stance"})
    channels = {k: Channel(float(v)) for k, v in defaults.items()}
    return Motion(tempo=1.0, channels=channels, steps=Steps(stance=float(values.get("stance", 0.09))))
