"""Exact pixels of the confidence-aware pose image (SPEC section 3).

Most tests pass ``canvas_short_side=min(H, W)`` so the canvas is the output itself (OpenCV's resize to the
same size is a copy) and pixel values can be computed by hand. Colours are written as OpenCV draws them
(BGR); the output is RGB, so a BGR (b, g, r) colour reads back as (r, g, b).
"""
import math

import cv2
import numpy as np
import pytest
import torch

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.draw import (
    HAND_EDGE_RGB,
    _DIM_LUT,
    canvas_size,
    draw_pose,
    draw_pose_sequence,
    pose_images_to_tensor,
)
from mimicmotion.pose.layout import FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND

H, W = 60, 80  # exact-pixel tests: canvas == output


def blank_person(dtype=np.float64):
    p = np.zeros((NUM_POINTS, 3), dtype=dtype)
    p[:, :2] = np.nan
    return p


def put(person, index, x_px, y_px, score, height=H, width=W):
    """Place point ``index`` at pixel (x_px, y_px) of a height x width image (normalised storage)."""
    person[index] = (x_px / width, y_px / height, score)
    return person


def draw(*people, height=H, width=W):
    frame = np.stack(people) if people else np.zeros((0, NUM_POINTS, 3))
    return draw_pose(frame, height, width, canvas_short_side=min(height, width))


def limb_person(score_neck, score_shoulder, dtype=np.float64):
    # Limb 0 (neck 1 -> right shoulder 2), horizontal, 40 px long, on row 30.
    p = blank_person(dtype)
    put(p, 1, 60.5, 30.5, score_neck)
    put(p, 2, 20.5, 30.5, score_shoulder)
    return p


# ----------------------------------------------------------------------------------------------- limbs
def test_limb_full_confidence_is_dimmed_palette_colour_in_blue_channel():
    img = draw(limb_person(1.0, 1.0))
    # palette[0] = BGR (255, 0, 0) -> int(255 * 1 * 1) = 255 -> dimmed int(255 * 0.6) = 153; BGR->RGB puts
    # it in the blue channel.
    assert img[30, 40].tolist() == [0, 0, 153]


def test_limb_half_confidence():
    img = draw(limb_person(0.5, 0.5))
    # int(255 * 0.25) = 63, then int(63 * 0.6) = int(37.8) = 37
    assert img[30, 40].tolist() == [0, 0, 37]


def test_limb_skipped_when_one_end_below_threshold():
    img = draw(limb_person(1.0, 0.29))
    assert img[30, 40].tolist() == [0, 0, 0]
    # the confident end's joint is still drawn: palette[1] = BGR (255, 85, 0) at score 1
    assert img[30, 60].tolist() == [0, 85, 255]


def test_limb_end_at_exactly_threshold_is_drawn_but_its_joint_is_not():
    img = draw(limb_person(0.3, 1.0))  # float64 0.3: not < 0.3 (limb), not > 0.3 (joint)
    # int(255 * 0.3) = int(76.5) = 76, int(76 * 0.6) = int(45.6) = 45
    assert img[30, 40].tolist() == [0, 0, 45]
    # 3 px below the neck: inside a joint circle (radius 4) but outside the thin tip of the ellipse
    assert img[33, 60].tolist() == [0, 0, 0]
    # the shoulder (score 1) has its joint: palette[2] = BGR (255, 170, 0)
    assert img[33, 20].tolist() == [0, 170, 255]


def test_float32_score_of_0_3_counts_as_above_threshold_like_the_release():
    # float32(0.3) = 0.30000001192...; the release compares float64 values with 0.3, so the joint is drawn.
    img = draw(limb_person(0.3, 1.0, dtype=np.float32))
    s = float(np.float32(0.3))
    assert img[33, 60].tolist() == [0, int(85 * s), int(255 * s)]  # [0, 25, 76]


# ---------------------------------------------------------------------------------------------- joints
@pytest.mark.parametrize("score, drawn", [(0.29, False), (0.31, True)])
def test_joint_threshold(score, drawn):
    img = draw(put(blank_person(), 0, 40.5, 30.5, score))  # nose alone: no limb
    if drawn:
        # palette[0] = BGR (255, 0, 0) * 0.31 -> int(79.05) = 79; joints are drawn after the dimming
        assert img[30, 40].tolist() == [0, 0, 79]
        assert img[30, 44].tolist() == [0, 0, 79] and img[30, 45].tolist() == [0, 0, 0]  # radius 4
    else:
        assert not img.any()


def test_body_joint_at_column_zero_is_drawn():
    # Body joints have no eps rule (unlike hands and faces).
    img = draw(put(blank_person(), 0, 0.0, 30.5, 1.0))
    assert img[30, 0].tolist() == [0, 0, 255]


def test_limb_order_is_limb_by_limb_across_people():
    # Person 0's limb 1 (neck -> left shoulder) and person 1's limb 0 (neck -> right shoulder) cover the
    # same segment; the release draws limb 0 for everyone before limb 1, so person 0's limb 1 ends on top.
    a = blank_person()
    put(a, 1, 20.5, 30.5, 1.0)
    put(a, 5, 60.5, 30.5, 1.0)
    b = blank_person()
    put(b, 1, 20.5, 30.5, 1.0)
    put(b, 2, 60.5, 30.5, 1.0)
    img = draw(a, b)
    # palette[1] = BGR (255, 85, 0), dimmed: (153, 51, 0)
    assert img[30, 40].tolist() == [0, 51, 153]


# ----------------------------------------------------------------------------------------------- hands
def test_hand_edge_zero_colour_and_point_colour():
    p = blank_person()
    put(p, LEFT_HAND.start + 0, 10.5, 20.5, 1.0)
    put(p, LEFT_HAND.start + 1, 50.5, 20.5, 1.0)
    img = draw(p)
    # edge 0: HSV(0, 1, 1) = (1, 0, 0) * int(1 * 1 * 255) -> BGR (255, 0, 0), thickness 2
    assert img[20, 30].tolist() == [0, 0, 255]
    # points: BGR (0, 0, int(255 * 1)), radius 4
    assert img[20, 10].tolist() == [255, 0, 0]
    assert img[24, 10].tolist() == [255, 0, 0] and img[25, 10].tolist() == [0, 0, 0]


def test_hand_edge_colour_is_truncated_score_product_times_hsv():
    p = blank_person()
    put(p, LEFT_HAND.start + 0, 10.5, 20.5, 0.5)
    put(p, LEFT_HAND.start + 1, 50.5, 20.5, 0.5)
    img = draw(p)
    assert img[20, 30].tolist() == [0, 0, 63]  # int(0.25 * 255) = 63
    assert img[20, 10].tolist() == [127, 0, 0]  # int(0.5 * 255) = 127


def test_hand_edge_colours_equal_matplotlib_hsv_to_rgb():
    # Values of matplotlib.colors.hsv_to_rgb([ie / 20, 1, 1]) (what the release calls), pinned here.
    expected = [
        (1.0, 0.0, 0.0), (1.0, 0.30000000000000004, 0.0), (1.0, 0.6000000000000001, 0.0),
        (1.0, 0.8999999999999999, 0.0), (0.7999999999999998, 1.0, 0.0), (0.5, 1.0, 0.0),
        (0.20000000000000018, 1.0, 0.0), (0.0, 1.0, 0.09999999999999964), (0.0, 1.0, 0.40000000000000036),
        (0.0, 1.0, 0.7000000000000002), (0.0, 1.0, 1.0), (0.0, 0.6999999999999997, 1.0),
        (0.0, 0.40000000000000036, 1.0), (0.0, 0.09999999999999964, 1.0), (0.1999999999999993, 0.0, 1.0),
        (0.5, 0.0, 1.0), (0.8000000000000007, 0.0, 1.0), (1.0, 0.0, 0.9000000000000004),
        (1.0, 0.0, 0.5999999999999996), (1.0, 0.0, 0.3000000000000007),
    ]
    assert [tuple(c) for c in HAND_EDGE_RGB] == expected


def test_hands_are_drawn_all_first_hands_then_all_second_hands():
    # Person 0's right hand and person 1's left hand share a point. The release stacks every left hand
    # before every right hand, so person 0's right hand (score 1.0) is drawn last and wins.
    a = put(blank_person(), RIGHT_HAND.start, 40.5, 30.5, 1.0)
    b = put(blank_person(), LEFT_HAND.start, 40.5, 30.5, 0.5)
    assert draw(a, b)[30, 40].tolist() == [255, 0, 0]
    # swapping which person holds which hand flips the winner
    a = put(blank_person(), LEFT_HAND.start, 40.5, 30.5, 1.0)
    b = put(blank_person(), RIGHT_HAND.start, 40.5, 30.5, 0.5)
    assert draw(a, b)[30, 40].tolist() == [127, 0, 0]


# ----------------------------------------------------------------------------------------------- faces
def test_face_grey_level_at_half_score():
    img = draw(put(blank_person(), FACE.start + 10, 40.5, 30.5, 0.5))
    assert img[30, 40].tolist() == [127, 127, 127]  # int(127.5)
    assert img[30, 43].tolist() == [127, 127, 127] and img[30, 44].tolist() == [0, 0, 0]  # radius 3


def test_face_and_hand_points_at_pixel_zero_are_not_drawn():
    # int(x * W) must exceed eps = 0.01, i.e. be >= 1.
    face_at_0 = put(blank_person(), FACE.start, 0.0, 30.5, 1.0)
    hand_at_0 = put(blank_person(), LEFT_HAND.start, 40.5, 0.5, 1.0)
    assert not draw(face_at_0).any()
    assert not draw(hand_at_0).any()
    face_at_1 = put(blank_person(), FACE.start, 1.5, 30.5, 1.0)
    assert draw(face_at_1)[30, 1].tolist() == [255, 255, 255]


def test_hand_edge_with_an_end_at_pixel_zero_is_not_drawn():
    p = blank_person()
    put(p, LEFT_HAND.start + 0, 0.5, 20.5, 1.0)  # column 0: neither its circle nor its edges
    put(p, LEFT_HAND.start + 1, 50.5, 20.5, 1.0)
    img = draw(p)
    assert img[20, 30].tolist() == [0, 0, 0]
    assert img[20, 50].tolist() == [255, 0, 0]


# --------------------------------------------------------------------------------------- missing points
def test_points_without_location_are_never_drawn():
    p = blank_person()
    p[:, 2] = 1.0  # even with a high score, NaN coordinates draw nothing (and do not crash)
    put(p, 2, 20.5, 30.5, 1.0)  # one located end: limb 0 (neck NaN) is skipped, the joint alone is drawn
    img = draw(p)
    only_joint = draw(put(blank_person(), 2, 20.5, 30.5, 1.0))
    np.testing.assert_array_equal(img, only_joint)
    assert img.any()


def test_layout_missing_points_draw_nothing():
    assert not draw(blank_person(), blank_person()).any()


def test_no_people_gives_black_image():
    img = draw_pose(np.zeros((0, NUM_POINTS, 3), np.float32), 64, 48)
    assert img.shape == (64, 48, 3) and img.dtype == np.uint8 and not img.any()


# --------------------------------------------------------------------------------- default 2160 canvas
def test_canvas_size_matches_release_formula():
    assert canvas_size(1024, 576) == (3840, 2160)
    assert canvas_size(576, 1024) == (2160, 3840)
    assert canvas_size(2160, 3000) == (2160, 3000)  # short side already 2160: factor 1
    assert canvas_size(37, 53) == (int(37 * (2160 / 37)), int(53 * (2160 / 37)))


def test_default_canvas_against_direct_opencv_computation():
    height, width = 64, 48  # canvas 2880 x 2160 (factor 45)
    p = blank_person()
    p[1] = (0.5, 0.25, 0.9)
    p[2] = (0.25, 0.5, 0.8)
    p[LEFT_HAND.start] = (0.6, 0.6, 0.7)
    p[LEFT_HAND.start + 1] = (0.7, 0.8, 0.6)
    p[FACE.start] = (0.4, 0.1, 0.45)
    img = draw_pose(p[None], height, width)

    ch, cw = 2880, 2160
    canvas = np.zeros((ch, cw, 3), np.uint8)
    xa, ya, xb, yb = 0.5 * cw, 0.25 * ch, 0.25 * cw, 0.5 * ch
    length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
    angle = np.degrees(np.arctan2(ya - yb, xa - xb))
    poly = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), 4), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, poly, [int(255 * 0.9 * 0.8), 0, 0])
    canvas = (canvas * 0.6).astype(np.uint8)
    cv2.circle(canvas, (int(0.5 * cw), int(0.25 * ch)), 4, [int(255 * 0.9), int(85 * 0.9), 0], -1)
    cv2.circle(canvas, (int(0.25 * cw), int(0.5 * ch)), 4, [int(255 * 0.8), int(170 * 0.8), 0], -1)
    cv2.line(canvas, (int(0.6 * cw), int(0.6 * ch)), (int(0.7 * cw), int(0.8 * ch)),
             (float(int(0.7 * 0.6 * 255)), 0.0, 0.0), thickness=2)
    cv2.circle(canvas, (int(0.6 * cw), int(0.6 * ch)), 4, (0, 0, int(0.7 * 255)), -1)
    cv2.circle(canvas, (int(0.7 * cw), int(0.8 * ch)), 4, (0, 0, int(0.6 * 255)), -1)
    grey = int(0.45 * 255)
    cv2.circle(canvas, (int(0.4 * cw), int(0.1 * ch)), 3, (grey, grey, grey), -1)
    expected = cv2.resize(canvas, (width, height))[:, :, ::-1]

    np.testing.assert_array_equal(img, expected)
    assert img.any()


def test_dimming_table_equals_float_multiply_and_truncate():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(_DIM_LUT, (values * 0.6).astype(np.uint8))
    assert _DIM_LUT[255] == 153 and _DIM_LUT[63] == 37


# ----------------------------------------------------------------------------------- sequences, tensors
def test_draw_pose_sequence_stacks_frames():
    frames = [np.zeros((0, NUM_POINTS, 3), np.float32), limb_person(1.0, 1.0)[None]]
    seq = draw_pose_sequence(frames, H, W)
    assert seq.shape == (2, H, W, 3) and seq.dtype == np.uint8
    np.testing.assert_array_equal(seq[1], draw_pose(frames[1], H, W))
    assert not seq[0].any()
    assert draw_pose_sequence([], H, W).shape == (0, H, W, 3)


def test_pose_images_to_tensor_values_and_layout():
    images = np.zeros((2, 3, 4, 3), np.uint8)
    images[1, 2, 3] = (0, 127, 255)
    t = pose_images_to_tensor(images)
    assert t.shape == (2, 3, 3, 4) and t.dtype == torch.float32
    assert t[1, :, 2, 3].tolist() == [-1.0, pytest.approx(127 / 127.5 - 1), 1.0]
    assert t[0].eq(-1).all()
    half = pose_images_to_tensor(images, dtype=torch.float16)
    assert half.dtype == torch.float16
    assert torch.equal(half, torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float16) / 127.5 - 1)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_shape_raises_pose_error():
    with pytest.raises(PoseError, match="shape"):
        draw_pose(np.zeros((1, 133, 3)), H, W)


@pytest.mark.parametrize("height, width", [(0, W), (H, -2), (H, 10.5), (float("nan"), W), (None, W)])
def test_bad_size_raises_config_error(height, width):
    with pytest.raises(ConfigError):
        draw_pose(np.zeros((0, NUM_POINTS, 3)), height, width)


def test_non_finite_score_is_treated_as_missing():
    p = put(blank_person(), FACE.start, 40.5, 30.5, 0.5)
    p[FACE.start + 1] = (10.5 / W, 10.5 / H, np.nan)
    np.testing.assert_array_equal(draw(p), draw(put(blank_person(), FACE.start, 40.5, 30.5, 0.5)))


def test_single_person_array_is_accepted():
    p = limb_person(1.0, 1.0)
    np.testing.assert_array_equal(
        draw_pose(p, H, W, canvas_short_side=H), draw_pose(p[None], H, W, canvas_short_side=H)
    )


def release_limbs(canvas, bodies):
    """The release's limb loop, written out: ellipses in the palette colour times the two end scores, each
    channel truncated to int (OpenCV saturates it to the canvas), not yet dimmed."""
    from mimicmotion.pose import draw as d

    ch, cw = canvas.shape[:2]
    for limb, (a, b) in enumerate(d.LIMBS):
        for person in bodies:
            if person[a, 2] < 0.3 or person[b, 2] < 0.3:
                continue
            x, y = person[[a, b], 0] * cw, person[[a, b], 1] * ch
            length = ((y[0] - y[1]) ** 2 + (x[0] - x[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
            centre = (int(np.mean(x)), int(np.mean(y)))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * person[a, 2] * person[b, 2]) for c in d.PALETTE[limb]])


def test_limbs_drawn_dimmed_equal_the_release_order_of_filling_then_dimming_the_whole_canvas():
    """draw_pose fills limbs with dimmed colours instead of dimming the whole canvas afterwards; on random
    people (limbs overlapping, some off the canvas, some hidden, scores above 1) the image equals the
    release's order."""
    from mimicmotion.pose import draw as d

    rng = np.random.default_rng(7)
    for trial in range(60):
        people = rng.integers(1, 4)
        low, high = (-0.4, 1.4) if trial % 3 == 0 else (0.05, 0.95)
        frame = np.zeros((people, NUM_POINTS, 3))
        frame[..., :2] = rng.uniform(low, high, (people, NUM_POINTS, 2))
        frame[..., 2] = rng.uniform(0.0, 1.5, (people, NUM_POINTS))  # DWPose scores can exceed 1
        height, width = (60, 40) if trial % 2 else (96, 64)
        short = 2160 if trial % 10 == 0 else int(rng.integers(40, 400))

        canvas = np.zeros((*canvas_size(height, width, short), 3), np.uint8)
        release_limbs(canvas, frame[:, d.BODY])  # the release: limbs in their full colours ...
        canvas = (canvas * 0.6).astype(np.uint8)  # ... then the whole canvas dimmed
        d._draw_joints(canvas, frame[:, d.BODY])
        d._draw_hands(canvas, np.concatenate([frame[:, LEFT_HAND], frame[:, RIGHT_HAND]], axis=0))
        d._draw_faces(canvas, frame[:, FACE])
        expected = cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(draw_pose(frame, height, width, canvas_short_side=short), expected)
