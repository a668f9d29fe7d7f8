"""Procedural human-motion data: articulated dancers rendered with exact, confidence-scored poses.

``render_clip(appearance, motion, seed)`` gives frames and their PoseSequence without touching files;
``generate_dataset(out_dir, num_videos, seed)`` writes videos with ``<stem>.poses.parquet`` sidecars (what
the curate flow reads) and a manifest; ``mimicmotion synth`` is its command (``add_synth_command``).
The figure is a 3D body (limbs, torso, head with a 68-point face, hands with 21 joints) solved by forward
kinematics, projected orthographically and drawn from the same points, so pixels and poses agree.

Names are imported on first use, so registering the command does not load OpenCV or pyarrow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "appearance": ("Appearance", "Background", "BodyShape", "Garment", "render_background", "sample_appearance"),
    "clip": ("DetectorNoise", "RenderedClip", "apply_detector_noise", "blur_factor", "clip_camera", "reference_image",
             "render_clip", "render_clip_detailed", "sample_camera", "sample_clip"),
    "dataset": ("entry_clip", "entry_reference", "generate_dataset", "is_test_video", "load_manifest", "video_seed"),
    "motion": ("Motion", "sample_motion", "still_motion"),
    "render": ("Camera",),
    "cli": ("add_synth_command",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
