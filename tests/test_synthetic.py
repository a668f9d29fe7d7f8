"""Procedural dancer data: determinism, pose/pixel agreement, confidences, detector noise, dataset files."""
import argparse
import dataclasses
import json
import math

import numpy as np
import pytest

from mimicmotion.curation import load_sidecar, sidecar_path
from mimicmotion.errors import ConfigError
from mimicmotion.pose.layout import FACE, LEFT_HAND, RIGHT_HAND
from mimicmotion.synthetic import (Appearance, Background, Camera, DetectorNoise, Motion, add_synth_command,
                                   blur_factor, generate_dataset, is_test_video, load_manifest, reference_image,
                                   render_background, render_clip, render_clip_detailed, sample_clip, still_motion)
from mimicmotion.synthetic import kinematics as kin
from mimicmotion.synthetic.motion import Channel, soft_clip, step_position
from mimicmotion.video import probe, read_frames

BLACK = Background(kind="solid", colour=(0, 0, 0), colour2=(0, 0, 0))


def _poses(seq):
    return np.concatenate(seq.frames, 0)  # (N,134,3): one person per frame


def _plain(app: Appearance) -> Appearance:
    """The same person on a black backdrop (every figure pixel is then non-black)."""
    return dataclasses.replace(app, background=BLACK)


# ------------------------------------------------------------------------------------------------ basics


def test_same_seed_same_clip_and_different_seed_differs():
    app, motion = sample_clip(3)
    f1, p1 = render_clip(app, motion, 3, width=64, height=64, num_frames=6)
    f2, p2 = render_clip(app, motion, 3, width=64, height=64, num_frames=6)
    assert f1.shape == (6, 64, 64, 3) and f1.dtype == np.uint8
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(_poses(p1), _poses(p2))
    app4, motion4 = sample_clip(4)
    f3, p3 = render_clip(app4, motion4, 4, width=64, height=64, num_frames=6)
    assert np.abs(f3.astype(int) - f1).mean() > 5
    assert p1.width == 64 and p1.height == 64 and p1.source_frames == list(range(6)) and p1.sample_stride == 1


def test_appearance_and_motion_round_trip_through_json():
    app, motion = sample_clip(11)
    assert Appearance.from_dict(json.loads(json.dumps(app.to_dict()))) == app
    back = Motion.from_dict(json.loads(json.dumps(motion.to_dict())))
    t = np.linspace(0, 3, 20)
    for name, values in motion.evaluate(t).items():
        np.testing.assert_array_equal(back.evaluate(t)[name], values)


def test_layout_conventions_in_a_frontal_pose():
    app, _ = sample_clip(5)
    arms_out = {f"{name}_{s}": value for s in "rl" for name, value in
                (("abd", 1.2), ("elbow", 0.1), ("flex", 0.0), ("twist", 0.0), ("roll", 0.0), ("curl", 0.0))}
    app = dataclasses.replace(_plain(app), hair_style="short")  # long hair would cover the ears
    _, seq = render_clip(app, still_motion(**arms_out), 0, width=128, height=128, num_frames=1,
                         camera=Camera(scale=100, x=64, ground=118))
    p = seq.frames[0][0]
    assert p.shape == (134, 3)
    # The person's right is on the image left (OpenPose/DWPose convention) for body, face and hands.
    assert p[2, 0] < p[5, 0] and p[4, 0] < p[7, 0] and p[8, 0] < p[11, 0] and p[16, 0] < p[17, 0]
    face = p[FACE]
    assert face[0, 0] < face[8, 0] < face[16, 0] and face[8, 1] > face[30, 1] > face[36, 1]  # jaw, chin, nose, eye
    assert face[36:42, 0].mean() < face[42:48, 0].mean()
    assert np.linalg.norm(p[LEFT_HAND][0, :2] - p[7, :2]) < 1e-9  # hand wrist = body wrist
    assert np.linalg.norm(p[RIGHT_HAND][0, :2] - p[4, :2]) < 1e-9
    # Neck: midpoint of the shoulders with score 1.0 (the release's rule).
    np.testing.assert_allclose(p[1, :2], (p[2, :2] + p[5, :2]) / 2)
    assert p[1, 2] == 1.0
    # A frontal, still pose in full view: confidently visible everywhere (the thumb may overlap a knuckle).
    assert p[:92, 2].min() > 0.8
    hands = np.concatenate([p[LEFT_HAND, 2], p[RIGHT_HAND, 2]])
    assert hands.mean() > 0.85 and hands.min() > 0.5


# ------------------------------------------------------------------------------------------------ pixels


@pytest.mark.parametrize("seed", [1, 2, 7, 12])
def test_pixels_and_poses_agree(seed):
    app, motion = sample_clip(seed)
    plain = _plain(app)
    clip = render_clip_detailed(plain, motion, seed, width=128, height=128, num_frames=8)
    poses = clip.clean
    fig = clip.frames.max(-1) > 12  # figure pixels (the backdrop is black)
    t = np.arange(8) / 24.0
    every_point = clip.camera.project(kin.keypoints_3d(kin.solve(app.body, motion.evaluate(t))), t)
    body_h = clip.camera.scale
    for f in range(len(poses)):
        p = poses[f]
        vis = p[:, 2] > 0.8
        xy = np.round(p[vis, :2] * 128).astype(int)
        # Every confidently visible keypoint is on (or within a pixel of) the figure.
        near = np.zeros(len(xy), bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= fig[f, np.clip(xy[:, 1] + dy, 0, 127), np.clip(xy[:, 0] + dx, 0, 127)]
        assert near.mean() > 0.97, (f, near.mean())
        # ... and the figure does not reach far beyond its keypoints (in frame or not).
        ys, xs = np.nonzero(fig[f])
        lo, hi = every_point[f].min(0), every_point[f].max(0)
        margin = 0.12 * body_h
        assert xs.min() >= lo[0] - margin and xs.max() <= hi[0] + margin
        assert ys.min() >= lo[1] - margin and ys.max() <= hi[1] + margin


def _colour_near(frame, xy, colour, tol):
    """Whether a pixel within one pixel of xy has roughly ``colour`` (allowing shading and outlines)."""
    x, y = int(round(xy[0])), int(round(xy[1]))
    patch = frame[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3).astype(float)
    c = np.asarray(colour, float)
    # Shading scales colours by 0.72-1.06: compare chromaticity and brightness loosely.
    best = min(np.abs(px - c * s).max() for px in patch for s in (0.72, 0.82, 0.9, 1.0, 1.06))
    return best <= tol


def test_hands_and_face_have_skin_and_the_torso_has_the_shirt_colour():
    app, _ = sample_clip(9)
    app = dataclasses.replace(_plain(app), sleeves="none",
                              shirt=dataclasses.replace(app.shirt, pattern="solid"))
    motion = still_motion(abd_r=1.4, abd_l=1.4, elbow_r=0.3, elbow_l=0.3, curl_r=0.0, curl_l=0.0, spread_r=0.3,
                          spread_l=0.3, roll_r=0.0, roll_l=0.0)
    clip = render_clip_detailed(app, motion, 0, width=256, height=256, num_frames=1,
                                camera=Camera(scale=220, x=128, ground=245))
    frame, p = clip.frames[0], clip.clean[0]
    px = p[:, :2] * 256
    palm = [LEFT_HAND.start + i for i in (0, 5, 9, 13, 17)] + [RIGHT_HAND.start + i for i in (0, 5, 9, 13, 17)]
    skin_points = [0, 4, 7] + palm + [FACE.start + i for i in (2, 8, 14, 29, 33)]
    hits = [_colour_near(frame, px[k], app.skin, 30) for k in skin_points]
    assert np.mean(hits) > 0.9, hits
    chest = (px[2] + px[5]) / 2 * 0.6 + (px[8] + px[11]) / 2 * 0.4
    assert _colour_near(frame, chest, app.shirt.colour, 30)
    # The background stays where the figure is not.
    assert np.all(frame[2, 2] == 0) and np.all(frame[2, -3] == 0)


# ------------------------------------------------------------------------------------------------ confidences


def test_far_arm_behind_the_torso_loses_confidence_in_profile():
    app, _ = sample_clip(6)
    clip = render_clip_detailed(app, still_motion(yaw=math.pi / 2), 0, width=128, height=128, num_frames=1,
                                camera=Camera(scale=100, x=64, ground=118))
    p = clip.clean[0]
    # yaw +90 deg turns the person's left side to the camera: the right arm hangs behind the body.
    assert p[7, 2] > 0.8 and p[6, 2] > 0.8
    assert p[4, 2] < 0.5 and clip.occlusion[0, 4] > 0.5
    assert np.nanmean(p[RIGHT_HAND, 2]) < np.nanmean(p[LEFT_HAND, 2]) - 0.3


def test_face_points_fade_when_the_head_turns_away():
    app, _ = sample_clip(8)
    cam = Camera(scale=100, x=64, ground=118)
    front = render_clip_detailed(app, still_motion(), 0, width=128, height=128, num_frames=1, camera=cam).clean[0]
    back = render_clip_detailed(app, still_motion(yaw=math.pi), 0, width=128, height=128, num_frames=1,
                                camera=cam).clean[0]
    side = render_clip_detailed(app, still_motion(head_yaw=0.9), 0, width=128, height=128, num_frames=1,
                                camera=cam).clean[0]
    assert front[FACE, 2].mean() > 0.9 and front[FACE, 2].min() > 0.7
    assert back[FACE, 2].max() < 0.3 and back[0, 2] < 0.3
    assert back[[2, 5, 8, 11], 2].min() > 0.8  # the body is seen from behind, still confidently
    # Turning the head: the jaw side turning away (one end of the jaw line) drops, the other stays.
    jaw = side[FACE][:17, 2]
    assert min(jaw[0], jaw[16]) < 0.3 < 0.8 < max(jaw[0], jaw[16])


def test_fast_motion_lowers_confidence():
    assert blur_factor(0.5) == 1.0 and blur_factor(1.0) == 1.0
    speeds = np.linspace(0, 8, 50)
    assert np.all(np.diff(blur_factor(speeds)) <= 0) and blur_factor(4.0) < 0.5
    base = still_motion(abd_l=0.3)
    fast = Motion(tempo=1.0, channels={**base.channels, "abd_r": Channel(1.4, (1.2,), (2.0,), (0.0,)),
                                       "elbow_r": Channel(0.8, (0.7,), (2.0,), (1.0,))},
                  steps=base.steps)
    app, _ = sample_clip(2)
    clip = render_clip_detailed(_plain(app), fast, 0, width=128, height=128, num_frames=24,
                                camera=Camera(scale=80, x=64, ground=110))
    wrist_speed = clip.speed[:, 4]
    scores = clip.clean[:, 4, 2]
    visible = clip.occlusion[:, 4] == 0
    fastest = np.argmax(np.where(visible, wrist_speed, -1))
    slowest = np.argmin(np.where(visible, wrist_speed, np.inf))
    assert wrist_speed[fastest] > 2.5 and wrist_speed[slowest] < 1.0
    assert scores[fastest] < scores[slowest] - 0.3
    assert clip.clean[:, 7, 2].min() > 0.85  # the still arm keeps its confidence


def test_points_outside_the_frame_are_nan_with_score_zero():
    app, motion = sample_clip(1)
    clip = render_clip_detailed(app, motion, 0, width=96, height=96, num_frames=4,
                                camera=Camera(scale=110, x=8, ground=120))
    p = clip.clean
    missing = np.isnan(p[..., 0])
    assert missing.any() and (~missing).any()
    assert np.all(np.isnan(p[..., 1]) == missing)
    assert np.all(p[missing, 2] == 0) and np.all(p[~missing, 2] > 0)
    inside = p[~missing, :2]
    assert inside.min() >= 0 and inside.max() <= 1


# ------------------------------------------------------------------------------------------------ noise


def test_detector_noise_changes_poses_not_pixels_and_is_seeded():
    app, motion = sample_clip(5)
    kw = dict(width=64, height=64, num_frames=12)
    f0, clean = render_clip(app, motion, 5, **kw)
    f1, noisy = render_clip(app, motion, 5, detector_noise=True, **kw)
    f2, noisy2 = render_clip(app, motion, 5, detector_noise=True, **kw)
    np.testing.assert_array_equal(f0, f1)
    a, b = _poses(clean), _poses(noisy)
    np.testing.assert_array_equal(b, _poses(noisy2))
    both = np.isfinite(a[..., 0]) & np.isfinite(b[..., 0])
    assert np.abs(a[both, :2] - b[both, :2]).mean() > 1e-3
    assert (np.isnan(b[..., 0]) & np.isfinite(a[..., 0])).sum() > 0  # dropped points
    false = (b[..., 2] > 0) & (b[..., 2] < 0.31) & (a[..., 2] > 0.8)
    assert false.sum() > 0  # low-confidence false points
    # No noise at all: the ground truth comes back unchanged.
    _, quiet = render_clip(app, motion, 5, detector_noise=DetectorNoise(0, 0, 0, (0.0, 0.0), 0), **kw)
    np.testing.assert_allclose(_poses(quiet)[..., :2], a[..., :2], atol=0)
    with pytest.raises(ConfigError):
        render_clip(app, motion, 5, detector_noise=DetectorNoise(drop_rate=2.0), **kw)


# ------------------------------------------------------------------------------------------------ motion


def test_motion_is_smooth_and_moving():
    t = np.arange(48) / 24.0
    for seed in range(12):
        app, motion = sample_clip(seed)
        kp = kin.keypoints_3d(kin.solve(app.body, motion.evaluate(t)))[..., :2]  # body heights
        step = np.linalg.norm(np.diff(kp, axis=0), axis=-1)
        mean_speed = step[:, :18].mean() * 24
        assert 0.03 < mean_speed < 1.0, (seed, mean_speed)
        assert step.max() < 0.2, (seed, step.max())  # no jumps: at most 0.2 body heights per frame
        for ch in motion.channels.values():
            assert all(0.3 <= f <= 2.0 for f in ch.freqs)


def test_step_position_holds_still_on_the_ground_and_soft_clip_is_bounded():
    u = np.linspace(0, 8 * math.pi, 2001)
    g = step_position(u)
    grounded = np.sin(u) < -1e-3
    assert np.abs(np.diff(g)[grounded[1:] & grounded[:-1]]).max() < 1e-9
    assert g.min() == pytest.approx(-1) and g.max() == pytest.approx(1)
    assert np.abs(np.diff(g)).max() < 0.02  # continuous
    x = np.linspace(-10, 10, 101)
    y = soft_clip(x, -1.0, 2.0)
    assert y.min() > -1.05 and y.max() < 2.05 and np.all(np.diff(y) >= 0)
    inner = (x > -0.9) & (x < 1.9)
    np.testing.assert_allclose(y[inner], x[inner], atol=0.15)


# ------------------------------------------------------------------------------------------------ reference


def test_reference_image_shows_the_same_person_in_another_pose():
    app, motion = sample_clip(14)
    frames, seq = render_clip(app, motion, 14, width=96, height=96, num_frames=4)
    image, pose = reference_image(app, motion, 14, width=96, height=96, num_frames=4)
    assert image.shape == (96, 96, 3) and pose.shape == (1, 134, 3)
    ref_body, clip_body = pose[0, :18, :2], seq.frames[0][0, :18, :2]
    assert np.nanmean(np.abs(ref_body - clip_body)) > 0.01
    bg = render_background(app.background, 96, 96)
    corners = [(1, 1), (1, 94), (94, 1)]
    for y, x in corners:  # same backdrop and framing: the corners are backdrop in both
        if np.abs(frames[0, y, x].astype(float) - bg[y, x]).max() < 6:
            assert np.abs(image[y, x].astype(float) - bg[y, x]).max() < 6
    shirt = np.abs(image.astype(float) - np.asarray(app.shirt.colour)).max(-1) < 12
    assert shirt.sum() > 10
    again, _ = reference_image(app, motion, 14, width=96, height=96, num_frames=4)
    np.testing.assert_array_equal(image, again)


# ------------------------------------------------------------------------------------------------ dataset


def test_split_is_even_and_stable():
    flags = [is_test_video(7, i, 0.2) for i in range(100)]
    assert sum(flags) in (19, 20, 21)
    for n in (5, 10, 37):
        assert abs(sum(flags[:n]) - 0.2 * n) <= 1
    assert not any(is_test_video(7, i, 0.0) for i in range(20))
    assert all(is_test_video(7, i, 1.0) for i in range(20))


def test_generate_dataset_writes_videos_sidecars_and_manifest(tmp_path):
    out = tmp_path / "synth"
    kw = dict(seed=1, width=64, height=64, num_frames=8, test_fraction=0.4)
    manifest = generate_dataset(out, 5, **kw)
    videos = manifest["videos"]
    assert len(videos) == 5 and sum(manifest["counts"].values()) == 5
    assert {v["split"] for v in videos} <= {"train", "test"}
    assert [v["split"] == "test" for v in videos] == [is_test_video(1, i, 0.4) for i in range(5)]
    assert load_manifest(out) == manifest
    for v in videos:
        path = out / v["video"]
        assert path.parent.name == v["split"] and sidecar_path(path) == out / v["poses"]
        info = probe(path)
        assert (info.width, info.height, info.num_frames) == (64, 64, 8)
        seq = load_sidecar(path, info.width, info.height, info.num_frames)
        assert len(seq) == 8 and seq.sample_stride == 1 and seq.source_frames == list(range(8))
        assert Appearance.from_dict(v["appearance"]).skin == tuple(v["appearance"]["skin"])
    # The decoded video is the rendered clip (up to H.264 loss), so the sidecar describes its pixels.
    v = videos[0]
    app, motion = sample_clip(v["seed"], duration=8 / 24)
    frames, poses = render_clip(app, motion, v["seed"], width=64, height=64, num_frames=8)
    decoded = read_frames(out / v["video"])
    assert np.abs(decoded.astype(float) - frames).mean() < 4
    np.testing.assert_array_equal(_poses(poses), np.concatenate(load_sidecar(out / v["video"], 64, 64, 8).frames))

    # Idempotent: a re-run touches nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert generate_dataset(out, 5, **kw) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    # Extending keeps existing videos and their split; other settings are refused.
    bigger = generate_dataset(out, 7, **kw)
    assert bigger["videos"][:5] == videos and len(bigger["videos"]) == 7
    for p, stamp in stamps.items():
        if p.suffix != ".json":
            assert p.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="other settings"):
        generate_dataset(out, 5, **{**kw, "width": 96})
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "x", 2, split=("a", "a"))


def test_interrupted_video_is_redone(tmp_path):
    out = tmp_path / "synth"
    m = generate_dataset(out, 2, seed=3, width=48, height=48, num_frames=4)
    first = out / m["videos"][0]["video"]
    first.unlink()  # as if the run stopped between the sidecar and its video
    inode = sidecar_path(first).stat().st_ino
    generate_dataset(out, 2, seed=3, width=48, height=48, num_frames=4)
    assert first.is_file() and probe(first).num_frames == 4
    assert sidecar_path(first).stat().st_ino != inode  # both were redone (atomic replace: a new file)


def test_synth_command(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command")
    add_synth_command(sub)
    args = ap.parse_args(["synth", "--out", str(tmp_path / "d"), "--videos", "3", "--seed", "2", "--size", "48x64",
                          "--frames", "4", "--detector-noise", "--quiet"])
    assert args.func(args) == 0
    manifest = load_manifest(tmp_path / "d")
    assert len(manifest["videos"]) == 3 and manifest["settings"]["detector_noise"] is not None
    assert probe(tmp_path / "d" / manifest["videos"][0]["video"]).height == 64
    assert "3 videos" in capsys.readouterr().out
    bad = ap.parse_args(["synth", "--out", str(tmp_path / "e"), "--size", "big"])
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        bad.func(bad)


# ---------------------------------------------------------------------------- frame composition (exact)
def _random_index_map(rng, hs, ws, ss):
    """A background index map with a floor-shadow ellipse and ~30 overlapping primitive rectangles, the outermost
    ones starting on a block's first row / column and ending on a block's last (where a window without a spare
    block would cut an outline off)."""
    import cv2

    idx = np.zeros((hs, ws), np.uint8)
    cv2.ellipse(idx, (ws // 2, int(hs * 0.6)), (ws // 5, hs // 20), 0, 0, 360, 1, -1)
    for rank in range(2, 30):
        x, y = rng.integers(ws // 4, 3 * ws // 4), rng.integers(hs // 4, 3 * hs // 4)
        idx[y:y + rng.integers(2, hs // 6), x:x + rng.integers(2, ws // 6)] = rank
    top, left = ss * int(rng.integers(2, hs // ss // 5)), ss * int(rng.integers(2, ws // ss // 5))
    bottom, right = hs - ss * int(rng.integers(2, hs // ss // 5)), ws - ss * int(rng.integers(2, ws // ss // 5))
    idx[top:top + 2 * ss, ws // 2 - 3 * ss:ws // 2 + 3 * ss] = 30  # wide: its edge row is outlined from above only
    idx[bottom - 2 * ss:bottom, ws // 2 - 3 * ss:ws // 2 + 3 * ss] = 31
    idx[hs // 2 - 3 * ss:hs // 2 + 3 * ss, left:left + 2 * ss] = 32
    idx[hs // 2 - 3 * ss:hs // 2 + 3 * ss, right - 2 * ss:right] = 33
    return idx


def _compose_reference(idx, bg, bg_shadow, lut, lut2, part_lut, garment_lut, patterns):
    """The composition written with numpy masks, as the renderer first did it."""
    from mimicmotion.synthetic.render import FIRST_RANK, OUTLINE_DARKEN, _pattern_mask

    img = np.where((idx == 1)[..., None], bg_shadow, bg)
    fig = idx >= FIRST_RANK
    img[fig] = lut[idx[fig]]
    gmap = garment_lut[idx]
    for gid, kind, anchor, angle, period in patterns:
        ys, xs = np.nonzero(gmap == gid)
        on = _pattern_mask(kind, xs.astype(np.float32), ys.astype(np.float32), anchor, angle, period)
        img[ys[on], xs[on]] = lut2[idx[ys[on], xs[on]]]
    pmap = part_lut[idx]
    edge = np.zeros(idx.shape, bool)
    hs, ws = idx.shape
    for dy, dx in ((0, 1), (1, 0)):
        a, b, pa, pb = idx[: hs - dy, : ws - dx], idx[dy:, dx:], pmap[: hs - dy, : ws - dx], pmap[dy:, dx:]
        edge[: hs - dy, : ws - dx] |= (pa != pb) & (a > b)
        edge[dy:, dx:] |= (pa != pb) & (b > a)
    img[edge] *= OUTLINE_DARKEN
    return img


@pytest.mark.parametrize("seed", range(4))
def test_frame_composed_in_the_drawn_window_equals_the_whole_frame_composed(seed):
    """draw_scene composes only a block-aligned window around what was drawn and pastes its downscale on the
    background's: the frame equals the whole frame composed (numpy masks) and downscaled."""
    import cv2

    from mimicmotion.synthetic.render import compose_frame, drawn_window

    rng = np.random.default_rng(seed)
    ss, w, h = 3, 40 + seed, 60
    idx = _random_index_map(rng, h * ss, w * ss, ss)
    bg = rng.uniform(0, 255, (h * ss, w * ss, 3)).astype(np.float32)
    bg_shadow = bg * 0.72
    lut, lut2 = (rng.uniform(0, 255, (256, 3)).astype(np.float32) for _ in range(2))
    part_lut = rng.integers(0, 5, 256).astype(np.uint8)
    part_lut[:2], part_lut[30:34] = 0, 1  # the outermost primitives are outlined against the background
    garment_lut = rng.integers(0, 3, 256).astype(np.uint8)
    garment_lut[:2] = 0
    patterns = [(1, "stripes", np.array([5.0, 7.0]), 0.3, 6.0), (2, "checks", np.array([1.0, 2.0]), -0.5, 4.0)]

    def downscale(img):
        small = cv2.resize(img, (img.shape[1] // ss, img.shape[0] // ss), interpolation=cv2.INTER_AREA)
        return np.clip(np.round(small), 0, 255).astype(np.uint8)

    whole = _compose_reference(idx, bg, bg_shadow, lut, lut2, part_lut, garment_lut, patterns)
    np.testing.assert_array_equal(compose_frame(idx, bg, bg_shadow, lut, lut2, part_lut, garment_lut, patterns),
                                  whole)
    y0, y1, x0, x1 = drawn_window(idx, ss)
    rows, cols = slice(y0 * ss, y1 * ss), slice(x0 * ss, x1 * ss)
    assert not idx[:rows.start].any() and not idx[rows.stop:].any()
    assert not idx[:, :cols.start].any() and not idx[:, cols.stop:].any()
    framed = downscale(bg)
    framed[y0:y1, x0:x1] = downscale(compose_frame(idx[rows, cols], bg[rows, cols], bg_shadow[rows, cols], lut, lut2,
                                                   part_lut, garment_lut, patterns, origin=(cols.start, rows.start)))
    np.testing.assert_array_equal(framed, downscale(whole))
    assert drawn_window(np.zeros_like(idx), ss) is None
