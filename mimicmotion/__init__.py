"""MimicMotion: confidence-aware pose-guided human video generation.

The library knows nothing of Prefect or Ray; heavy modules (torch, diffusers) are imported lazily so
that ``import mimicmotion`` stays cheap for the pose and video tools.
"""
from mimicmotion.errors import (
    ConfigError,
    MimicMotionError,
    ModelFileError,
    PoseError,
    VideoError,
)

__version__ = "0.1.0"

_LAZY = {
    "MimicMotionPipeline": "mimicmotion.pipeline",
    "load_pipeline": "mimicmotion.loading",
    "PoseNet": "mimicmotion.models.pose_net",
    "PoseConditionedUNet": "mimicmotion.models.unet",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimicmotion' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "MimicMotionError",
    "ModelFileError",
    "PoseError",
    "VideoError",
    *_LAZY,
]
