"""Review material for a render: a side-by-side preview (reference | pose | output) and a thumbnail strip."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from mimicmotion.errors import ConfigError


def _check_frames(name: str, frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ConfigError(f"{name} must be a uint8 (N, H, W, 3) array, got "
                          f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")


def side_by_side_frames(reference: np.ndarray, pose_images: np.ndarray, output: np.ndarray) -> Iterator[np.ndarray]:
    """Yield (H, 3W, 3) frames: the reference (every frame), the k-th pose image, the k-th output frame.
    ``pose_images`` and ``output`` must have the same frame count and size as the reference."""
    if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[-1] != 3:
        raise ConfigError(f"reference must be a uint8 (H, W, 3) image, got {reference.dtype} {reference.shape}")
    _check_frames("pose_images", pose_images)
    _check_frames("output", output)
    if len(pose_images) != len(output):
        raise ConfigError(f"{len(pose_images)} pose images for {len(output)} output frames: pass the pose images "
                          "without the reference pose (pose_images[1:])")
    if pose_images.shape[1:] != reference.shape or output.shape[1:] != reference.shape:
        raise ConfigError(f"preview panels differ in size: reference {reference.shape}, pose "
                          f"{pose_images.shape[1:]}, output {output.shape[1:]}")
    for pose, frame in zip(pose_images, output):
        yield np.concatenate([reference, pose, frame], axis=1)


def strip_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame (all frames if fewer)."""
    if num_frames < 1:
        raise ConfigError("a thumbnail strip needs at least one frame")
    if count < 1:
        raise ConfigError(f"thumbnail count must be >= 1 (got {count})")
    if num_frames <= count:
        return list(range(num_frames))
    if count == 1:
        return [0]
    return [round(k * (num_frames - 1) / (count - 1)) for k in range(count)]


def thumbnail_strip(frames: np.ndarray, count: int = 8, height: int = 128) -> np.ndarray:
    """One uint8 image with ``count`` evenly spaced frames side by side, each resized to ``height``
    (aspect kept, width rounded)."""
    from PIL import Image

    _check_frames("frames", frames)
    if height < 1:
        raise ConfigError(f"thumbnail height must be >= 1 (got {height})")
    h, w = frames.shape[1:3]
    width = max(1, round(w * height / h))
    thumbs = [np.asarray(Image.fromarray(frames[i]).resize((width, height), Image.BILINEAR))
              for i in strip_indices(len(frames), count)]
    return np.concatenate(thumbs, axis=1)
