"""Error types with messages written for the person running the command.

Every error the library raises on bad *input* is a ``MimicMotionError``: the CLI prints its message
and exits with code 1 instead of showing a traceback. Each message names the input and the fix.
"""


class MimicMotionError(Exception):
    """Base class for user-facing errors (bad input, missing files, unusable data)."""


class VideoError(MimicMotionError):
    """A video file could not be probed, decoded or written (corrupt, empty, audio-only, unreadable)."""


class ModelFileError(MimicMotionError):
    """A model file (ONNX, checkpoint, base-model folder) is missing or not what was expected."""


class PoseError(MimicMotionError):
    """Pose data is unusable: no person in the reference, no usable person in any frame, bad layout."""


class ConfigError(MimicMotionError):
    """A parameter value is invalid (sizes, tile settings, guidance, ...)."""
