"""DWPose whole-body keypoints (SPEC section 2): YOLOX person boxes, then RTMPose SimCC keypoints per box.

Two ONNX files run with onnxruntime, as in the MimicMotion release:

* ``yolox_l.onnx``: the RGB frame letterboxed top-left into 640x640 (pad 114), raw YOLOX head decoded on
  the stride 8/16/32 grids, class-aware NMS (IoU 0.45, score 0.1), persons (class 0) with score > 0.3.
* ``dw-ll_ucoco_384.onnx``: each box padded by 1.25, its aspect fixed to the model input's w/h, warped to
  the input size (288x384 for the real model, read from the graph), mean/std normalised; the SimCC argmax
  gives 133 COCO-WholeBody points that are mapped back to frame pixels.

The pure functions below reproduce the release's arithmetic, dtypes included (float32 where it works in
float32, float64 where it promotes), so boxes and keypoints match it to the bit. The estimator adds what
the release lacks: batching the pose model over all people of several frames, a configurable model folder,
and errors that say which file is missing and where to get it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.pose.layout import check_rgb_frame, from_coco_wholebody

logger = logging.getLogger(__name__)

DWPOSE_DIR_ENV = "MIMICMOTION_DWPOSE_DIR"
DEFAULT_DWPOSE_DIR = Path("~/.cache/mimicmotion/dwpose")
DET_MODEL_FILE = "yolox_l.onnx"
POSE_MODEL_FILE = "dw-ll_ucoco_384.onnx"
DWPOSE_SOURCE = "the Hugging Face repo yzd-v/DWPose (https://huggingface.co/yzd-v/DWPose)"

DET_INPUT_HW = (640, 640)  # used when the detector graph does not fix its input size
DET_PAD_VALUE = 114
YOLOX_STRIDES = (8, 16, 32)
DET_NMS_IOU = 0.45
DET_SCORE_THR = 0.1
PERSON_CLASS = 0
PERSON_SCORE_THR = 0.3

BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0
NUM_WHOLEBODY_POINTS = 133


# ------------------------------------------------------------------------------------------- detector
def letterbox(img: np.ndarray, size: tuple[int, int] = DET_INPUT_HW) -> tuple[np.ndarray, float]:
    """Resize ``img`` (H, W, 3) by r = min(size_h / H, size_w / W) into the top-left of a ``size``
    (height, width) canvas filled with 114; return it as float32 CHW (no normalisation) and r.

    The resized size truncates like the release, ``(int(W * r), int(H * r))``; a side that would
    truncate to zero pixels is kept at one (the release crashes there).
    """
    out_h, out_w = size
    h, w = img.shape[:2]
    ratio = min(out_h / h, out_w / w)
    new_w, new_h = max(1, int(w * ratio)), max(1, int(h * ratio))
    canvas = np.full((out_h, out_w, 3), DET_PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def yolox_grids(input_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor cells of the YOLOX head: ``grids`` (N, 2) as (x, y) cell indices and ``anchor_strides`` (N, 1).

    Order: stride by stride; inside one stride row-major over (y, x), x fastest (anchor = y * W + x).
    """
    grids, anchor_strides = [], []
    for stride in strides:
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        anchor_strides.append(np.full((rows * cols, 1), stride))
    return np.concatenate(grids), np.concatenate(anchor_strides)


def decode_yolox(raw: np.ndarray, input_hw: tuple[int, int] = DET_INPUT_HW,
                 ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Decode the raw YOLOX head ``raw`` (N, 5 + C) into float32 ``boxes`` (N, 4) x1y1x2y2 in frame pixels
    (letterbox pixels divided by ``ratio``) and float32 ``scores`` (N, C) = objectness * class score."""
    raw = np.asarray(raw, dtype=np.float32)
    grids, anchor_strides = yolox_grids(input_hw)
    if raw.ndim != 2 or raw.shape[0] != len(grids) or raw.shape[1] < 6:
        raise ValueError(f"YOLOX output for input {input_hw} must be ({len(grids)}, 5 + classes); got {raw.shape}")
    # The release adds the integer grid in float64 and stores back into the float32 output.
    centre = ((raw[:, :2].astype(np.float64) + grids) * anchor_strides).astype(np.float32)
    size = (np.exp(raw[:, 2:4]).astype(np.float64) * anchor_strides).astype(np.float32)
    half = size / np.float32(2.0)
    boxes = np.concatenate([centre - half, centre + half], axis=1) / np.float32(ratio)
    scores = raw[:, 4:5] * raw[:, 5:]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy single-class NMS with the release's conventions: areas and overlaps count pixels inclusively
    (``x2 - x1 + 1``); candidates are visited in ``scores.argsort()[::-1]`` order (numpy's default sort,
    reversed, which also fixes the order of equal scores); a box is dropped only when its IoU with a kept
    box is > ``iou_thr`` (IoU equal to the threshold survives). Returns the kept indices, best first.
    Arithmetic stays in the boxes' dtype (float32 for detector output), as in the release."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_thr]
    return np.asarray(keep, dtype=np.intp)


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float = DET_NMS_IOU,
                   score_thr: float = DET_SCORE_THR, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Class-aware NMS: per class (all, or only ``classes``), boxes whose score is > ``score_thr`` go
    through :func:`nms`. Returns float64 rows (x1, y1, x2, y2, score, class), classes in ascending order,
    best first within a class; shape (0, 6) when nothing survives.

    Restricting ``classes`` does not change the rows of the classes kept (each class is independent)."""
    rows = []
    for cls in range(scores.shape[1]) if classes is None else sorted(classes):
        cls_scores = scores[:, cls]
        valid = cls_scores > score_thr
        if not valid.any():
            continue
        valid_boxes, valid_scores = boxes[valid], cls_scores[valid]
        keep = nms(valid_boxes, valid_scores, iou_thr)
        rows.append(np.concatenate(
            [valid_boxes[keep], valid_scores[keep, None], np.full((len(keep), 1), float(cls))], axis=1))
    if not rows:
        return np.zeros((0, 6), dtype=np.float64)
    return np.concatenate(rows).astype(np.float64)


def select_people(dets: np.ndarray, score_thr: float = PERSON_SCORE_THR) -> np.ndarray:
    """Boxes (N, 4) of the NMS rows whose class is person and whose score is > ``score_thr``.

    The comparison is in float64 like the release (its rows are float64), so a float32 score of 0.3
    (0.30000001...) passes."""
    dets = np.asarray(dets, dtype=np.float64)
    chosen = (dets[:, 5] == PERSON_CLASS) & (dets[:, 4] > score_thr)
    return dets[chosen, :4]


def whole_frame_box(height: int, width: int) -> np.ndarray:
    """The box used when the detector finds nobody: the whole frame, (1, 4)."""
    return np.array([[0.0, 0.0, float(width), float(height)]])


# ----------------------------------------------------------------------------------------- pose model
def box_to_center_scale(box, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """x1y1x2y2 box -> centre (x, y) and size (w, h) times ``padding``, float64."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    scale = np.array([x2 - x1, y2 - y1]) * padding
    return center, scale


def fix_aspect_ratio(scale, aspect: float) -> np.ndarray:
    """Grow the short side of ``scale`` (w, h) so that w / h == ``aspect``."""
    w, h = np.asarray(scale, dtype=np.float64)
    return np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` plus ``a - b`` turned by 90 degrees: the third point that pins down an affine map."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=a.dtype)


def warp_matrix(center, scale, output_wh: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix mapping the box (``center``, ``scale`` w x h) onto an ``output_wh`` image, no
    rotation. Built as the release does: three float32 point pairs (centre, centre - w/2 upwards, and a
    third point) through ``cv2.getAffineTransform``; only the box width sets the zoom, so ``scale`` must
    already have the output's aspect ratio."""
    center = np.asarray(center, dtype=np.float64)
    half_w = np.float64(scale[0]) * 0.5
    out_w, out_h = output_wh
    src_center = center.astype(np.float32)
    src_top = (center + np.array([0.0, -half_w])).astype(np.float32)
    dst_center = np.array([out_w * 0.5, out_h * 0.5], dtype=np.float32)
    dst_top = (np.array([out_w * 0.5, out_h * 0.5]) + np.array([0.0, -out_w * 0.5])).astype(np.float32)
    src = np.stack([src_center, src_top, _third_point(src_center, src_top)])
    dst = np.stack([dst_center, dst_top, _third_point(dst_center, dst_top)])
    return cv2.getAffineTransform(src, dst)


def crop_person(img: np.ndarray, center, scale, input_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp the box around ``center`` into a ``input_wh`` (w, h) crop (bilinear, black outside the frame).

    Returns the crop (same dtype as ``img``) and the box size after fixing its aspect to w / h, which is
    what maps keypoints back."""
    in_w, in_h = int(input_wh[0]), int(input_wh[1])
    scale = fix_aspect_ratio(scale, in_w / in_h)
    matrix = warp_matrix(center, scale, (in_w, in_h))
    crop = cv2.warpAffine(img, matrix, (in_w, in_h), flags=cv2.INTER_LINEAR)
    return crop, scale


def normalize_crops(crops: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 RGB crops (h, w, 3) -> float32 (N, 3, h, w) normalised with the ImageNet mean and std
    (computed in float64 and cast, as the release's float64 input is cast by onnxruntime)."""
    stacked = np.stack(crops).astype(np.float64)
    normalised = (stacked - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split_ratio: float = SIMCC_SPLIT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors (N, K, Wx) and (N, K, Wy) -> locations (N, K, 2) float32 in model-input pixels
    (argmax bin / ``split_ratio``, first bin on ties) and scores (N, K) = min(max_x, max_y).

    A point whose score is <= 0 has no location: NaN (the release writes -1 there)."""
    simcc_x, simcc_y = np.asarray(simcc_x), np.asarray(simcc_y)
    locs = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float32)
    max_x, max_y = simcc_x.max(axis=-1), simcc_y.max(axis=-1)
    scores = np.where(max_x > max_y, max_y, max_x)
    locs /= np.float32(split_ratio)
    locs[scores <= 0] = np.nan
    return locs, scores


def keypoints_to_image(locs: np.ndarray, input_wh: tuple[int, int], center, scale) -> np.ndarray:
    """Model-input locations (N, K, 2) -> frame pixels: p = loc / input_size * size + centre - size / 2,
    with per-person ``center`` and ``scale`` (N, 2) (float64, as the release)."""
    center = np.asarray(center, dtype=np.float64)[:, None, :]
    scale = np.asarray(scale, dtype=np.float64)[:, None, :]
    size = np.asarray(input_wh, dtype=np.float64)
    return locs.astype(np.float64) / size * scale + center - scale / 2


# ------------------------------------------------------------------------------------- model files
def resolve_model_dir(model_dir=None) -> tuple[Path, str]:
    """The folder holding the ONNX files and how it was chosen (for messages): ``model_dir`` if given,
    else ``$MIMICMOTION_DWPOSE_DIR``, else ``~/.cache/mimicmotion/dwpose``."""
    if model_dir is not None:
        return Path(model_dir).expanduser(), "the folder given with --dwpose-dir / model_dir"
    env = os.environ.get(DWPOSE_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser(), f"the folder set by ${DWPOSE_DIR_ENV}"
    return DEFAULT_DWPOSE_DIR.expanduser(), "the default folder"


def _where_to_get() -> str:
    return (f"The DWPose files {DET_MODEL_FILE} and {POSE_MODEL_FILE} are published in {DWPOSE_SOURCE}: "
            f"download them into that folder, or point to the folder holding them with --dwpose-dir DIR or "
            f"the {DWPOSE_DIR_ENV} environment variable.")


def model_file(model_dir: Path, name: str, chosen_by: str) -> Path:
    """``model_dir / name`` if it is a file, else a ModelFileError naming the file, the full path looked
    at, and where to obtain it."""
    path = (model_dir / name).resolve()
    if not path.is_file():
        raise ModelFileError(
            f"DWPose model file {Path(name).name} not found: looked for {path} ({chosen_by}). {_where_to_get()}"
        )
    return path


def choose_providers(available: Sequence[str]) -> list[str]:
    """CUDA first when onnxruntime offers it, CPU always (as fallback or alone)."""
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _open_session(path: Path, providers: Sequence[str]):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own (non-RuntimeError) classes for bad files
        raise ModelFileError(
            f"{path} could not be loaded as an ONNX model ({type(exc).__name__}: {exc}). The file may be "
            f"damaged or incomplete. {_where_to_get()}"
        ) from exc


def _static_dim(dim) -> Optional[int]:
    """An ONNX input dimension as int, or None when it is symbolic / unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_frame(frame, index: int) -> np.ndarray:
    return check_rgb_frame(frame, index, "DWPose")


# --------------------------------------------------------------------------------------- estimator
class DWPoseEstimator:
    """Whole-body poses of every person in RGB frames, in the 134-point layout (SPEC sections 1-2).

    ``estimator(frame)`` -> (P, 134, 3) float64, x/y normalised by the frame size, NaN where no location.
    Every frame yields at least one person: with no detection the whole frame is the box (release).
    """

    name = "dwpose"
    version = f"dwpose:{DET_MODEL_FILE}+{POSE_MODEL_FILE}"

    def __init__(self, model_dir=None, *, det_model: str = DET_MODEL_FILE, pose_model: str = POSE_MODEL_FILE,
                 providers: Optional[Sequence[str]] = None, pose_batch_size: int = 32):
        if int(pose_batch_size) < 1:
            raise ConfigError(f"pose_batch_size must be >= 1, got {pose_batch_size}")
        self.pose_batch_size = int(pose_batch_size)
        self.model_dir, chosen_by = resolve_model_dir(model_dir)
        det_path = model_file(self.model_dir, det_model, chosen_by)
        pose_path = model_file(self.model_dir, pose_model, chosen_by)
        if providers is None:
            import onnxruntime as ort

            providers = choose_providers(ort.get_available_providers())
        self._det = _open_session(det_path, providers)
        self._pose = _open_session(pose_path, providers)
        self.det_input_hw = self._check_detector(det_path)
        self.pose_input_wh, self._pose_batch = self._check_pose_model(pose_path)
        self.providers = self._pose.get_providers()
        logger.info("DWPose on %s: detector %s, pose model %s (input %dx%d)", self.providers, det_path,
                    pose_path, *self.pose_input_wh)

    # -- model checks: catch swapped or foreign files at load time, with a message naming the file
    def _check_detector(self, path: Path) -> tuple[int, int]:
        inputs, outputs = self._det.get_inputs(), self._det.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(inputs) != 1 or len(shape) != 4 or len(outputs) != 1 or len(outputs[0].shape) != 3:
            raise ModelFileError(
                f"{path} does not look like the YOLOX detector (expected one NCHW image input and one "
                f"(1, anchors, 85) output). {_where_to_get()}")
        h, w = _static_dim(shape[2]), _static_dim(shape[3])
        return (h, w) if h and w else DET_INPUT_HW

    def _check_pose_model(self, path: Path) -> tuple[tuple[int, int], Optional[int]]:
        inputs, outputs = self._pose.get_inputs(), self._pose.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        h, w = (_static_dim(shape[2]), _static_dim(shape[3])) if len(shape) == 4 else (None, None)
        if len(inputs) != 1 or len(outputs) != 2 or not (h and w):
            raise ModelFileError(
                f"{path} does not look like the RTMPose whole-body model (expected one (B, 3, H, W) input with "
                f"fixed H and W, and two outputs simcc_x, simcc_y). {_where_to_get()}")
        return (w, h), _static_dim(shape[0])

    # -- detection
    def detect_people(self, frame: np.ndarray) -> np.ndarray:
        """Person boxes (N, 4) x1y1x2y2 in frame pixels, best first; (0, 4) when nobody is found."""
        frame = _check_frame(frame, 0)
        chw, ratio = letterbox(frame, self.det_input_hw)
        raw = self._det.run(None, {self._det.get_inputs()[0].name: chw[None]})[0]
        if raw.ndim != 3 or raw.shape[0] != 1:
            raise ModelFileError(f"the YOLOX detector returned shape {raw.shape}, expected (1, anchors, 85)")
        boxes, scores = decode_yolox(raw[0], self.det_input_hw, ratio)
        # Only class 0 is kept in the end; NMS is per class, so skipping the others changes nothing.
        dets = multiclass_nms(boxes, scores, DET_NMS_IOU, DET_SCORE_THR, classes=[PERSON_CLASS])
        return select_people(dets)

    # -- pose
    def _run_pose(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """SimCC outputs for all crops, run in batches: ``pose_batch_size`` when the graph's batch is
        dynamic, else its fixed batch (the last chunk zero-padded and the padding discarded)."""
        batch = self._pose_batch or self.pose_batch_size
        input_name = self._pose.get_inputs()[0].name
        out_x, out_y = [], []
        for start in range(0, len(crops), batch):
            chunk = normalize_crops(crops[start:start + batch])
            n = len(chunk)
            if self._pose_batch and n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            simcc_x, simcc_y = self._pose.run(None, {input_name: chunk})
            out_x.append(simcc_x[:n])
            out_y.append(simcc_y[:n])
        return np.concatenate(out_x), np.concatenate(out_y)

    def estimate_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Poses of several frames; the pose model sees the people of all frames together."""
        frames = [_check_frame(f, i) for i, f in enumerate(frames)]
        crops, centers, scales, counts = [], [], [], []
        for frame in frames:
            boxes = self.detect_people(frame)
            if len(boxes) == 0:
                boxes = whole_frame_box(*frame.shape[:2])
            for box in boxes:
                center, scale = box_to_center_scale(box)
                crop, scale = crop_person(frame, center, scale, self.pose_input_wh)
                crops.append(crop)
                centers.append(center)
                scales.append(scale)
            counts.append(len(boxes))
        if not crops:
            return []
        simcc_x, simcc_y = self._run_pose(crops)
        if simcc_x.ndim != 3 or simcc_x.shape[1] != NUM_WHOLEBODY_POINTS or simcc_y.shape[:2] != simcc_x.shape[:2]:
            raise ModelFileError(f"the pose model returned SimCC shapes {simcc_x.shape} and {simcc_y.shape}, "
                                 f"expected (B, {NUM_WHOLEBODY_POINTS}, bins)")
        locs, scores = decode_simcc(simcc_x, simcc_y)
        xy = keypoints_to_image(locs, self.pose_input_wh, np.stack(centers), np.stack(scales))
        poses, start = [], 0
        for frame, count in zip(frames, counts):
            people = slice(start, start + count)
            poses.append(from_coco_wholebody(xy[people], scores[people], frame.shape[1], frame.shape[0]))
            start += count
        return poses

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.estimate_batch([frame])[0]
