"""Choosing the pose estimator: DWPose (the method's, faithful) or the bundled MediaPipe Holistic models.

``auto`` (the default everywhere) takes DWPose when its two ONNX files are present (``--dwpose-dir``,
``$MIMICMOTION_DWPOSE_DIR`` or ``~/.cache/mimicmotion/dwpose``) and the bundled estimator otherwise, so a
fresh install detects poses with no download. An explicit ``--dwpose-dir`` means DWPose: its files must be
there. Every estimator has ``estimate_batch(frames)``, ``name`` and ``version`` (recorded in the catalog).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from mimicmotion.errors import ConfigError

logger = logging.getLogger(__name__)

POSE_ESTIMATORS = ("auto", "dwpose", "mediapipe")
DEFAULT_POSE_ESTIMATOR = "auto"


@dataclass(frozen=True)
class EstimatorChoice:
    name: str  # "dwpose" or "mediapipe"
    reason: str  # why, for the log and the user

    def describe(self) -> str:
        return f"pose estimator: {self.name} ({self.reason})"


def check_pose_estimator(value: Optional[str]) -> str:
    value = DEFAULT_POSE_ESTIMATOR if value is None else str(value).strip().lower()
    if value not in POSE_ESTIMATORS:
        raise ConfigError(f"pose estimator must be one of {', '.join(POSE_ESTIMATORS)}, got {value!r} "
                          "(--pose-estimator / pose_estimator)")
    return value


def dwpose_files_present(dwpose_dir=None) -> tuple[bool, str]:
    """Whether both DWPose ONNX files are in the folder DWPose would use, and that folder (for messages)."""
    from mimicmotion.pose.dwpose import DET_MODEL_FILE, POSE_MODEL_FILE, resolve_model_dir

    folder, _chosen_by = resolve_model_dir(dwpose_dir)
    present = (folder / DET_MODEL_FILE).is_file() and (folder / POSE_MODEL_FILE).is_file()
    return present, str(folder)


def choose_pose_estimator(pose_estimator: Optional[str] = None, dwpose_dir=None) -> EstimatorChoice:
    """Resolve ``auto``: DWPose when ``dwpose_dir`` is given or its files are found, else the bundled one."""
    choice = check_pose_estimator(pose_estimator)
    if choice == "dwpose":
        return EstimatorChoice("dwpose", "asked for")
    if choice == "mediapipe":
        return EstimatorChoice("mediapipe", "asked for; bundled MediaPipe Holistic models")
    if dwpose_dir is not None:
        return EstimatorChoice("dwpose", f"auto: --dwpose-dir {dwpose_dir} given")
    present, folder = dwpose_files_present(None)
    if present:
        return EstimatorChoice("dwpose", f"auto: DWPose files found in {folder}")
    return EstimatorChoice("mediapipe", f"auto: no DWPose files in {folder}, using the bundled MediaPipe Holistic "
                                        "models; pass --dwpose-dir for the method's DWPose")


def make_pose_estimator(pose_estimator: Optional[str] = None, dwpose_dir=None, *,
                        providers: Optional[Sequence[str]] = None, pose_batch_size: int = 32,
                        num_threads: Optional[int] = None, announce: bool = True):
    """The estimator ``choose_pose_estimator`` picks, loaded (missing or damaged files raise ModelFileError)."""
    choice = choose_pose_estimator(pose_estimator, dwpose_dir)
    if announce:
        logger.info("%s", choice.describe())
    if choice.name == "dwpose":
        from mimicmotion.pose.dwpose import DWPoseEstimator

        return DWPoseEstimator(dwpose_dir, providers=providers, pose_batch_size=pose_batch_size)
    from mimicmotion.pose.holistic import HolisticEstimator

    return HolisticEstimator(num_threads=num_threads)
