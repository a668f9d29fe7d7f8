"""Pose extraction over whole videos and images: decode -> pose estimator -> PoseSequence (I/O at the edges)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mimicmotion.errors import MimicMotionError
from mimicmotion.pose.io import PoseSequence

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def is_image_path(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image_rgb(path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); MimicMotionError naming the file on failure."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MimicMotionError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MimicMotionError(f"{path} is not a readable image ({exc}): pass a PNG or JPEG file") from exc


def extract_video_poses(path, estimator, sample_stride: int = 2, batch_size: int = 16,
                        progress: bool = True) -> PoseSequence:
    """Detect poses on the frames the release samples (stride = sample_stride * max(1, int(fps/24)))."""
    from tqdm.auto import tqdm

    from mimicmotion.video import effective_stride, iter_frames, probe, sample_indices

    info = probe(path)
    indices = sample_indices(info.num_frames, info.fps, sample_stride)
    stride = effective_stride(info.fps, sample_stride)
    frames = []
    desc = f"{getattr(estimator, 'name', 'poses')} {Path(path).name}"
    with tqdm(total=len(indices), desc=desc, unit="frame", disable=not progress) as bar:
        for batch in iter_frames(path, indices, batch_size=batch_size):
            frames.extend(estimator.estimate_batch(list(batch)))
            bar.update(len(batch))
    return PoseSequence(frames=frames, width=info.width, height=info.height, fps=info.fps / stride,
                        source=str(Path(path).resolve()), source_frames=list(indices), sample_stride=stride)


def extract_image_pose(image_rgb: np.ndarray, estimator, source: str = "") -> PoseSequence:
    """A one-frame PoseSequence for a still image (e.g. the reference)."""
    h, w = image_rgb.shape[:2]
    return PoseSequence(frames=[estimator(image_rgb)], width=w, height=h, fps=0.0, source=source,
                        source_frames=[0], sample_stride=1)
