"""DWPose (SPEC section 2): the release's pre/post-processing against hand-computed values, model-file
errors, and whole frames through DWPoseEstimator with tiny ONNX stand-ins (tests/tiny_dwpose.py)."""
import math

import numpy as np
import pytest

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.pose.dwpose import (
    DWPoseEstimator,
    box_to_center_scale,
    choose_providers,
    crop_person,
    decode_simcc,
    decode_yolox,
    fix_aspect_ratio,
    keypoints_to_image,
    letterbox,
    multiclass_nms,
    nms,
    normalize_crops,
    select_people,
    warp_matrix,
    yolox_grids,
)
from tiny_dwpose import build_detector, build_pose_model, empty_head, plant_anchor, write_model_dir

RED_255 = (255 - 123.675) / 58.395  # normalised red value of a white pixel


# ---------------------------------------------------------------------------------------- letterbox
def test_letterbox_scales_places_top_left_and_pads_114():
    img = np.empty((3, 5, 3), np.uint8)
    img[...] = (10, 20, 30)
    chw, ratio = letterbox(img, (8, 8))
    assert ratio == 1.6  # min(8/3, 8/5)
    assert chw.dtype == np.float32 and chw.shape == (3, 8, 8)
    # resized to (int(5*1.6), int(3*1.6)) = 8 x 4: rows 0..3 hold the image, channel order kept (RGB)
    assert (chw[0, :4] == 10).all() and (chw[1, :4] == 20).all() and (chw[2, :4] == 30).all()
    assert (chw[:, 4:] == 114).all()


def test_letterbox_tall_image_pads_right():
    img = np.full((4, 2, 3), 200, np.uint8)
    chw, ratio = letterbox(img, (8, 8))
    assert ratio == 2.0
    assert (chw[:, :, :4] == 200).all() and (chw[:, :, 4:] == 114).all()


# ---------------------------------------------------------------------------------------- YOLOX decode
def test_yolox_grid_order():
    grids, strides = yolox_grids((640, 640))
    assert grids.shape == (8400, 2) and strides.shape == (8400, 1)
    assert grids[163].tolist() == [3, 2] and strides[163, 0] == 8  # stride 8: row 2 * 80 + col 3
    assert grids[6400 + 4 * 40 + 1].tolist() == [1, 4] and strides[6561, 0] == 16
    assert grids[8399].tolist() == [19, 19] and strides[8399, 0] == 32


def test_decode_yolox_planted_anchors():
    raw = np.zeros((8400, 85), np.float32)
    raw[163, :5] = [0.5, 0.25, 0.0, math.log(2.0), 0.5]  # stride 8, cell (3, 2)
    raw[163, 5 + 0] = 0.8
    raw[6561, :5] = [0.0, 0.0, 0.0, 0.0, 1.0]  # stride 16, cell (1, 4)
    raw[6561, 5 + 7] = 0.25
    boxes, scores = decode_yolox(raw, (640, 640))
    # centre (3.5*8, 2.25*8) = (28, 18), size (1*8, 2*8)
    np.testing.assert_allclose(boxes[163], [24, 10, 32, 26], atol=1e-5)
    # centre (16, 64), size 16 x 16
    np.testing.assert_array_equal(boxes[6561], [8, 56, 24, 72])
    assert scores.shape == (8400, 80) and boxes.dtype == np.float32
    assert scores[163, 0] == np.float32(0.5) * np.float32(0.8)
    assert scores[6561, 7] == 0.25 and scores[6561, 0] == 0
    # back to frame pixels: divided by the letterbox ratio
    half, _ = decode_yolox(raw, (640, 640), ratio=2.0)
    np.testing.assert_array_equal(half[6561], [4, 28, 12, 36])


def test_decode_yolox_rejects_wrong_anchor_count():
    with pytest.raises(ValueError, match="8400"):
        decode_yolox(np.zeros((100, 85), np.float32), (640, 640))


# ---------------------------------------------------------------------------------------- NMS
def _f32(rows):
    return np.array(rows, np.float32)


def test_nms_suppresses_overlap_above_threshold():
    # inclusive pixels: [0,0,9,9] has area 100; [0,0,9,4] covers 50 of it -> IoU 0.5 > 0.45
    keep = nms(_f32([[0, 0, 9, 9], [0, 0, 9, 4]]), _f32([0.9, 0.8]), 0.45)
    assert keep.tolist() == [0]


def test_nms_keeps_iou_exactly_at_threshold():
    # [0,0,9,3.5] overlaps 10 x 4.5 = 45 of the 100-pixel box: IoU 0.45, not > 0.45 -> kept
    keep = nms(_f32([[0, 0, 9, 9], [0, 0, 9, 3.5]]), _f32([0.9, 0.8]), 0.45)
    assert keep.tolist() == [0, 1]


def test_nms_counts_pixels_inclusively():
    # With +1: inter 5*10=50, union 150 -> IoU 1/3 > 0.3 (suppressed). Without it: 36/126 = 0.29 (kept).
    keep = nms(_f32([[0, 0, 9, 9], [5, 0, 14, 9]]), _f32([0.9, 0.8]), 0.3)
    assert keep.tolist() == [0]


def test_nms_orders_by_score_and_suppresses_against_kept_boxes_only():
    boxes = _f32([[0, 0, 9, 9], [100, 100, 109, 109], [0, 0, 9, 8], [50, 50, 59, 59]])
    keep = nms(boxes, _f32([0.2, 0.9, 0.5, 0.6]), 0.45)
    # visit order 1, 3, 2, 0; box 0 overlaps the kept box 2 (IoU 0.9) -> suppressed
    assert keep.tolist() == [1, 3, 2]


def test_nms_tie_order_is_reversed_numpy_argsort():
    # Equal scores: the release visits them in scores.argsort()[::-1] order; one of the two survives.
    boxes = _f32([[0, 0, 9, 9], [0, 0, 9, 9]])
    scores = _f32([0.7, 0.7])
    keep = nms(boxes, scores, 0.45)
    assert keep.tolist() == [scores.argsort()[::-1][0]]


def test_multiclass_nms_is_class_aware():
    boxes = _f32([[0, 0, 9, 9], [0, 0, 9, 8], [20, 20, 29, 29]])
    scores = _f32([[0.9, 0.0], [0.8, 0.7], [0.05, 0.6]])
    dets = multiclass_nms(boxes, scores, 0.45, 0.1)
    assert dets.dtype == np.float64 and dets.shape == (3, 6)
    np.testing.assert_array_equal(dets[:, :4], [[0, 0, 9, 9], [0, 0, 9, 8], [20, 20, 29, 29]])
    np.testing.assert_array_equal(dets[:, 4], _f32([0.9, 0.7, 0.6]))
    assert dets[:, 5].tolist() == [0, 1, 1]  # box 1 suppressed in class 0 only
    only_people = multiclass_nms(boxes, scores, 0.45, 0.1, classes=[0])
    np.testing.assert_array_equal(only_people, dets[:1])


def test_multiclass_nms_score_threshold_is_strict_and_empty_result_has_six_columns():
    dets = multiclass_nms(_f32([[0, 0, 9, 9]]), _f32([[0.1]]), 0.45, 0.1)
    assert dets.shape == (0, 6)


def test_select_people_keeps_class_0_above_0_3_compared_in_float64():
    dets = np.array([
        [0, 0, 10, 10, np.float32(0.3), 0],  # float32 0.3 is 0.30000001 > 0.3: kept, as in the release
        [1, 1, 11, 11, 0.3, 0],  # exactly 0.3: not > 0.3
        [2, 2, 12, 12, 0.9, 1],  # not a person
        [3, 3, 13, 13, 0.31, 0],
    ])
    np.testing.assert_array_equal(select_people(dets), [[0, 0, 10, 10], [3, 3, 13, 13]])


# ---------------------------------------------------------------------------------------- crop
def test_box_to_center_scale_pads_by_1_25():
    center, scale = box_to_center_scale([10, 20, 50, 100])
    assert center.tolist() == [30, 60] and scale.tolist() == [50, 100]


def test_fix_aspect_ratio_grows_the_short_side():
    assert fix_aspect_ratio([50, 100], 0.75).tolist() == [75, 100]  # too narrow: widen
    np.testing.assert_allclose(fix_aspect_ratio([100, 50], 0.75), [100, 400 / 3])  # too wide: heighten


def test_warp_matrix_zooms_by_output_over_box_width():
    m = warp_matrix([30, 60], [75, 100], (48, 64))
    # s = 48 / 75 = 0.64; the box centre goes to the crop centre: t = (24 - 0.64*30, 32 - 0.64*60)
    np.testing.assert_allclose(m, [[0.64, 0, 4.8], [0, 0.64, -6.4]], atol=1e-5)


def test_crop_person_copies_pixels_when_box_matches_input_size():
    img = np.zeros((100, 100, 3), np.uint8)
    img[50, 40] = (255, 128, 7)
    crop, scale = crop_person(img, np.array([30.0, 45.0]), np.array([48.0, 64.0]), (48, 64))
    assert crop.shape == (64, 48, 3) and crop.dtype == np.uint8
    assert scale.tolist() == [48, 64]
    # frame (x=40, y=50) -> crop (40 - 30 + 24, 50 - 45 + 32) = (34, 37); the rest stays black
    assert crop[37, 34].tolist() == [255, 128, 7]
    assert crop.sum() == 255 + 128 + 7


def test_crop_person_fixes_aspect_and_fills_outside_with_black():
    img = np.full((20, 20, 3), 50, np.uint8)
    # box 16 x 8 at the top-left corner: 1.25 -> 20 x 10, aspect 0.75 -> 20 x 26.67; crop 3 x 4 px
    center, scale = box_to_center_scale([0, 0, 16, 8])
    crop, fixed = crop_person(img, center, scale, (3, 4))
    np.testing.assert_allclose(fixed, [20, 80 / 3])
    # zoom 3/20 = 0.15 about the centre (8, 4): crop (u, v) samples x = (u - 1.5)/0.15 + 8 = -2, 4.67, 11.33 and
    # y = (v - 2)/0.15 + 4 = -9.33, -2.67, 4, 10.67: black where it falls outside the frame
    expected = np.array([[0, 0, 0], [0, 0, 0], [0, 50, 50], [0, 50, 50]], np.uint8)
    np.testing.assert_array_equal(crop, np.repeat(expected[..., None], 3, axis=2))


def test_normalize_crops_mean_std_chw():
    crop = np.zeros((2, 3, 3), np.uint8)
    crop[0, 1] = (255, 0, 116)
    out = normalize_crops([crop])
    assert out.shape == (1, 3, 2, 3) and out.dtype == np.float32
    assert out[0, :, 0, 1] == pytest.approx([RED_255, -116.28 / 57.12, (116 - 103.53) / 57.375], rel=1e-6)
    assert out[0, 1, 1, 2] == pytest.approx(-116.28 / 57.12, rel=1e-6)


# ---------------------------------------------------------------------------------------- SimCC
def test_decode_simcc_argmax_half_bin_min_score_and_no_location():
    sx = np.zeros((1, 4, 8), np.float32)
    sy = np.zeros((1, 4, 6), np.float32)
    sx[0, 0, 5], sy[0, 0, 3] = 0.8, 0.6  # -> (2.5, 1.5), score min = 0.6
    sx[0, 1, 7], sy[0, 1, 0] = 0.3, 0.9  # -> (3.5, 0), score 0.3
    sx[0, 2] = -0.2  # max_x negative -> no location
    sy[0, 2, 4] = 0.5
    sx[0, 3, [3, 6]] = 0.4  # tie: first bin -> 1.5
    sy[0, 3, 1] = 0.7
    locs, scores = decode_simcc(sx, sy)
    assert locs.shape == (1, 4, 2) and scores.shape == (1, 4)
    np.testing.assert_array_equal(locs[0, [0, 1, 3]], [[2.5, 1.5], [3.5, 0.0], [1.5, 0.5]])
    np.testing.assert_array_equal(scores[0], _f32([0.6, 0.3, -0.2, 0.4]))
    assert np.isnan(locs[0, 2]).all()


def test_decode_simcc_zero_score_has_no_location():
    locs, scores = decode_simcc(np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32))
    assert scores[0, 0] == 0 and np.isnan(locs).all()


def test_keypoints_to_image_maps_back_through_the_box():
    locs = np.array([[[2.5, 1.5], [np.nan, np.nan]]], np.float32)
    xy = keypoints_to_image(locs, (48, 64), np.array([[30.0, 60.0]]), np.array([[75.0, 100.0]]))
    # x = 2.5/48*75 + 30 - 37.5, y = 1.5/64*100 + 60 - 50
    np.testing.assert_allclose(xy[0, 0], [-3.59375, 12.34375])
    assert np.isnan(xy[0, 1]).all()


def test_choose_providers_cuda_first_when_available():
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------- model files
def test_missing_detector_names_file_path_and_source(tmp_path):
    with pytest.raises(ModelFileError) as err:
        DWPoseEstimator(tmp_path)
    msg = str(err.value)
    assert str(tmp_path.resolve() / "yolox_l.onnx") in msg
    assert "yzd-v/DWPose" in msg and "--dwpose-dir" in msg and "MIMICMOTION_DWPOSE_DIR" in msg


def test_missing_pose_model_names_it(tmp_path):
    build_detector(tmp_path / "yolox_l.onnx", empty_head())
    with pytest.raises(ModelFileError) as err:
        DWPoseEstimator(tmp_path)
    assert str(tmp_path.resolve() / "dw-ll_ucoco_384.onnx") in str(err.value)
    assert "yzd-v/DWPose" in str(err.value)


def test_model_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tmp_path))
    with pytest.raises(ModelFileError, match=r"\$MIMICMOTION_DWPOSE_DIR") as err:
        DWPoseEstimator()
    assert str(tmp_path.resolve() / "yolox_l.onnx") in str(err.value)


def test_model_dir_default_is_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("MIMICMOTION_DWPOSE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelFileError) as err:
        DWPoseEstimator()
    assert str(tmp_path.resolve() / ".cache" / "mimicmotion" / "dwpose" / "yolox_l.onnx") in str(err.value)


def test_corrupt_onnx_file(tmp_path):
    (tmp_path / "yolox_l.onnx").write_bytes(b"<html>404 not found</html>")
    build_pose_model(tmp_path / "dw-ll_ucoco_384.onnx")
    with pytest.raises(ModelFileError) as err:
        DWPoseEstimator(tmp_path)
    msg = str(err.value)
    assert str(tmp_path.resolve() / "yolox_l.onnx") in msg and "yzd-v/DWPose" in msg


def test_swapped_model_files_are_refused(tmp_path):
    build_pose_model(tmp_path / "yolox_l.onnx")
    build_detector(tmp_path / "dw-ll_ucoco_384.onnx", empty_head())
    with pytest.raises(ModelFileError, match="does not look like the YOLOX detector"):
        DWPoseEstimator(tmp_path)


def test_pose_batch_size_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="pose_batch_size"):
        DWPoseEstimator(tmp_path, pose_batch_size=0)


# ---------------------------------------------------------------------------------------- end to end
# A 240 x 320 frame (letterbox ratio 2) with three people planted in the detector's head. Each box is sized so
# that 1.25 x box is the pose input's 48 x 64 (or twice it), so the crop is a plain pixel copy (or an exact
# 2:1 subsample) and the keypoint lands exactly on the person's white pixel.
FRAME_H, FRAME_W = 240, 320
PEOPLE = [  # (stride, cell, offset, letterbox size, objectness, person score) -> frame centre, white pixel
    dict(anchor=(8, 25, 30, (0.5, 0.5), (76.8, 102.4), 0.95, 0.9), box=[82.8, 96.4, 121.2, 147.6], pixel=(110, 115)),
    dict(anchor=(16, 28, 18, (0.75, 0.75), (76.8, 102.4), 0.8, 0.7), box=[210.8, 124.4, 249.2, 175.6],
         pixel=(220, 170)),
    dict(anchor=(32, 12, 3, (0.5, 0.75), (153.6, 204.8), 0.9, 0.5), box=[161.6, 8.8, 238.4, 111.2], pixel=(170, 40)),
]
# COCO-WholeBody index feeding each of the 134 layout points (None: the synthetic neck).
COCO_OF_LAYOUT = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, *range(17, 133)]


def _keypoint_bias():
    bias = -0.01 * np.arange(133, dtype=np.float32)
    bias[3] = -3.0  # left ear: score 2.249 - 3 < 0 -> no location
    return bias


def _head():
    head = empty_head()
    for person in PEOPLE:
        stride, gx, gy, offset, size, obj, score = person["anchor"]
        plant_anchor(head, stride, gx, gy, offset, size, obj, {0: score})
    # A near-copy of the first person (IoU ~0.98, score 0.64): NMS removes it.
    plant_anchor(head, 8, 26, 30, (-0.4, 0.5), (76.8, 102.4), 0.8, {0: 0.8})
    plant_anchor(head, 16, 5, 5, (0.5, 0.5), (60, 60), 0.5, {0: 0.4})  # score 0.2: passes NMS, not > 0.3
    plant_anchor(head, 32, 3, 10, (0.5, 0.5), (60, 60), 0.9, {1: 0.95, 0: 0.05})  # a non-person
    return head


def _frame():
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    for person in PEOPLE:
        x, y = person["pixel"]
        frame[y, x] = 255
    return frame


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("dwpose"), _head(), _keypoint_bias())


@pytest.fixture(scope="module")
def estimator(model_dir):
    return DWPoseEstimator(model_dir, providers=["CPUExecutionProvider"], pose_batch_size=2)


def test_estimator_reads_model_geometry(estimator):
    assert estimator.det_input_hw == (640, 640)
    assert estimator.pose_input_wh == (48, 64)
    assert estimator.providers == ["CPUExecutionProvider"]


def test_detect_people_end_to_end(estimator):
    boxes = estimator.detect_people(_frame())
    np.testing.assert_allclose(boxes, [p["box"] for p in PEOPLE], atol=1e-4)


def _expected_person(pixel, bias):
    coco_scores = np.float32(RED_255) + bias
    expected = np.zeros((134, 3), np.float32)
    x, y = pixel[0] / FRAME_W, pixel[1] / FRAME_H
    for i, coco in enumerate(COCO_OF_LAYOUT):
        score = (1.0 if min(coco_scores[5], coco_scores[6]) > 0.3 else 0.0) if coco is None else coco_scores[coco]
        expected[i] = (x, y, score) if score > 0 else (np.nan, np.nan, 0.0)
    return expected


def test_estimator_end_to_end_frame(estimator):
    poses = estimator(_frame())
    assert poses.shape == (3, 134, 3) and poses.dtype == np.float64
    for person, pose in zip(PEOPLE, poses):
        expected = _expected_person(person["pixel"], _keypoint_bias())
        np.testing.assert_allclose(pose, expected, atol=1e-5)
    assert poses[0, 1, 2] == 1.0  # neck: both shoulders > 0.3
    assert np.isnan(poses[:, 17, :2]).all() and (poses[:, 17, 2] == 0).all()  # left ear: score < 0


def test_no_detection_uses_the_whole_frame(tmp_path):
    folder = write_model_dir(tmp_path, empty_head())
    est = DWPoseEstimator(folder, providers=["CPUExecutionProvider"])
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[20:25, 30:35] = 255
    assert est.detect_people(frame).shape == (0, 4)
    poses = est(frame)
    # box = frame -> centre (48, 32), size 1.25 x (96, 64) = (120, 80) -> aspect 0.75: (120, 160); zoom 0.4.
    # Crop column 17 samples x = 30.5 and row 28 samples y = 22 (first fully white ones): mapped back
    # x = 17/48*120 + 48 - 60 = 30.5, y = 28/64*160 + 32 - 80 = 22.
    assert poses.shape == (1, 134, 3)
    np.testing.assert_allclose(poses[0, 0], [30.5 / 96, 22 / 64, RED_255], rtol=1e-6)


def test_estimate_batch_matches_single_frames_and_chunks(estimator):
    single = estimator(_frame())
    batch = estimator.estimate_batch([_frame(), _frame()[::-1]])
    assert len(batch) == 2
    np.testing.assert_array_equal(batch[0], single)
    assert batch[1].shape == (3, 134, 3)
    assert estimator.estimate_batch([]) == []


@pytest.mark.parametrize("fixed_batch", [1, 4])
def test_fixed_batch_pose_model(tmp_path, fixed_batch):
    # Same detector; the pose model has a fixed batch (6 crops: 6 x 1, or 4 + 2 padded) and a lower right
    # shoulder score (2.249 - 2 < 0.3), so the neck loses its score and location.
    bias = _keypoint_bias()
    bias[6] = -2.0
    folder = write_model_dir(tmp_path, _head(), bias, fixed_batch=fixed_batch)
    est = DWPoseEstimator(folder, providers=["CPUExecutionProvider"])
    frames = [_frame(), _frame()]
    got = est.estimate_batch(frames)
    for poses in got:
        for person, pose in zip(PEOPLE, poses):
            np.testing.assert_allclose(pose, _expected_person(person["pixel"], bias), atol=1e-5)
        assert np.isnan(poses[:, 1, :2]).all() and (poses[:, 1, 2] == 0).all()
        assert poses[0, 2, 2] == pytest.approx(RED_255 - 2.0, abs=1e-5)


def test_bad_frames_are_refused(estimator):
    with pytest.raises(ConfigError, match="RGB uint8"):
        estimator(np.zeros((8, 8), np.uint8))
    with pytest.raises(ConfigError, match="RGB uint8"):
        estimator(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="RGB uint8"):
        estimator(np.zeros((8, 8, 4), np.uint8))
