"""How a synthetic person and their backdrop look: body proportions, skin, hair, clothes, background.

All random choices come from one ``numpy.random.Generator``; colours are RGB 0-255 tuples. Clothing,
skin and background colours are drawn far enough apart that the silhouette and the limbs stay clear.
"""
from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np

SKIN_TONES = ((255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))
HAIR_COLOURS = ((25, 20, 20), (60, 40, 28), (110, 70, 40), (215, 185, 120), (160, 70, 30), (175, 175, 170))
PATTERNS = ("solid", "stripes", "vstripes", "checks")
HAIR_STYLES = ("short", "long", "bun", "buzz")
SLEEVES = ("none", "short", "long")
LOWER_STYLES = ("trousers", "shorts", "skirt")
BACKGROUNDS = ("solid", "vgradient", "floor", "noise", "stripes", "tiles")


@dataclass(frozen=True)
class BodyShape:
    """Segment lengths in body heights (the standing person is 1 tall); ``girth`` scales limb widths."""

    head_half_width: float = 0.052
    head_half_height: float = 0.066
    neck_length: float = 0.035
    torso_length: float = 0.30
    shoulder_half_width: float = 0.11
    hip_half_width: float = 0.075
    upper_arm: float = 0.17
    forearm: float = 0.15
    hand_size: float = 1.1
    thigh: float = 0.245
    shin: float = 0.235
    ankle_height: float = 0.045
    foot_length: float = 0.13
    girth: float = 1.0

    def standing_height(self) -> float:
        """Ground to the top of the head with straight legs (what ``normalised`` makes 1)."""
        return (self.ankle_height + self.shin + self.thigh + 0.03 + self.torso_length + self.neck_length
                + 1.72 * self.head_half_height)

    def normalised(self) -> "BodyShape":
        k = 1.0 / self.standing_height()
        d = {name: v * k for name, v in asdict(self).items() if name not in ("girth", "hand_size")}
        return BodyShape(**d, girth=self.girth, hand_size=self.hand_size)


@dataclass(frozen=True)
class Garment:
    colour: tuple
    colour2: tuple
    pattern: str = "solid"  # one of PATTERNS
    period: float = 0.05  # pattern period in body heights


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    colour: tuple
    colour2: tuple
    horizon: float = 0.8  # fraction of the frame height where a floor starts
    period: float = 0.1  # stripes / tiles period as a fraction of the frame height
    texture_seed: int = 0


@dataclass(frozen=True)
class Appearance:
    body: BodyShape
    skin: tuple
    hair: tuple
    hair_style: str
    shirt: Garment
    sleeves: str
    shirt_length: float  # 0 = waist, 1 = hips
    lower: Garment
    lower_style: str
    shoes: tuple
    background: Background

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Appearance":
        def tup(x):
            return tuple(int(c) for c in x)

        def garment(g):
            return Garment(colour=tup(g["colour"]), colour2=tup(g["colour2"]), pattern=g["pattern"], period=g["period"])

        bg = d["background"]
        return cls(
            body=BodyShape(**d["body"]), skin=tup(d["skin"]), hair=tup(d["hair"]), hair_style=d["hair_style"],
            shirt=garment(d["shirt"]), sleeves=d["sleeves"], shirt_length=d["shirt_length"],
            lower=garment(d["lower"]), lower_style=d["lower_style"], shoes=tup(d["shoes"]),
            background=Background(kind=bg["kind"], colour=tup(bg["colour"]), colour2=tup(bg["colour2"]),
                                  horizon=bg["horizon"], period=bg["period"], texture_seed=bg["texture_seed"]),
        )


def colour_distance(a, b) -> float:
    """Euclidean RGB distance weighted towards green (a cheap stand-in for perceived difference)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(np.sqrt(2 * d[0] ** 2 + 4 * d[1] ** 2 + 3 * d[2] ** 2) / 3)


def _hsv(rng, s=(0.15, 0.9), v=(0.2, 0.95)) -> tuple:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _far_from(rng, others, min_dist: float, draw, tries: int = 60) -> tuple:
    best, best_d = None, -1.0
    for _ in range(tries):
        c = draw(rng)
        d = min((colour_distance(c, o) for o in others), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def sample_body(rng: np.random.Generator) -> BodyShape:
    head = rng.uniform(0.85, 1.2)  # relative head size: small adults .. child-like
    shape = BodyShape(
        head_half_width=0.052 * head * rng.uniform(0.93, 1.07), head_half_height=0.066 * head,
        neck_length=rng.uniform(0.025, 0.045), torso_length=rng.uniform(0.27, 0.32),
        shoulder_half_width=rng.uniform(0.09, 0.13), hip_half_width=rng.uniform(0.06, 0.09),
        upper_arm=rng.uniform(0.155, 0.185), forearm=rng.uniform(0.135, 0.16), hand_size=rng.uniform(1.0, 1.25),
        thigh=rng.uniform(0.225, 0.26), shin=rng.uniform(0.215, 0.25), ankle_height=0.045,
        foot_length=rng.uniform(0.11, 0.14), girth=rng.uniform(0.85, 1.3),
    )
    return shape.normalised()


def _skin(rng) -> tuple:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(min(t, len(SKIN_TONES) - 2))
    c = np.array(SKIN_TONES[i]) * (1 - (t - i)) + np.array(SKIN_TONES[i + 1]) * (t - i)
    c = c * rng.uniform(0.95, 1.05)
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _garment(rng, others, min_dist: float) -> Garment:
    colour = _far_from(rng, others, min_dist, _hsv)
    colour2 = _far_from(rng, [colour], 70, _hsv)
    pattern = str(rng.choice(PATTERNS, p=[0.5, 0.2, 0.12, 0.18]))
    return Garment(colour=colour, colour2=colour2, pattern=pattern, period=float(rng.uniform(0.045, 0.08)))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A random person (proportions, skin, hair, clothes) in front of a random background."""
    body = sample_body(rng)
    skin = _skin(rng)
    if rng.random() < 0.85:
        hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    else:
        hair = _hsv(rng, s=(0.5, 0.9), v=(0.4, 0.9))
    if colour_distance(hair, skin) < 45:  # hair must stand out from the face
        hair = (25, 20, 20) if sum(skin) > 360 else (225, 200, 140)
    shirt = _garment(rng, [skin, hair], 70)
    lower = _garment(rng, [skin, shirt.colour], 65)
    if rng.random() < 0.5:  # plain trousers are the most common
        lower = Garment(lower.colour, lower.colour2, "solid", lower.period)
    shoes = _far_from(rng, [lower.colour, skin], 50, lambda r: _hsv(r, s=(0.0, 0.6), v=(0.1, 0.9)))
    figure = [skin, hair, shirt.colour, lower.colour]
    kind = str(rng.choice(BACKGROUNDS))
    bg1 = _far_from(rng, figure, 60, lambda r: _hsv(r, s=(0.0, 0.6), v=(0.15, 0.97)))
    bg2 = _far_from(rng, figure + [bg1], 30, lambda r: _hsv(r, s=(0.0, 0.6), v=(0.15, 0.97)))
    if kind in ("vgradient", "noise", "stripes"):  # keep these backdrops calm: the second colour is close
        bg2 = tuple(int(np.clip(c * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20), 0, 255)) for c in bg1)
    background = Background(kind=kind, colour=bg1, colour2=bg2, horizon=float(rng.uniform(0.55, 0.85)),
                            period=float(rng.uniform(0.06, 0.2)), texture_seed=int(rng.integers(2**31)))
    return Appearance(
        body=body, skin=skin, hair=tuple(int(c) for c in hair),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.4, 0.3, 0.15, 0.15])),
        shirt=shirt, sleeves=str(rng.choice(SLEEVES, p=[0.25, 0.45, 0.3])), shirt_length=float(rng.uniform(0.5, 1.0)),
        lower=lower, lower_style=str(rng.choice(LOWER_STYLES, p=[0.55, 0.25, 0.2])), shoes=shoes, background=background,
    )


def render_background(bg: Background, width: int, height: int) -> np.ndarray:
    """The static backdrop as float32 (height, width, 3) RGB 0-255."""
    import cv2

    c1 = np.asarray(bg.colour, np.float32)
    c2 = np.asarray(bg.colour2, np.float32)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    img = np.empty((height, width, 3), np.float32)
    img[:] = c1
    if bg.kind == "vgradient":
        img[:] = c1 + (c2 - c1) * ys[:, None, None]
    elif bg.kind in ("floor", "tiles"):
        floor = ys >= bg.horizon
        depth = np.clip((ys - bg.horizon) / max(1 - bg.horizon, 1e-3), 0, 1)
        img[floor] = (c2 * (0.8 + 0.2 * depth[floor, None]))[:, None, :]
        if bg.kind == "tiles":  # floor tiles widening towards the camera
            u = (xs[None, :] - 0.5) / (0.3 + depth[:, None]) / bg.period
            v = np.sqrt(depth[:, None]) / bg.period * 2 + 0 * xs[None, :]
            check = ((np.floor(u) + np.floor(v)) % 2 == 1) & floor[:, None]
            img[check] = img[check] * 0.85
    elif bg.kind == "noise":
        rng = np.random.default_rng(bg.texture_seed)
        blobs = cv2.resize(rng.random((6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        fine = cv2.resize(rng.random((24, 24)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        mix = np.clip(0.75 * blobs + 0.25 * fine, 0, 1)[..., None]
        img[:] = c1 + (c2 - c1) * mix
    elif bg.kind == "stripes":
        stripe = (np.floor(xs / (bg.period * height / width)) % 2 == 1)
        img[:, stripe] = c2
    return np.clip(img, 0, 255)
