"""Reference-image preprocessing as the release's inference.py does it (SPEC section 4).

The output size follows the image's orientation (portrait -> 576 x 1024, landscape or square ->
1024 x 576 at resolution 576); the image is resized to cover that size (bilinear, no antialiasing) and
centre-cropped.

The release does the resize with torchvision on a uint8 tensor. torchvision is not a dependency here,
so :func:`resize_cover_crop` mirrors what torchvision 0.15 does in that case: cast to float32, run
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`` on the same
memory layout (a channels-last view of the HWC pixels, as ``pil_to_tensor`` gives), round half to even
and cast back to uint8; then crop at ``int(round((size - target) / 2.0))``, as ``center_crop`` does.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mimicmotion.errors import ConfigError

# Width / height of the release's portrait output (constants.py in the release).
ASPECT_RATIO = 9 / 16
DEFAULT_RESOLUTION = 576


def output_size(image_height: int, image_width: int, resolution: int = DEFAULT_RESOLUTION) -> tuple[int, int]:
    """(H, W) of the generated video for an image of the given size: the short side is ``resolution``
    and the long side ``int(resolution / (9/16) // 64) * 64`` (1024 for 576); portrait when the image
    is taller than wide, landscape otherwise (a square image gives landscape, as in the release)."""
    if image_height <= 0 or image_width <= 0:
        raise ConfigError(f"image size must be positive, got {image_height}x{image_width} (height x width)")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution <= 0:
        raise ConfigError(f"resolution must be a positive whole number of pixels, got {resolution!r}")
    resolution = int(resolution)
    long_side = int(resolution / ASPECT_RATIO // 64) * 64
    if long_side == 0:
        raise ConfigError(f"resolution {resolution} is too small: its long side rounds down to 0 (use >= 36)")
    if image_height > image_width:
        return long_side, resolution
    return resolution, long_side


def cover_crop_geometry(image_height: int, image_width: int, height: int, width: int):
    """((resized_h, resized_w), (top, left)): the release's resize-to-cover size (``math.ceil`` on the
    long side) and torchvision's centre-crop offsets for a ``height`` x ``width`` target."""
    if min(image_height, image_width, height, width) <= 0:
        raise ConfigError(
            f"sizes must be positive, got image {image_height}x{image_width} and target {height}x{width}"
        )
    ratio = float(image_height) / float(image_width)
    if ratio < height / width:
        resized = (height, math.ceil(height / ratio))
    else:
        resized = (math.ceil(width * ratio), width)
    top = int(round((resized[0] - height) / 2.0))
    left = int(round((resized[1] - width) / 2.0))
    return resized, (top, left)


def _resize_bilinear_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's tensor resize of a uint8 image (bilinear, antialias off), HWC in and out."""
    import torch
    import torch.nn.functional as F

    if image.shape[:2] == (height, width):
        return image  # torchvision returns the input untouched when the size already matches
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # the layout pil_to_tensor gives
    resized = F.interpolate(
        chw.unsqueeze(0).to(torch.float32), size=[height, width], mode="bilinear", align_corners=False,
        antialias=False,
    )
    # torchvision rounds before casting back to an integer type; bilinear stays within [0, 255], so the
    # clamp only guards the cast.
    resized = torch.round(resized).clamp_(0, 255).to(torch.uint8)
    return resized[0].permute(1, 2, 0).numpy()


def resize_cover_crop(image, height: int, width: int) -> np.ndarray:
    """``image`` (uint8 HWC) resized to cover ``height`` x ``width`` and centre-cropped, as the release does."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ConfigError(f"the image must be uint8 (height, width, channels), got {arr.dtype} {arr.shape}")
    (resized_h, resized_w), (top, left) = cover_crop_geometry(arr.shape[0], arr.shape[1], height, width)
    resized = _resize_bilinear_uint8(arr, resized_h, resized_w)
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def read_rgb_image(path) -> np.ndarray:
    """The image file as uint8 (H, W, 3) RGB, decoded with PIL and ``convert("RGB")`` like the release
    (EXIF orientation is not applied, as in the release)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference image not found: {path} (give the path of a PNG or JPEG file)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigError(
            f"{path} is not a readable image ({exc}): give a PNG or JPEG picture of the person to animate"
        ) from exc


def load_reference(path, resolution: int = DEFAULT_RESOLUTION):
    """Read the reference image and prepare it as the release does.

    Returns (uint8 (H, W, 3) RGB image, (H, W)), with (H, W) from :func:`output_size`.
    """
    image = read_rgb_image(path)
    size = output_size(image.shape[0], image.shape[1], resolution)
    return resize_cover_crop(image, *size), size
