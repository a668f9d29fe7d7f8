"""The training objective's pure parts (SPEC section 7): hand-region loss weights, EDM noise and
preconditioning with v-prediction, condition dropout, conditioning-image noise augmentation, and the
reference-first clip layout.

Every function is a small tensor-in, tensor-out computation: no model, no I/O. Results follow the input's
device and dtype; random draws come only from the ``torch.Generator`` the caller passes, so a step is
reproducible given its seed.

Latent layout used throughout: ``(B, F, C, h, w)`` (diffusers' SVD UNet input order), with per-sample
quantities (sigma, dropout flags) of shape ``(B,)``. The functions that combine a per-sample sigma with a
latent broadcast it over the trailing dimensions, so any layout with the batch first works.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.layout import LEFT_HAND, NUM_POINTS, RIGHT_HAND

# Hand-region defaults (SPEC 7: threshold and mask shape unverified, hence configurable).
HAND_CONFIDENCE_THRESHOLD = 0.6
HAND_MIN_FRACTION = 1.0
HAND_MARGIN = 0.2
HAND_LOSS_WEIGHT = 10.0  # the paper's amplification factor

# Noise-level distribution: log sigma ~ Normal(1.6, 0.7) (community SVD fine-tuning value; unverified).
LOG_SIGMA_MEAN = 1.6
LOG_SIGMA_STD = 0.7

# Condition dropout probability p (community SVD fine-tuning default; unverified for MimicMotion).
CONDITION_DROPOUT_P = 0.1

# Noise augmentation of the conditioning image (community SVD fine-tuning value).
CONDITION_NOISE_AUG = 0.02

_HANDS = (LEFT_HAND, RIGHT_HAND)


# --------------------------------------------------------------------------------------------------
# Hand-region mask
# --------------------------------------------------------------------------------------------------

def _hand_cell_box(points: np.ndarray, height: int, width: int, latent_height: int, latent_width: int,
                   threshold: float, min_fraction: float, margin: float) -> Optional[tuple]:
    """The latent cells ``(row0, row1, col0, col1)`` (inclusive) one hand covers, or None if unreliable.

    ``points`` is the hand's (21, 3) slice. A point is reliable when its score is above ``threshold`` and
    its coordinates are finite. The region is the reliable points' bounding box in frame pixels, grown on
    every side by ``margin`` times its longer side, and a latent cell is marked when it contains any point
    of that closed box (cell (i, j) covers the half-open pixel rectangle
    [j*W/w, (j+1)*W/w) x [i*H/h, (i+1)*H/h)).
    """
    scores = points[:, 2]
    reliable = (scores > threshold) & np.isfinite(points[:, 0]) & np.isfinite(points[:, 1])
    count = int(reliable.sum())
    if count == 0 or count < min_fraction * len(points):
        return None
    xs = points[reliable, 0] * width
    ys = points[reliable, 1] * height
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    grow = margin * max(x1 - x0, y1 - y0)
    x0, x1, y0, y1 = x0 - grow, x1 + grow, y0 - grow, y1 + grow
    cell_w = width / latent_width
    cell_h = height / latent_height
    col0, col1 = math.floor(x0 / cell_w), math.floor(x1 / cell_w)
    row0, row1 = math.floor(y0 / cell_h), math.floor(y1 / cell_h)
    if col1 < 0 or row1 < 0 or col0 >= latent_width or row0 >= latent_height:
        return None  # the whole region lies outside the frame
    return (max(row0, 0), min(row1, latent_height - 1), max(col0, 0), min(col1, latent_width - 1))


def hand_region_mask(keypoints_per_frame: Sequence, height: int, width: int, latent_height: int,
                     latent_width: int, *, threshold: float = HAND_CONFIDENCE_THRESHOLD,
                     min_fraction: float = HAND_MIN_FRACTION, margin: float = HAND_MARGIN,
                     dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Mask (F, 1, latent_height, latent_width) of the latent cells covered by reliably detected hands.

    ``keypoints_per_frame``: one array-like (P, 134, 3) per frame in the project's layout (x, y normalised
    by the frame's ``width`` and ``height``; missing points NaN with score 0); P may differ between frames
    and be 0. Every person's left and right hand (points 92..112, 113..133) is considered on its own.

    Reliability (the "confidence-aware" part): a point counts when its score is strictly above
    ``threshold`` and it has finite coordinates; a hand is used when at least ``min_fraction`` of its 21
    points count (1.0, the default, is the paper's "all keypoints above the threshold"), and its region is
    built from the reliable points only. The default threshold 0.6 is stricter than the drawing threshold
    0.3 (``VISIBLE_THRESHOLD``) because the loss is amplified 10x here: a wrong hand box would teach
    the model hands where there are none (SPEC 7 marks the value unverified).

    Region shape: the bounding box of the reliable points, grown on each side by ``margin`` x its longer
    side (in pixels, so it stays square-pixel for any aspect). A box rather than a disc per keypoint because
    the hand's pixels fill the space between the keypoints (palm, skin between joints), which discs of a
    small radius leave as holes and discs of a large radius overshoot at the fingertips; the margin covers
    the flesh beyond the outermost joints (fingertip points sit at the tip's centre, the palm edge lies
    outside the knuckle line): about a fifth of the hand's size at the default 0.2. ``margin=0`` gives the
    tight box. Rasterisation: each latent cell (the latent grid covers the frame at 1/8 resolution, so a cell
    is a W/w x H/h pixel block) is 1 when it contains any point of the box, else 0; overlapping hands and
    people simply union. The mask broadcasts over the latent channels of a (F, C, h, w) clip.
    """
    if height <= 0 or width <= 0 or latent_height <= 0 or latent_width <= 0:
        raise ConfigError(
            f"hand_region_mask needs positive frame and latent sizes (got frame {width}x{height}, latent "
            f"{latent_width}x{latent_height}); pass the training size and its latent size (size / 8)"
        )
    if not 0.0 < min_fraction <= 1.0:
        raise ConfigError(f"hand min_fraction must be in (0, 1] (got {min_fraction}); 1.0 requires every "
                          "hand keypoint to be above the threshold")
    if margin < 0:
        raise ConfigError(f"hand margin must be >= 0 (got {margin}); it is a fraction of the hand's size")
    mask = np.zeros((len(keypoints_per_frame), 1, latent_height, latent_width), dtype=np.float32)
    for f, frame in enumerate(keypoints_per_frame):
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        people = np.asarray(frame, dtype=np.float64)
        if people.ndim == 2 and people.shape == (NUM_POINTS, 3):
            people = people[None]
        if people.size == 0 and people.ndim != 3:
            people = people.reshape(0, NUM_POINTS, 3)
        if people.ndim != 3 or people.shape[1:] != (NUM_POINTS, 3):
            raise PoseError(f"pose of training frame {f} must have shape (P, {NUM_POINTS}, 3), got "
                            f"{people.shape}; convert DWPose output with pose.layout.from_coco_wholebody")
        for person in people:
            for hand in _HANDS:
                cells = _hand_cell_box(person[hand], height, width, latent_height, latent_width,
                                       threshold, min_fraction, margin)
                if cells is not None:
                    r0, r1, c0, c1 = cells
                    mask[f, 0, r0:r1 + 1, c0:c1 + 1] = 1.0
    return torch.from_numpy(mask).to(device=device, dtype=dtype)


def loss_weights(mask: torch.Tensor, hand_weight: float = HAND_LOSS_WEIGHT) -> torch.Tensor:
    """Per-element loss weights: ``hand_weight`` inside the hand mask, 1 outside (1 + (w - 1) * mask)."""
    if hand_weight <= 0:
        raise ConfigError(f"hand loss weight must be positive (got {hand_weight}); the paper uses 10")
    return 1.0 + (hand_weight - 1.0) * mask


# --------------------------------------------------------------------------------------------------
# EDM noise levels and preconditioning (v-prediction), as the SVD Euler sampler uses them
# --------------------------------------------------------------------------------------------------

def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) per-sample tensor to (B, 1, ..., 1) to broadcast against ``like``; others pass."""
    values = torch.as_tensor(values, device=like.device)
    if values.ndim == 1 and like.ndim > 1:
        if values.shape[0] != like.shape[0]:
            raise ConfigError(f"got {values.shape[0]} per-sample noise levels for a batch of {like.shape[0]}")
        return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))
    return values


def sample_sigmas(batch: int, generator: Optional[torch.Generator] = None, *,
                  log_mean: float = LOG_SIGMA_MEAN, log_std: float = LOG_SIGMA_STD,
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-sample noise levels (B,): sigma = exp(log_mean + log_std * N(0, 1)).

    Defaults 1.6 / 0.7 are the community SVD fine-tuning values (SPEC 7, unverified): the median sigma is
    e^1.6 ~ 5, the bulk spans ~1.2 .. 20, i.e. the high-noise half of SVD's 0.002 .. 700 sampling range,
    where an image-to-video model's motion is decided. ``device`` defaults to the generator's.
    """
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1 (got {batch})")
    if log_std < 0:
        raise ConfigError(f"log-sigma std must be >= 0 (got {log_std})")
    if device is None and generator is not None:
        device = generator.device
    normal = torch.randn((batch,), generator=generator, device=device, dtype=dtype)
    return torch.exp(log_mean + log_std * normal)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The EDM forward process: latents + sigma * noise (sigma per sample, broadcast)."""
    return latents + _per_sample(sigma, latents) * noise


def edm_preconditioning(sigma: torch.Tensor) -> tuple:
    """(c_in, c_skip, c_out, c_noise) for v-prediction with unit data std, each shaped like ``sigma``.

    c_in = 1/sqrt(sigma^2+1) scales the UNet input, c_noise = ln(sigma)/4 is the timestep it sees, and
    x0 = c_out * output + c_skip * noisy with c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1):
    exactly the arithmetic of diffusers' EulerDiscreteScheduler (v_prediction, continuous timesteps) that
    renders with SVD, so training and sampling agree.
    """
    sigma = torch.as_tensor(sigma)
    var = sigma * sigma + 1.0
    c_in = torch.rsqrt(var)
    c_skip = 1.0 / var
    c_out = -sigma * c_in
    c_noise = 0.25 * torch.log(sigma)
    return c_in, c_skip, c_out, c_noise


def unet_input(noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noisy latents as the UNet takes them: c_in * noisy."""
    c_in, _, _, _ = edm_preconditioning(_per_sample(sigma, noisy))
    return c_in * noisy


def denoised(unet_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The model's estimate of the clean latents: c_out * unet_output + c_skip * noisy."""
    _, c_skip, c_out, _ = edm_preconditioning(_per_sample(sigma, noisy))
    return c_out * unet_output + c_skip * noisy


def loss_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + 1) / sigma^2 (1 / c_out^2): equalises the loss across noise levels."""
    sigma = torch.as_tensor(sigma)
    return (sigma * sigma + 1.0) / (sigma * sigma)


def diffusion_loss(x0_pred: torch.Tensor, latents: torch.Tensor, sigma: torch.Tensor,
                   region_weights: Optional[torch.Tensor] = None) -> tuple:
    """(loss, hand_loss) for a batch: loss = mean(lambda(sigma) * region_weights * (x0_pred - latents)^2).

    ``x0_pred`` and ``latents``: (B, F, C, h, w) (any layout with the batch first); ``sigma``: (B,);
    ``region_weights``: broadcastable to the latents, e.g. (B, F, 1, h, w) from ``loss_weights``, or None
    for plain weights. The mean runs over every latent element, so the hand factor raises the hand cells'
    share of the loss without changing its scale elsewhere.

    ``hand_loss`` is for logging and carries no gradient: the mean of lambda(sigma) * (x0_pred - latents)^2
    over the elements inside the hand region (where region_weights > 1), without the amplification, so it
    reads on the same scale as an unweighted loss. With no hand in the batch it is NaN ("not measured",
    log it with a NaN-skipping mean); it is computed without dividing by zero and never touches ``loss``.
    """
    if x0_pred.shape != latents.shape:
        raise ConfigError(f"predicted latents {tuple(x0_pred.shape)} and target latents "
                          f"{tuple(latents.shape)} must have the same shape")
    weighted_sq = _per_sample(loss_weighting(sigma), latents) * (x0_pred - latents) ** 2
    if region_weights is None:
        return weighted_sq.mean(), torch.full((), float("nan"), dtype=weighted_sq.dtype,
                                              device=weighted_sq.device)
    loss = (weighted_sq * region_weights).mean()
    with torch.no_grad():
        hand = torch.broadcast_to(region_weights > 1, weighted_sq.shape)
        count = hand.sum()
        hand_sum = torch.where(hand, weighted_sq.detach(), torch.zeros_like(weighted_sq)).sum()
        hand_loss = torch.where(count > 0, hand_sum / count.clamp(min=1),
                                torch.full_like(hand_sum, float("nan")))
    return loss, hand_loss


# --------------------------------------------------------------------------------------------------
# Conditioning: dropout for classifier-free guidance, noise augmentation, reference-first clip
# --------------------------------------------------------------------------------------------------

def condition_dropout_masks(batch: int, p: float = CONDITION_DROPOUT_P,
                            generator: Optional[torch.Generator] = None, *,
                            r: Optional[torch.Tensor] = None, device=None) -> tuple:
    """(drop_clip, drop_image), two bool tensors (B,): which samples lose which condition.

    InstructPix2Pix-style with one probability p and r ~ U(0, 1) per sample: the CLIP embedding is
    dropped when r < 2p, the image latent when p <= r < 3p, so with probability p each only the CLIP
    embedding, both, or only the image latent is dropped, and 1 - 3p keeps both. This trains the
    unconditional branch the sampler uses for guidance (zero CLIP embedding, zero image latent; SPEC 6).
    Pose guidance is never dropped here: the sampler's unconditional branch omits the pose, which the
    caller implements by skipping PoseNet for samples with both flags (a choice for the training loop).

    Default p = 0.1 follows the community SVD fine-tuning code (20% CLIP, 20% image, 10% both); SPEC 7
    marks the rate unverified for MimicMotion. ``r`` may be passed (B,) to fix the draws (tests); else it
    comes from ``generator``.
    """
    if not 0.0 <= p <= 1.0 / 3.0:
        raise ConfigError(f"condition dropout probability must be in [0, 1/3] (got {p}); the image "
                          "latent is dropped for r in [p, 3p), which must fit in [0, 1)")
    if r is None:
        if batch < 1:
            raise ConfigError(f"batch size must be >= 1 (got {batch})")
        if device is None and generator is not None:
            device = generator.device
        r = torch.rand((batch,), generator=generator, device=device)
    else:
        r = torch.as_tensor(r)
        if r.shape != (batch,):
            raise ConfigError(f"condition dropout draws r must have shape ({batch},), got {tuple(r.shape)}")
    drop_clip = r < 2 * p
    drop_image = (r >= p) & (r < 3 * p)
    return drop_clip, drop_image


def apply_condition_dropout(clip_embeds: torch.Tensor, image_latents: torch.Tensor,
                            drop_clip: torch.Tensor, drop_image: torch.Tensor) -> tuple:
    """Zero the dropped samples' CLIP embeddings (B, ...) and image latents (B, ...); others unchanged."""
    keep_clip = ~_per_sample(drop_clip.to(clip_embeds.device), clip_embeds)
    keep_image = ~_per_sample(drop_image.to(image_latents.device), image_latents)
    # where, not multiply: a zeroed condition is exactly zero even if the input held inf/NaN.
    return (torch.where(keep_clip, clip_embeds, torch.zeros_like(clip_embeds)),
            torch.where(keep_image, image_latents, torch.zeros_like(image_latents)))


def augment_condition(image: torch.Tensor, strength: float = CONDITION_NOISE_AUG,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The conditioning image plus ``strength`` * N(0, 1) noise, drawn from ``generator``.

    SVD is conditioned on a slightly noisy first frame so that it does not copy it pixel for pixel; the
    same ``strength`` must go into added_time_ids (their third entry). The community SVD fine-tuning code
    uses 0.02. The sampler adds its noise to the [-1, 1] image before VAE encoding (SPEC 6); this function
    works the same on an image or a latent, so the training loop picks the space (the release's is pixels).
    """
    if strength < 0:
        raise ConfigError(f"noise augmentation strength must be >= 0 (got {strength})")
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return image + strength * noise


def assemble_clip(reference_frame: torch.Tensor, clip_frames: torch.Tensor) -> torch.Tensor:
    """The training clip with the reference at position 0: (*batch, 1 + F, C, H, W).

    ``reference_frame``: (*batch, C, H, W); ``clip_frames``: (*batch, F, C, H, W), same dtype and device.
    Matches inference, where every tile holds the reference frame at position 0 (SPEC 6/7); works for
    pixels, latents and pose images alike.
    """
    if clip_frames.ndim < 4 or reference_frame.ndim != clip_frames.ndim - 1 or \
            reference_frame.shape[:-3] != clip_frames.shape[:-4] or \
            reference_frame.shape[-3:] != clip_frames.shape[-3:]:
        raise ConfigError(f"reference frame {tuple(reference_frame.shape)} does not fit clip "
                          f"{tuple(clip_frames.shape)}: expected reference (*batch, C, H, W) and clip "
                          "(*batch, F, C, H, W) of the same size")
    return torch.cat([reference_frame.unsqueeze(-4), clip_frames], dim=-4)
