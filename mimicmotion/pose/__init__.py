"""The pose side of the method: layout, DWPose detection (or the bundled Holistic estimator), confidence-aware
drawing, alignment, files."""
from mimicmotion.pose.layout import (
    BODY,
    FACE,
    FOOT,
    LEFT_HAND,
    NUM_POINTS,
    RIGHT_HAND,
    VISIBLE_THRESHOLD,
    empty_frame,
    from_coco_wholebody,
)
from mimicmotion.pose.io import PoseSequence, load_poses, save_poses

_LAZY = {
    "draw_pose": "mimicmotion.pose.draw",
    "align_poses": "mimicmotion.pose.align",
    "fit_alignment": "mimicmotion.pose.align",
    "DWPoseEstimator": "mimicmotion.pose.dwpose",
    "HolisticEstimator": "mimicmotion.pose.holistic",
    "POSE_ESTIMATORS": "mimicmotion.pose.estimators",
    "choose_pose_estimator": "mimicmotion.pose.estimators",
    "make_pose_estimator": "mimicmotion.pose.estimators",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimicmotion.pose' has no attribute {name!r}")
