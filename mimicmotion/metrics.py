"""Frame-quality metrics for evaluating renders against ground truth: PSNR, SSIM and hand-region PSNR.

Plain numpy/OpenCV, no scikit-image. Inputs are videos (N, H, W, C) or single images (H, W, C) / (H, W),
uint8 or float, compared pixel for pixel at the same size; ``data_range`` is the value range (255 for
uint8, 1.0 for floats in [0, 1]). Video scores are the mean over frames of per-frame scores.

- PSNR per frame is 10 log10(data_range^2 / MSE), the MSE over all pixels and channels of the frame. Two
  identical frames give +inf, and a video mean that includes an inf frame is inf (numpy arithmetic): the
  score is infinitely good, not an error.
- SSIM follows Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  (not sample) covariances, computed per colour channel and averaged over channels, the SSIM map averaged
  over the pixels at least 5 from the border (where the window lies inside the image). This is numerically
  scikit-image's ``structural_similarity(a, b, data_range=R, channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``, the setting used by the published pose-to-video evaluations.
"""
from __future__ import annotations

import math

import numpy as np

from mimicmotion.errors import ConfigError

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image / scipy's truncation of the Gaussian at 3.5 sigma
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_video(x, name: str) -> np.ndarray:
    """(N, H, W, C) float64 from a video, a colour image (H, W, C) or a grey image (H, W)."""
    arr = np.asarray(x)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError(f"{name} must be a numeric image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        # (H, W, C) with a channel axis of 1..4; anything else is ambiguous.
        if arr.shape[-1] not in (1, 2, 3, 4):
            raise ConfigError(f"{name} has shape {arr.shape}: pass (H, W, C) images or (N, H, W, C) videos")
        arr = arr[None]
    elif arr.ndim != 4:
        raise ConfigError(f"{name} has shape {arr.shape}: pass (H, W), (H, W, C) or (N, H, W, C)")
    return arr.astype(np.float64, copy=False)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_video(a, "a"), _as_video(b, "b")
    if x.shape != y.shape:
        raise ConfigError(f"the compared videos differ in shape: {x.shape} vs {y.shape} (resize the render or the "
                          "ground truth to the same size and frame count first)")
    if x.shape[0] == 0:
        raise ConfigError("the compared videos have no frames")
    return x, y


def _check_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ConfigError(f"data_range must be a positive number (255 for uint8, 1.0 for [0,1] floats), "
                          f"got {data_range!r}")
    return float(data_range)


def _psnr_from_mse(mse: np.ndarray, data_range: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mse)


def psnr_per_frame(a, b, data_range: float = 255.0) -> np.ndarray:
    """PSNR of each frame (dB), shape (N,); +inf where the frames are identical."""
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    return _psnr_from_mse(mse, _check_range(data_range))


def psnr(a, b, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame PSNR (dB); +inf when any frame is identical to its counterpart."""
    return float(psnr_per_frame(a, b, data_range).mean())


def masked_psnr_per_frame(a, b, mask, data_range: float = 255.0) -> np.ndarray:
    """PSNR of each frame over the pixels where ``mask`` (N, H, W) or (H, W) is true (all channels of those
    pixels); NaN for a frame whose mask is empty."""
    x, y = _pair(a, b)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise ConfigError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.ndim == 2:
        m = m[None]
    if m.shape != x.shape[:3]:
        raise ConfigError(f"mask shape {np.asarray(mask).shape} does not fit the frames {x.shape[:3]} (N, H, W)")
    squared = ((x - y) ** 2).mean(axis=-1)  # per pixel, over channels
    counts = m.reshape(len(m), -1).sum(axis=1)
    sums = np.where(m, squared, 0.0).reshape(len(m), -1).sum(axis=1)
    out = np.full(len(m), np.nan)
    has = counts > 0
    out[has] = _psnr_from_mse(sums[has] / counts[has], _check_range(data_range))
    return out


def masked_psnr(a, b, mask, data_range: float = 255.0) -> float:
    """Mean PSNR over the frames whose mask is not empty (e.g. the hand regions); NaN when every mask is
    empty (nothing to score)."""
    values = masked_psnr_per_frame(a, b, mask, data_range)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def gaussian_kernel(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """Normalised 1-D Gaussian weights of length 2 * radius + 1."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    import cv2

    # The border mode does not matter: only pixels whose whole window lies inside the image are averaged.
    return cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """The SSIM map of two single-channel float64 images (H, W), same size, over the whole image (border
    values use reflected pixels; ``ssim`` averages only the interior)."""
    kernel = gaussian_kernel()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    var_x = _blur(x * x, kernel) - mu_x * mu_x
    var_y = _blur(y * y, kernel) - mu_y * mu_y
    cov = _blur(x * y, kernel) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim_per_frame(a, b, data_range: float = 255.0) -> np.ndarray:
    """SSIM of each frame, shape (N,): per channel, averaged over channels (see the module docstring)."""
    x, y = _pair(a, b)
    r = _check_range(data_range)
    side = 2 * SSIM_RADIUS + 1
    if x.shape[1] < side or x.shape[2] < side:
        raise ConfigError(f"SSIM needs frames of at least {side}x{side} pixels, got {x.shape[1]}x{x.shape[2]}")
    return np.array([np.mean([m.mean() for m in _interior_ssim_maps(x[i], y[i], r)]) for i in range(len(x))])


def _interior_ssim_maps(x: np.ndarray, y: np.ndarray, data_range: float) -> list:
    """The SSIM maps of two frames (H, W, C), one per channel, cut to the pixels at least ``SSIM_RADIUS`` from
    the border (where the window lies inside the image)."""
    h, w = x.shape[:2]
    inner = (slice(SSIM_RADIUS, h - SSIM_RADIUS), slice(SSIM_RADIUS, w - SSIM_RADIUS))
    return [ssim_map(np.ascontiguousarray(x[:, :, k]), np.ascontiguousarray(y[:, :, k]), data_range)[inner]
            for k in range(x.shape[2])]


def ssim(a, b, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame SSIM (1 for identical frames)."""
    return float(ssim_per_frame(a, b, data_range).mean())


def changed_mask(frames, reference, threshold: float = 12.0) -> np.ndarray:
    """Where each frame (N, H, W, C) differs from the reference frame (H, W, C) by more than ``threshold`` in
    some channel: bool (N, H, W). With a still camera this splits a clip into the background the reference
    already shows (False) and what moved (True)."""
    x = _as_video(frames, "frames").astype(np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim == 2:
        ref = ref[..., None]
    if ref.shape != x.shape[1:]:
        raise ConfigError(f"reference {ref.shape} does not match the frames {x.shape[1:]}")
    return np.abs(x - ref).max(axis=-1) > threshold


def region_ssim(a, b, mask, data_range: float = 255.0) -> tuple:
    """SSIM inside and outside a per-pixel mask (N, H, W): for each frame the SSIM map (per channel, averaged
    over channels, border pixels left out as ``ssim`` does) averaged over the masked pixels and over the
    others; then the mean over the frames where that region has pixels (NaN where no frame does). Returns
    (inside, outside). A mask that is all False gives ``ssim`` as the outside score."""
    x, y = _pair(a, b)
    m = np.asarray(mask, dtype=bool)
    if m.shape != x.shape[:3]:
        raise ConfigError(f"mask {m.shape} does not match the frames {x.shape[:3]}")
    r = _check_range(data_range)
    n, h, w, _ = x.shape
    inner = (slice(SSIM_RADIUS, h - SSIM_RADIUS), slice(SSIM_RADIUS, w - SSIM_RADIUS))
    inside, outside = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        smap = np.mean(_interior_ssim_maps(x[i], y[i], r), axis=0)
        region = m[i][inner]
        if region.any():
            inside[i] = smap[region].mean()
        if not region.all():
            outside[i] = smap[~region].mean()
    scores = []
    for values in (inside, outside):
        values = values[~np.isnan(values)]
        scores.append(float(values.mean()) if len(values) else float("nan"))
    return tuple(scores)


REGION_NAMES = ("far_flat", "far_textured", "near", "changed")


def region_labels(frames, reference, threshold: float = 12.0, near: int = 6, texture_std: float = 2.0) -> np.ndarray:
    """Label every pixel of every frame (N, H, W, C) by how copying the reference frame fares there: uint8
    (N, H, W) indices into ``REGION_NAMES``.

    3 *changed*: ``changed_mask``. 2 *near*: unchanged, but within ``near`` pixels (a square) of a changed pixel
    of the same frame, so the SSIM window (radius 5) there still sees what moved. Of the rest, the pixels where
    the reference's grey level (channel mean) varies, standard deviation over an 11 x 11 box of at least
    ``texture_std``, are 1 *far textured* (a patterned floor, stripes), the others 0 *far flat*. Far from the
    figure a still camera's frames equal the reference, so copying scores ~1 there; a model that decodes
    through a VAE scores its round trip of the reference.
    """
    import cv2

    changed = changed_mask(frames, reference, threshold)
    if near < 0 or not texture_std >= 0:
        raise ConfigError(f"near must be >= 0 and texture_std >= 0 (got {near}, {texture_std})")
    grey = np.asarray(reference, dtype=np.float64)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    box = (2 * SSIM_RADIUS + 1,) * 2
    textured = np.sqrt(np.maximum(cv2.blur(grey * grey, box) - cv2.blur(grey, box) ** 2, 0.0)) >= texture_std
    kernel = np.ones((2 * near + 1, 2 * near + 1), np.uint8)
    labels = np.where(textured, 1, 0).astype(np.uint8)[None].repeat(len(changed), axis=0)
    for i, mask in enumerate(changed):
        labels[i][cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)] = 2
        labels[i][mask] = 3
    return labels


def labelled_ssim_sums(a, b, labels, num_labels: int = len(REGION_NAMES),
                       data_range: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """The SSIM map (per channel, averaged over channels, border pixels left out as ``ssim`` does) summed per
    label (N, H, W) over all frames: (sums, counts), float64 arrays of length ``num_labels``. ``sums / counts``
    is each region's pixel-pooled SSIM; with frames of one size ``sums.sum() / counts.sum()`` is ``ssim(a, b)``,
    so each region's ``(sums - sums_other) / counts.sum()`` is its exact share of a difference in SSIM. Sums
    and counts of several clips add up."""
    x, y = _pair(a, b)
    lab = np.asarray(labels)
    if lab.shape != x.shape[:3]:
        raise ConfigError(f"labels {lab.shape} do not match the frames {x.shape[:3]}")
    if lab.size and (lab.min() < 0 or lab.max() >= num_labels):
        raise ConfigError(f"labels must lie in 0..{num_labels - 1} (got {lab.min()}..{lab.max()})")
    r = _check_range(data_range)
    n, h, w, _ = x.shape
    inner = (slice(SSIM_RADIUS, h - SSIM_RADIUS), slice(SSIM_RADIUS, w - SSIM_RADIUS))
    sums, counts = np.zeros(num_labels), np.zeros(num_labels)
    for i in range(n):
        smap = np.mean(_interior_ssim_maps(x[i], y[i], r), axis=0).ravel()
        region = lab[i][inner].ravel().astype(np.intp)
        sums += np.bincount(region, weights=smap, minlength=num_labels)
        counts += np.bincount(region, minlength=num_labels)
    return sums, counts


# ---------------------------------------------------------------------------------------------- Fréchet distance
def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, N - 1; as pytorch-fid and StyleGAN-V) of features (N, D), N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ConfigError(f"a Gaussian fit needs features of shape (N, D) with N >= 2 samples, got {f.shape}")
    if not np.isfinite(f).all():
        raise ConfigError("the features contain NaN or inf values (a feature network produced invalid output)")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _clean_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (|v| below d * eps * max) set to 0: their square
    roots (~1e-8) would otherwise add up to a visible error for singular covariances."""
    tolerance = len(values) * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 1e-300)
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_clean_eigenvalues(values))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace term is computed as the sum of the square roots of the eigenvalues of the symmetric PSD
    matrix sigma1^(1/2) sigma2 sigma1^(1/2) (same eigenvalues as sigma1 sigma2), which stays real and stable
    for singular covariances (fewer samples than dimensions) where scipy.linalg.sqrtm needs an epsilon."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ConfigError(f"Gaussian parameters do not match: mu {mu1.shape} / {mu2.shape}, "
                          f"sigma {s1.shape} / {s2.shape}")
    root1 = _psd_sqrt(s1)
    product = root1 @ s2 @ root1
    cross = np.sqrt(_clean_eigenvalues(np.linalg.eigvalsh((product + product.T) / 2))).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(value, 0.0)  # rounding can leave -1e-12 for identical distributions


def feature_frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (N_a, D) and (N_b, D) (FID, FVD)."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def frame_differences(video) -> np.ndarray:
    """Mean absolute difference between consecutive frames: (F-1,) for a (F, H, W[, C]) video."""
    v = np.asarray(video, np.float64)
    if v.ndim < 3 or len(v) < 2:
        raise ConfigError(f"frame differences need a video of at least 2 frames, got shape {v.shape}")
    return np.abs(np.diff(v, axis=0)).reshape(len(v) - 1, -1).mean(axis=1)


def seam_ratio(video, transitions) -> float:
    """Mean frame-to-frame difference at ``transitions`` (indices t: frame t-1 -> t) over the mean at every
    other transition; 1 = no visible seam, above 1 = jumps at those frames."""
    diffs = frame_differences(video)
    at = sorted({int(t) - 1 for t in transitions})
    if not at or at[0] < 0 or at[-1] >= len(diffs):
        raise ConfigError(f"transitions must be within 1..{len(diffs)}, got {list(transitions)}")
    mask = np.zeros(len(diffs), bool)
    mask[at] = True
    if mask.all():
        raise ConfigError("every transition is a seam transition: nothing to compare with")
    rest = diffs[~mask].mean()
    return float(diffs[mask].mean() / rest) if rest > 0 else float("inf")
