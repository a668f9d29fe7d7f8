"""MimicMotion's networks: PoseNet and the pose-conditioned SVD UNet (SPEC section 5).

Imported lazily so ``import mimicmotion.models`` does not pull in diffusers until a class is used.
"""

_LAZY = {
    "PoseNet": "mimicmotion.models.pose_net",
    "PoseConditionedUNet": "mimicmotion.models.unet",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimicmotion.models' has no attribute {name!r}")


__all__ = list(_LAZY)
