"""Tiny stand-ins for the two DWPose ONNX files, with the real models' input/output names and layouts.

* Detector: input ``images`` (1, 3, 640, 640) -> ``output`` (1, 8400, 85). It ignores the image and
  returns a raw YOLOX head chosen by the test (``plant_anchor`` writes one anchor), so the decoded
  boxes are known exactly.
* Pose model: input ``input`` (B, 3, H, W) -> ``simcc_x`` (B, 133, 2W), ``simcc_y`` (B, 133, 2H), with a
  small H x W. Every keypoint's SimCC-x is the red channel's column-wise maximum with each bin doubled
  (SimCC split ratio 2), SimCC-y the row-wise maximum, plus a per-keypoint bias. So every keypoint
  lands on the brightest red pixel of the crop (first column / row on ties) and its score is that
  pixel's normalised red value plus the keypoint's bias.

Built with torch.onnx.export (the TorchScript exporter, ``dynamo=False``: the dynamo exporter needs
onnxscript, which the project does not depend on).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

DET_INPUT_HW = (640, 640)
YOLOX_STRIDES = (8, 16, 32)
NUM_ANCHORS = sum((640 // s) ** 2 for s in YOLOX_STRIDES)  # 8400
NUM_CLASSES = 80
NUM_KEYPOINTS = 133
POSE_INPUT_HW = (64, 48)  # (H, W); the real model is (384, 288)
OPSET = 17


def anchor_index(stride: int, gx: int, gy: int, input_hw=DET_INPUT_HW) -> int:
    """Row of the YOLOX output for grid cell (gx, gy) at ``stride``: strides 8, 16, 32 in turn, each
    row-major with x fastest."""
    offset = 0
    for s in YOLOX_STRIDES:
        cols = input_hw[1] // s
        if s == stride:
            return offset + gy * cols + gx
        offset += (input_hw[0] // s) * cols
    raise ValueError(f"stride {stride} is not one of {YOLOX_STRIDES}")


def empty_head() -> np.ndarray:
    """A raw YOLOX head with no object anywhere (objectness 0): (8400, 85) float32."""
    return np.zeros((NUM_ANCHORS, 5 + NUM_CLASSES), dtype=np.float32)


def plant_anchor(head: np.ndarray, stride: int, gx: int, gy: int, offset_xy, size_wh, objectness: float,
                 class_scores: dict) -> None:
    """Write one anchor into ``head``: centre = (grid + offset) * stride, size = ``size_wh`` letterbox
    pixels (stored as log(size / stride), as the head predicts it), score = objectness * class score."""
    row = head[anchor_index(stride, gx, gy)]
    row[0:2] = offset_xy
    row[2:4] = [math.log(size_wh[0] / stride), math.log(size_wh[1] / stride)]
    row[4] = objectness
    for cls, score in class_scores.items():
        row[5 + cls] = score


class _ConstantHead(torch.nn.Module):
    def __init__(self, head: np.ndarray):
        super().__init__()
        self.register_buffer("head", torch.from_numpy(np.asarray(head, dtype=np.float32)[None].copy()))

    def forward(self, images):
        # Tie the output to the input so the graph keeps its ``images`` input; the term is exactly 0.
        return self.head + 0.0 * images.mean()


class _BrightestPixel(torch.nn.Module):
    def __init__(self, keypoint_bias: np.ndarray):
        super().__init__()
        self.register_buffer("bias", torch.from_numpy(np.asarray(keypoint_bias, dtype=np.float32).copy()))

    def forward(self, input):
        red = input[:, 0]  # (B, H, W)
        cols = red.amax(dim=1)  # (B, W)
        rows = red.amax(dim=2)  # (B, H)
        simcc_x = torch.stack([cols, cols], dim=-1).flatten(1)  # bin 2c and 2c+1 <- column c
        simcc_y = torch.stack([rows, rows], dim=-1).flatten(1)
        bias = self.bias[None, :, None]
        return simcc_x[:, None, :] + bias, simcc_y[:, None, :] + bias


def build_detector(path, head: np.ndarray) -> Path:
    """A detector ONNX file whose output is always ``head`` (8400, 85)."""
    path = Path(path)
    torch.onnx.export(_ConstantHead(head), (torch.zeros(1, 3, *DET_INPUT_HW),), str(path),
                      input_names=["images"], output_names=["output"], opset_version=OPSET, dynamo=False)
    return path


def build_pose_model(path, keypoint_bias: Optional[np.ndarray] = None, input_hw=POSE_INPUT_HW,
                     fixed_batch: Optional[int] = None) -> Path:
    """A pose ONNX file (see the module doc): dynamic batch, or ``fixed_batch`` people per run like
    exports of the real model with a fixed batch."""
    path = Path(path)
    bias = np.zeros(NUM_KEYPOINTS, np.float32) if keypoint_bias is None else keypoint_bias
    dynamic = None if fixed_batch else {"input": {0: "batch"}, "simcc_x": {0: "batch"}, "simcc_y": {0: "batch"}}
    torch.onnx.export(_BrightestPixel(bias), (torch.zeros(fixed_batch or 1, 3, *input_hw),), str(path),
                      input_names=["input"], output_names=["simcc_x", "simcc_y"], dynamic_axes=dynamic,
                      opset_version=OPSET, dynamo=False)
    return path


def write_model_dir(folder, head: np.ndarray, keypoint_bias: Optional[np.ndarray] = None,
                    fixed_batch: Optional[int] = None) -> Path:
    """A folder laid out like the user's DWPose folder: yolox_l.onnx and dw-ll_ucoco_384.onnx."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_detector(folder / "yolox_l.onnx", head)
    build_pose_model(folder / "dw-ll_ucoco_384.onnx", keypoint_bias, fixed_batch=fixed_batch)
    return folder
