"""Driving -> reference pose alignment (SPEC section 4)."""
import logging

import numpy as np
import pytest

from mimicmotion.errors import PoseError
from mimicmotion.pose.align import FIT_POINTS, align_poses, apply_alignment, fit_alignment
from mimicmotion.pose.layout import FACE, FOOT, LEFT_HAND, NUM_POINTS, RIGHT_HAND

REF_SIZE = (1024, 576)  # (height, width)
DRV_SIZE = (720, 1280)
# a_x = a_y * (W_drv * H_ref) / (H_drv * W_ref) = a_y * (1280 * 1024) / (720 * 576) = a_y * 3.1604938...
A_Y, B_Y = 0.8, 0.07
A_X = A_Y * (1280 * 1024) / (720 * 576)
B_X = -0.9


def person(rng, score=0.9):
    """A full person with all points located and the given score."""
    p = np.empty((NUM_POINTS, 3))
    p[:, 0] = rng.uniform(0.2, 0.8, NUM_POINTS)
    p[:, 1] = rng.uniform(0.1, 0.9, NUM_POINTS)
    p[:, 2] = score
    return p


def driving_from_reference(ref_person):
    """The driving person whose exact alignment is the reference (inverse of A, B)."""
    d = ref_person.copy()
    d[:, 0] = (ref_person[:, 0] - B_X) / A_X
    d[:, 1] = (ref_person[:, 1] - B_Y) / A_Y
    return d


def release_fit(ref_person, frames, ref_size, drv_size):
    """The release's arithmetic (mimicmotion/dwpose/preprocess.py), written out for comparison."""
    ids = [i for i in FIT_POINTS if ref_person[i, 2] > 0.3]
    ref_body = ref_person[ids, :2]
    bodies = np.stack([f[0, :, :2] for f in frames if f.shape[0] == 1])[:, ids]
    ay, by = np.polyfit(bodies[:, :, 1].flatten(), np.tile(ref_body[:, 1], len(bodies)), 1)
    height, width = ref_size
    fh, fw = drv_size
    ax = ay / (fh / fw / height * width)
    bx = np.mean(np.tile(ref_body[:, 0], len(bodies)) - bodies[:, :, 0].flatten() * ax)
    return np.array([ax, ay]), np.array([bx, by])


def test_exact_synthetic_fit_recovers_scale_and_offset_with_square_pixels():
    rng = np.random.default_rng(0)
    ref = person(rng)
    drv = driving_from_reference(ref)
    a, b = fit_alignment(ref[None], [drv[None], drv[None]], REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)
    np.testing.assert_allclose(b, [B_X, B_Y], rtol=1e-12, atol=1e-12)
    assert a.dtype == np.float64 and b.dtype == np.float64


@pytest.mark.parametrize("ref_size, drv_size", [(REF_SIZE, DRV_SIZE), ((1024, 576), (1000, 562)), ((1216, 704), (1280, 720))])
def test_release_equivalence_on_clean_single_person_frames(ref_size, drv_size):
    rng = np.random.default_rng(1)
    ref = person(rng)
    ref[[5, 9, 14], 2] = [0.2, 0.3, 0.1]  # not visible in the reference: excluded from the fit
    frames = []
    for k in range(12):
        d = driving_from_reference(ref) + np.r_[rng.normal(0, 0.01, 2), 0.0]
        d[:, 2] = rng.uniform(0.31, 1.0, NUM_POINTS)
        frames.append(d[None])
    frames.insert(3, np.stack([person(rng), person(rng)]))  # two people: the release skips this frame
    frames.insert(7, np.zeros((0, NUM_POINTS, 3)))  # nobody
    frames = [f.astype(np.float32).astype(np.float64) for f in frames]  # values the project stores
    a, b = fit_alignment(ref[None], frames, ref_size, drv_size)
    ra, rb = release_fit(ref, frames, ref_size, drv_size)
    np.testing.assert_array_equal(a, ra)  # bit-identical
    np.testing.assert_array_equal(b, rb)


def test_float32_input_gives_the_same_fit_as_its_float64_values():
    rng = np.random.default_rng(2)
    ref = person(rng).astype(np.float32)
    frames = [(driving_from_reference(ref.astype(np.float64)) + rng.normal(0, 0.01, 3)).astype(np.float32)[None]
              for _ in range(4)]
    a32, b32 = fit_alignment(ref[None], frames, REF_SIZE, DRV_SIZE)
    a64, b64 = fit_alignment(ref[None].astype(np.float64), [f.astype(np.float64) for f in frames], REF_SIZE, DRV_SIZE)
    np.testing.assert_array_equal(a32, a64)
    np.testing.assert_array_equal(b32, b64)


def test_multi_person_only_video_uses_most_confident_person():
    rng = np.random.default_rng(3)
    ref = person(rng)
    frames = []
    for _ in range(5):
        bystander = person(rng, score=0.4)  # usable, less confident, and first in the frame
        dancer = driving_from_reference(ref)
        frames.append(np.stack([bystander, dancer]))
    a, b = fit_alignment(ref[None], frames, REF_SIZE, DRV_SIZE)  # the release crashes here
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)
    np.testing.assert_allclose(b, [B_X, B_Y], rtol=1e-12, atol=1e-12)


def test_single_person_frames_without_usable_points_fall_back_to_other_frames():
    rng = np.random.default_rng(4)
    ref = person(rng)
    hidden = person(rng, score=0.1)
    frames = [hidden[None], np.stack([person(rng, 0.35), driving_from_reference(ref)])]
    a, b = fit_alignment(ref[None], frames, REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)


def test_empty_frames_do_not_change_the_fit():
    rng = np.random.default_rng(5)
    ref = person(rng)
    frames = [(driving_from_reference(ref) + np.r_[rng.normal(0, 0.02, 2), 0])[None] for _ in range(3)]
    empty = np.zeros((0, NUM_POINTS, 3))
    with_empty = [empty, frames[0], empty, frames[1], frames[2], empty]
    a1, b1 = fit_alignment(ref[None], frames, REF_SIZE, DRV_SIZE)
    a2, b2 = fit_alignment(ref[None], with_empty, REF_SIZE, DRV_SIZE)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)


def test_unreliable_driving_point_is_left_out_of_the_fit():
    rng = np.random.default_rng(6)
    ref = person(rng)
    drv = driving_from_reference(ref)
    wild = drv.copy()
    wild[10] = (5.0, -3.0, 0.1)  # far away, score 0.1
    missing = drv.copy()
    missing[12] = (np.nan, np.nan, 0.0)
    a, b = fit_alignment(ref[None], [drv[None], wild[None], missing[None]], REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)
    np.testing.assert_allclose(b, [B_X, B_Y], rtol=1e-12, atol=1e-12)


def test_reference_person_0_without_visible_points_falls_back_to_another_person():
    rng = np.random.default_rng(7)
    ghost = person(rng, score=0.2)
    ref = person(rng)
    drv = driving_from_reference(ref)
    a, b = fit_alignment(np.stack([ghost, ref]), [drv[None]], REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)


def test_reference_person_0_is_used_when_it_has_visible_points():
    rng = np.random.default_rng(8)
    ref = person(rng, score=0.5)
    other = person(rng, score=0.99)
    drv = driving_from_reference(ref)
    a, b = fit_alignment(np.stack([ref, other]), [drv[None]], REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(a, [A_X, A_Y], rtol=1e-12)


@pytest.mark.parametrize("reference", [
    np.zeros((0, NUM_POINTS, 3)),
    np.full((1, NUM_POINTS, 3), [0.5, 0.5, 0.3]),  # all scores at the threshold: not visible
])
def test_reference_without_person_raises(reference):
    drv = person(np.random.default_rng(9))[None]
    with pytest.raises(PoseError, match="no person detected in the reference image"):
        fit_alignment(reference, [drv], REF_SIZE, DRV_SIZE)


@pytest.mark.parametrize("frames", [
    [],
    [np.zeros((0, NUM_POINTS, 3))] * 3,
    [np.full((2, NUM_POINTS, 3), [0.5, 0.5, 0.25])],
])
def test_no_usable_driving_person_raises(frames):
    ref = person(np.random.default_rng(10))[None]
    with pytest.raises(PoseError, match="no usable person in any driving frame"):
        fit_alignment(ref, frames, REF_SIZE, DRV_SIZE)


def test_single_visible_reference_point_falls_back_to_scale_one(caplog):
    rng = np.random.default_rng(11)
    ref = np.full((NUM_POINTS, 3), np.nan)
    ref[:, 2] = 0.0
    ref[0] = (0.5, 0.2, 0.9)  # only the nose: no vertical extent to fit a scale on
    drv = person(rng)
    drv2 = drv.copy()
    drv2[0, 1] += 0.05
    with caplog.at_level(logging.WARNING, logger="mimicmotion.pose.align"):
        a, b = fit_alignment(ref[None], [drv[None], drv2[None]], REF_SIZE, DRV_SIZE)
    assert "no vertical extent" in caplog.text
    a_x = 1.0 / (720 / 1280 / 1024 * 576)
    np.testing.assert_allclose(a, [a_x, 1.0], rtol=1e-15)
    # offsets: least squares with a fixed scale = mean residual
    np.testing.assert_allclose(b[1], 0.2 - (drv[0, 1] + drv2[0, 1]) / 2, rtol=1e-12)
    np.testing.assert_allclose(b[0], 0.5 - a_x * drv[0, 0], rtol=1e-12)


def test_align_poses_maps_every_point_keeps_nan_and_scores():
    rng = np.random.default_rng(12)
    ref = person(rng)
    drv = driving_from_reference(ref)
    drv[FACE.start + 3] = (np.nan, np.nan, 0.0)
    frames = [drv[None].astype(np.float32), np.zeros((0, NUM_POINTS, 3), np.float32)]
    original = [f.copy() for f in frames]
    out = align_poses(ref[None], frames, REF_SIZE, DRV_SIZE)
    assert len(out) == 2 and out[1].shape == (0, NUM_POINTS, 3)
    assert out[0].dtype == np.float64 and out[0].shape == (1, NUM_POINTS, 3)
    a, b = fit_alignment(ref[None], frames, REF_SIZE, DRV_SIZE)
    expected = frames[0].astype(np.float64)
    expected[..., :2] = expected[..., :2] * a + b
    np.testing.assert_array_equal(out[0], expected)
    for part in (FOOT, FACE, LEFT_HAND, RIGHT_HAND):  # non-fit points move too
        located = np.isfinite(drv[part, 0])
        np.testing.assert_allclose(out[0][0, part][located, :2], ref[part][located, :2], atol=2e-6)
    assert np.isnan(out[0][0, FACE.start + 3, :2]).all()
    np.testing.assert_array_equal(out[0][..., 2], frames[0][..., 2].astype(np.float64))
    for f, o in zip(frames, original):
        np.testing.assert_array_equal(f, o)  # inputs untouched


def test_apply_alignment_arithmetic():
    frame = np.zeros((1, NUM_POINTS, 3), np.float32)
    frame[0, 0] = (0.25, 0.5, 0.7)
    out = apply_alignment(frame, np.array([2.0, 3.0]), np.array([0.1, -0.2]))
    assert out[0, 0].tolist() == [0.25 * 2.0 + 0.1, 0.5 * 3.0 - 0.2, np.float64(np.float32(0.7))]


def test_bad_frame_shape_raises_pose_error():
    ref = person(np.random.default_rng(13))[None]
    with pytest.raises(PoseError, match="driving pose frame 1"):
        fit_alignment(ref, [ref, np.zeros((1, 18, 3))], REF_SIZE, DRV_SIZE)
