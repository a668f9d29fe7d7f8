"""The MimicMotion training loop (SPEC section 7): frozen VAE + CLIP, trainable UNet + PoseNet, EDM
v-prediction with the hand-region loss, resumable checkpoints, metrics, validation renders.

Layers, from pure to I/O:

- :class:`TrainConfig`: every knob, checked by ``validate()`` (one ConfigError per bad field).
- :func:`load_components` / :func:`prepare_modules`: the pipeline's components (from an SVD base folder and
  an optional MimicMotion checkpoint, or ``mimicmotion.tiny``) made ready for training: frozen encoders in
  the mixed-precision dtype, trainable weights in float32, the rest frozen.
- :func:`training_step`: one batch -> loss (with its graph). The conditioning is computed exactly as the
  sampler computes it (``MimicMotionPipeline``): CLIP embedding of the reference, VAE mode of the
  noise-augmented reference (not scaled) repeated over the frames, added-time ids [fps - 1, motion bucket,
  noise augmentation], PoseNet features added at ``conv_in``. Every random draw comes from the generator
  passed in, in a fixed order, so a step is reproducible.
- :class:`Trainer`: optimizer (AdamW or 8-bit AdamW), linear warm-up, gradient clipping, optional EMA,
  autocast and loss scaling; its state goes into the checkpoint.
- :func:`save_training_checkpoint` / :func:`latest_checkpoint` / :func:`load_train_state`: one folder per
  step, written atomically; ``train_state.pt`` loads with ``torch.load(weights_only=True)``.
- :func:`train`: the loop for one process (rank) of a run, in-process or inside a Ray Train worker (the
  caller initialises ``torch.distributed``; the trainable modules are then wrapped in DDP). A rerun in the
  same run folder resumes from its latest checkpoint and continues exactly as the uninterrupted run would
  (same weights and losses on CPU float32).

No Ray or Prefect here (flows/train.py and tasks/train.py drive this module).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.models.pose_net import vae_downscale
from mimicmotion.training import objective

log = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("all", "pose_temporal")
MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")
OPTIMIZER_CHOICES = ("adamw", "adamw8bit")
REFERENCE_CHOICES = ("random", "first")

# The UNet's temporal layers (diffusers' spatio-temporal blocks): temporal transformer blocks with their
# frame-position embedding, temporal resnets, and the learned spatial/temporal mixing factors.
TEMPORAL_PARAMETER = re.compile(r"(^|\.)(temporal_transformer_blocks|temporal_res_block|time_pos_embed|time_mixer)\.")

CHECKPOINT_PREFIX = "ckpt-"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{6,})$")
MODEL_FILE = "model.safetensors"  # what load_pipeline reads: EMA weights when EMA is on
RAW_MODEL_FILE = "model_raw.safetensors"  # the optimised (non-EMA) weights, only when EMA is on
STATE_FILE = "train_state.pt"
LATENT_CACHE_DIR = "latent_cache"  # persisted VAE posteriors (persist_latent_cache)
LATENT_CACHE_FORMAT = "2"  # 2: validity per clip (fingerprints) and per VAE encoder; 1 was per dataset and VAE
UNKNOWN_CLIP = "unknown"  # the fingerprint of a clip whose dataset cannot fingerprint it
STATE_FORMAT = 1
METRICS_FILE = "metrics.csv"
VALIDATION_FILE = "validation.csv"
LOSS_CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "config.json"
METRIC_COLUMNS = ("step", "epoch", "loss", "hand_loss", "lr", "grad_norm", "samples_per_s", "step_time_s",
                  "data_time_s", "max_memory_mb", "max_rss_mb", "wall_time")
VALIDATION_COLUMNS = ("step", "psnr", "ssim", "video")

# Settings a resumed run may change (they do not alter what a step computes); anything else must match.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_steps",
                     "validation_fps", "log_every", "data_workers", "latent_cache_frames",
                     "persist_latent_cache", "latent_cache_from")


# ================================================================================================ config
@dataclass
class TrainConfig:
    """Training settings. Sizes are per sample: ``num_frames`` clip frames plus the reference at position 0,
    so the UNet sees ``1 + num_frames`` frames of ``height`` x ``width``. ``batch_size`` is per worker."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-5
    warmup_steps: int = 500
    # Optimiser steps at the end of ``steps`` over which the lr falls linearly towards 0 (a warm-up, stable,
    # decay schedule); 0 = constant after the warm-up, as released. Counted from the current ``steps``: a run
    # resumed with more steps starts its decay later.
    decay_steps: int = 0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: Optional[float] = 1.0  # max global gradient norm; None = no clipping
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (fp16 needs CUDA; uses loss scaling)
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (bitsandbytes)
    trainable: str = "all"  # "all" = UNet + PoseNet; "pose_temporal" = PoseNet + the UNet's temporal layers
    ema_decay: Optional[float] = None  # None = no EMA
    log_sigma_mean: float = objective.LOG_SIGMA_MEAN
    log_sigma_std: float = objective.LOG_SIGMA_STD
    condition_dropout: float = objective.CONDITION_DROPOUT_P
    noise_aug: float = objective.CONDITION_NOISE_AUG
    hand_weight: float = objective.HAND_LOSS_WEIGHT
    hand_threshold: float = objective.HAND_CONFIDENCE_THRESHOLD
    hand_margin: float = objective.HAND_MARGIN
    num_frames: int = 16
    height: int = 1024
    width: int = 576
    reference: str = "random"  # reference frame: any frame of the video ("random") or the window's first
    fps: int = 7  # added-time id fps - 1, as the sampler feeds it (the release renders with fps=7)
    motion_bucket_id: int = 127
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: Optional[int] = 3  # newest checkpoints kept; None = keep all
    validate_every: int = 0  # 0 = no validation renders
    validation_steps: int = 8  # denoising steps of a validation render
    validation_fps: float = 12.0
    log_every: int = 1
    data_workers: int = 0  # DataLoader worker processes per rank
    vae_encode_chunk: int = 8  # frames per VAE encoder call
    # Frames whose VAE posterior (mean, std) each rank keeps, keyed by clip and source frame: the VAE is
    # frozen, so a revisited frame is not encoded again; the posterior sample is drawn as without the cache.
    # 0 = encode every step. Memory: 2 x 4 x (H/f) x (W/f) x 4 bytes per frame for a VAE downsampling by f
    # (SVD's 8: 1.2 MB at 1024x576).
    latent_cache_frames: int = 0
    # Also keep the cached posteriors on disk (``<run>/latent_cache/``): each rank writes the frames it encoded
    # since the last checkpoint at each checkpoint, and a resumed run (every rank) starts with all of them, so
    # a restart does not encode the dataset again. Valid only for the same VAE encoder and frames (checked).
    persist_latent_cache: bool = False
    # More folders of persisted posteriors to start from, read only: e.g. an earlier run's ``latent_cache`` when
    # this run trains on with the same VAE encoder on more clips. Their frames of this run's clips are used
    # where the clip's fingerprint (video, crop, training size) is the same; nothing else is read.
    latent_cache_from: tuple = ()

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first bad field and what it accepts; returns self."""
        def integer(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low or \
                    (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")

        def number(name, low=None, high=None, *, low_open=False, optional=False, hint=""):
            value = getattr(self, name)
            if value is None and optional:
                return
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
            if ok and low is not None:
                ok = value > low if low_open else value >= low
            if ok and high is not None:
                ok = value <= high
            if not ok:
                rng = ("> " if low_open else ">= ") + str(low) if high is None else f"in [{low}, {high}]"
                raise ConfigError(f"{name} must be a finite number {rng}{' or None' if optional else ''}, got "
                                  f"{value!r}{hint}")

        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")

        integer("steps", 1)
        integer("batch_size", 1)
        number("lr", 0.0, low_open=True, hint="; the paper uses 1e-5")
        integer("warmup_steps", 0)
        integer("decay_steps", 0, self.steps)
        number("weight_decay", 0.0)
        number("adam_beta1", 0.0, 1.0)
        number("adam_beta2", 0.0, 1.0)
        number("adam_eps", 0.0, low_open=True)
        number("grad_clip", 0.0, low_open=True, optional=True, hint="; None turns clipping off")
        choice("mixed_precision", MIXED_PRECISION_CHOICES)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        choice("optimizer", OPTIMIZER_CHOICES)
        choice("trainable", TRAINABLE_CHOICES)
        if self.ema_decay is not None:
            number("ema_decay", 0.0, 1.0, hint="; e.g. 0.9999, or None for no EMA")
            if not 0.0 < self.ema_decay < 1.0:
                raise ConfigError(f"ema_decay must be strictly between 0 and 1 (e.g. 0.9999) or None, got "
                                  f"{self.ema_decay!r}")
        number("log_sigma_mean")
        number("log_sigma_std", 0.0)
        number("condition_dropout", 0.0, 1.0 / 3.0, hint="; the image latent is dropped for r in [p, 3p)")
        number("noise_aug", 0.0)
        number("hand_weight", 0.0, low_open=True, hint="; the paper uses 10, 1 turns the amplification off")
        number("hand_threshold", 0.0, 1.0)
        number("hand_margin", 0.0)
        integer("num_frames", 1)
        integer("height", 8)
        integer("width", 8)
        for name in ("height", "width"):
            if getattr(self, name) % 8:
                raise ConfigError(f"{name} must be a multiple of 8 (the VAE's downsampling; the SVD UNet needs 64), "
                                  f"got {getattr(self, name)}")
        choice("reference", REFERENCE_CHOICES)
        integer("fps", 1)
        integer("motion_bucket_id", 0)
        integer("seed", 0)
        integer("checkpoint_every", 1)
        if self.keep_checkpoints is not None:
            integer("keep_checkpoints", 1)
        integer("validate_every", 0)
        integer("validation_steps", 1)
        number("validation_fps", 0.0, low_open=True)
        integer("log_every", 1)
        integer("data_workers", 0)
        integer("vae_encode_chunk", 1)
        integer("latent_cache_frames", 0)
        if not isinstance(self.persist_latent_cache, bool):
            raise ConfigError(f"persist_latent_cache must be true or false, got {self.persist_latent_cache!r}")
        if self.persist_latent_cache and not self.latent_cache_frames:
            raise ConfigError("persist_latent_cache needs the in-memory cache: set latent_cache_frames > 0 (e.g. the "
                              "number of distinct frames the clips and their references cover)")
        if isinstance(self.latent_cache_from, (str, bytes)) or not isinstance(self.latent_cache_from, (list, tuple)):
            raise ConfigError(f"latent_cache_from must be a list of folders, got {self.latent_cache_from!r}")
        for folder in self.latent_cache_from:
            if not isinstance(folder, str) or not Path(folder).is_dir():
                raise ConfigError(f"latent_cache_from: {folder!r} is not a folder; give the latent_cache folder of an "
                                  f"earlier run (<run>/{LATENT_CACHE_DIR})")
        if self.latent_cache_from and not self.latent_cache_frames:
            raise ConfigError("latent_cache_from needs the in-memory cache: set latent_cache_frames > 0")
        self.latent_cache_from = tuple(self.latent_cache_from)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a mapping (e.g. JSON or CLI options); unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**values)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision]


def config_differences(saved: dict, current: TrainConfig) -> list[str]:
    """Settings that differ between a checkpoint's config and ``current``, except those a resume may change."""
    now = current.to_dict()
    # a setting added after the checkpoint was written is compared as its default (what that run used)
    default = TrainConfig().to_dict()
    return [f"{k}: checkpoint {saved.get(k, default[k])!r}, now {now[k]!r}" for k in sorted(now)
            if k not in RESUMABLE_CHANGES and saved.get(k, default[k]) != now[k]]


def lr_factor(step: int, warmup_steps: int, total_steps: int = 0, decay_steps: int = 0) -> float:
    """Learning-rate multiplier of optimiser step ``step`` (0-based): (step + 1) / warmup_steps during the
    warm-up, then 1 (the paper: lr 1e-5 with 500 warm-up steps, constant after). With ``decay_steps`` the
    last ``decay_steps`` of ``total_steps`` fall linearly: (total_steps - step) / decay_steps, so the final
    step runs at 1 / decay_steps; where warm-up and decay overlap the smaller factor holds."""
    factor = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if decay_steps > 0:
        factor = min(factor, max(0.0, (total_steps - step) / decay_steps))
    return factor


def rank_seed(seed: int, rank: int) -> int:
    """A well-mixed 63-bit seed for this rank's random streams (different per rank, fixed per seed)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ================================================================================================ modules
def load_components(base_model_dir, init_checkpoint=None) -> dict:
    """The six pipeline components on the CPU in float32, ready for :func:`prepare_modules`.

    With ``init_checkpoint`` (a MimicMotion checkpoint, or any with ``unet.*`` keys): everything as
    ``load_pipeline`` builds it; a checkpoint with no ``pose_net.*`` keys gets a fresh PoseNet (zero output
    at start). Without: the UNet from the base folder's own weights (SVD) and a fresh PoseNet, the paper's
    initialisation. Fresh PoseNet weights come from torch's global RNG: seed it first.
    """
    from mimicmotion.loading import check_base_model_dir, load_pipeline

    base = check_base_model_dir(base_model_dir)
    if init_checkpoint is not None:
        pipe = load_pipeline(base, init_checkpoint, strict=False)
        missing = pipe.load_report.missing_keys
        missing_unet = [k for k in missing if k.startswith("unet.")]
        missing_pose = [k for k in missing if k.startswith("pose_net.")]
        if missing_unet:
            raise ModelFileError(f"initial checkpoint {init_checkpoint} lacks {len(missing_unet)} UNet weights (e.g. "
                                 f"{missing_unet[0]}); pass a MimicMotion checkpoint, or none to start from the SVD "
                                 "UNet of the base folder")
        n_pose = len(list(pipe.pose_net.state_dict()))
        if missing_pose and len(missing_pose) != n_pose:
            raise ModelFileError(f"initial checkpoint {init_checkpoint} holds only part of the PoseNet (missing "
                                 f"{', '.join(missing_pose[:4])}); it is damaged or of another model")
        if missing_pose:
            log.info("initial checkpoint %s has no PoseNet: starting from a fresh one", init_checkpoint)
        return dict(vae=pipe.vae, image_encoder=pipe.image_encoder, unet=pipe.unet, scheduler=pipe.scheduler,
                    feature_extractor=pipe.feature_extractor, pose_net=pipe.pose_net)
    return _components_from_base(base)


def _components_from_base(base: Path) -> dict:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionModelWithProjection

    from mimicmotion.loading import BASE_MODEL_HINT, clip_image_processor_class, weights_variant
    from mimicmotion.models.pose_net import PoseNet
    from mimicmotion.models.unet import PoseConditionedUNet

    def load(what, folder, loader):
        try:
            return loader()
        except ModelFileError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"could not load the {what} from {folder} ({type(exc).__name__}: {exc}); "
                                 f"{BASE_MODEL_HINT}") from exc

    unet_dir, vae_dir, clip_dir = base / "unet", base / "vae", base / "image_encoder"
    try:
        unet_variant = weights_variant(unet_dir, ("diffusion_pytorch_model",))
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}. Training without --checkpoint starts from the base folder's UNet weights; "
                             "pass a MimicMotion checkpoint to start from it instead") from exc
    unet = load("UNet", unet_dir, lambda: PoseConditionedUNet.from_pretrained(
        unet_dir, variant=unet_variant, torch_dtype=torch.float32, local_files_only=True))
    vae = load("VAE", vae_dir, lambda: AutoencoderKLTemporalDecoder.from_pretrained(
        vae_dir, variant=weights_variant(vae_dir, ("diffusion_pytorch_model",)), torch_dtype=torch.float32,
        local_files_only=True))
    pose_net = PoseNet(noise_latent_channels=unet.config.block_out_channels[0], downscale=vae_downscale(vae.config))
    image_encoder = load("image encoder", clip_dir, lambda: CLIPVisionModelWithProjection.from_pretrained(
        clip_dir, variant=weights_variant(clip_dir, ("model", "pytorch_model")), local_files_only=True))
    scheduler = load("scheduler", base / "scheduler", lambda: EulerDiscreteScheduler.from_pretrained(
        base / "scheduler", local_files_only=True))
    feature_extractor = load("feature extractor", base / "feature_extractor",
                             lambda: clip_image_processor_class().from_pretrained(base / "feature_extractor",
                                                                                  local_files_only=True))
    return dict(vae=vae.float().eval(), image_encoder=image_encoder.float().eval(), unet=unet.float().eval(),
                scheduler=scheduler, feature_extractor=feature_extractor, pose_net=pose_net.float().eval())


class Denoiser(nn.Module):
    """The trainable part as one module (what DDP wraps): PoseNet features added at the UNet's conv_in.

    ``pose_keep`` (B,) bool: samples with False get zero pose features, which is exactly the sampler's
    unconditional branch (zero CLIP embedding, zero image latent, no pose). Zeroing rather than skipping
    PoseNet keeps every parameter in the graph, as DDP requires; those samples add zero gradient."""

    def __init__(self, unet: nn.Module, pose_net: nn.Module):
        super().__init__()
        self.unet = unet
        self.pose_net = pose_net

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, pose_images, pose_keep):
        batch, frames = sample.shape[:2]
        pose = self.pose_net(pose_images.flatten(0, 1))
        keep = pose_keep.to(pose.device).repeat_interleave(frames).view(-1, 1, 1, 1)
        pose = torch.where(keep, pose, torch.zeros_like(pose))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_time_ids=added_time_ids, pose_latents=pose, return_dict=False)[0]


@dataclass
class TrainModules:
    """Components ready for training. ``denoiser`` is what the loss runs (a DDP wrapper in multi-process
    runs); ``unet`` / ``pose_net`` are the plain modules (for checkpoints and validation)."""

    vae: nn.Module
    image_encoder: nn.Module
    feature_extractor: object
    scheduler: object
    unet: nn.Module
    pose_net: nn.Module
    denoiser: nn.Module
    device: torch.device
    frozen_dtype: torch.dtype
    latent_cache: Optional["LatentCache"] = None

    def trainable_named_parameters(self) -> list:
        """(qualified name, parameter) of every trainable weight, in a fixed order (unet.*, pose_net.*)."""
        named = [(f"unet.{n}", p) for n, p in self.unet.named_parameters()]
        named += [(f"pose_net.{n}", p) for n, p in self.pose_net.named_parameters()]
        return [(n, p) for n, p in named if p.requires_grad]

    def pipeline(self):
        """A MimicMotionPipeline over these modules (shares the weights; for validation renders)."""
        from mimicmotion.pipeline import MimicMotionPipeline

        pipe = MimicMotionPipeline(vae=self.vae, image_encoder=self.image_encoder, unet=self.unet,
                                   scheduler=self.scheduler, feature_extractor=self.feature_extractor,
                                   pose_net=self.pose_net)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def is_temporal_parameter(name: str) -> bool:
    """Whether a UNet parameter name (without the ``unet.`` prefix) belongs to a temporal layer."""
    return TEMPORAL_PARAMETER.search(name) is not None


def prepare_modules(components: dict, config: TrainConfig, device=None) -> TrainModules:
    """Move the components to ``device``, freeze what ``config.trainable`` leaves out, keep the trainable
    modules in float32 (autocast does the mixed precision) and the frozen encoders in the autocast dtype
    (the VAE stays float32 under fp16 when its config asks for upcasting, as SVD's does)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("mixed_precision fp16 needs a CUDA device; use bf16 (or no) on a CPU")
    frozen_dtype = config.autocast_dtype or torch.float32
    vae_dtype = frozen_dtype
    if frozen_dtype == torch.float16 and getattr(components["vae"].config, "force_upcast", False):
        vae_dtype = torch.float32
    vae = torch.nn.Module.to(components["vae"], device=device, dtype=vae_dtype).eval().requires_grad_(False)
    image_encoder = components["image_encoder"].to(device=device, dtype=frozen_dtype).eval().requires_grad_(False)
    unet = torch.nn.Module.to(components["unet"], device=device, dtype=torch.float32)
    pose_net = components["pose_net"].to(device=device, dtype=torch.float32)
    pose_net.requires_grad_(True)
    if config.trainable == "all":
        unet.requires_grad_(True)
    else:
        for name, param in unet.named_parameters():
            param.requires_grad_(is_temporal_parameter(name))
        if not any(p.requires_grad for p in unet.parameters()):
            raise ConfigError("trainable='pose_temporal' found no temporal layers in this UNet: it is not an SVD "
                              "spatio-temporal UNet; use trainable='all'")
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    pose_net.train()
    multiple = vae_downscale(vae.config) * 2 ** (len(unet.config.block_out_channels) - 1)
    if config.height % multiple or config.width % multiple:
        raise ConfigError(f"height and width must be multiples of {multiple} for this UNet (got "
                          f"{config.width}x{config.height}); e.g. 576x1024")
    if unet.config.addition_time_embed_dim * 3 != unet.add_embedding.linear_1.in_features:
        raise ConfigError("the UNet's added-time embedding does not take 3 values (fps, motion bucket, noise "
                          "augmentation); it is not an SVD img2vid UNet")
    return TrainModules(vae=vae, image_encoder=image_encoder, feature_extractor=components["feature_extractor"],
                        scheduler=components["scheduler"], unet=unet, pose_net=pose_net,
                        denoiser=Denoiser(unet, pose_net), device=device, frozen_dtype=frozen_dtype,
                        latent_cache=LatentCache(config.latent_cache_frames) if config.latent_cache_frames else None)


def wrap_distributed(modules: TrainModules) -> TrainModules:
    """Wrap the denoiser in DistributedDataParallel (process group already initialised): gradients are
    averaged over the ranks in backward, and rank 0's weights are broadcast at construction."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [modules.device.index] if modules.device.type == "cuda" else None
    modules.denoiser = DistributedDataParallel(modules.denoiser, device_ids=ids)
    return modules


# ================================================================================================ the step
@torch.no_grad()
def clip_embeddings(image_encoder, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings (B, 1, D) of images (B, 3, H, W) in [-1, 1]: the sampler's ``encode_clip``
    on a batch of tensors (antialiased resize to 224, back to [0, 1], CLIP normalisation)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    pixels = _resize_with_antialiasing(images.float(), (224, 224))
    pixels = (pixels + 1.0) / 2.0
    mean = torch.tensor(feature_extractor.image_mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(image_encoder.dtype)
    return image_encoder(pixels).image_embeds.unsqueeze(1)


@torch.no_grad()
def condition_latents(vae, images: torch.Tensor, noise_aug: float, generator) -> torch.Tensor:
    """VAE latents (B, 4, h, w) of the noise-augmented reference: noise added to the [-1, 1] image, then the
    encoder's distribution mode, not scaled (the sampler's ``encode_vae``)."""
    noisy = objective.augment_condition(images.float(), noise_aug, generator)
    return vae.encode(noisy.to(vae.dtype)).latent_dist.mode().float()


class LatentCache:
    """The frozen VAE's posterior (mean, std) of up to ``max_frames`` frames, keyed by (clip id, source frame);
    frames past the limit are encoded every time they come."""

    def __init__(self, max_frames: int):
        if isinstance(max_frames, bool) or not isinstance(max_frames, Integral) or max_frames < 1:
            raise ConfigError(f"a latent cache needs max_frames >= 1, got {max_frames!r}")
        self.max_frames = int(max_frames)
        self._posteriors: dict = {}
        self._unsaved: list = []  # keys encoded since the last save()
        self._read: set = set()  # files load() has read (or written: save()) already
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._posteriors)

    def posteriors(self, vae, frames: torch.Tensor, keys: Sequence, chunk: int) -> tuple:
        """(mean, std) of ``frames`` (N, 3, H, W), one key per frame; the frames not cached are encoded
        ``chunk`` at a time (and kept while there is room)."""
        missing = [i for i, key in enumerate(keys) if key not in self._posteriors]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        for start in range(0, len(missing), chunk):
            index = missing[start:start + chunk]
            dist = vae.encode(frames[index].to(vae.dtype)).latent_dist
            for row, i in enumerate(index):
                fresh[keys[i]] = (dist.mean[row].clone(), dist.std[row].clone())
        for key, value in fresh.items():
            if len(self._posteriors) < self.max_frames:
                self._posteriors[key] = value
                self._unsaved.append(key)
        pairs = [self._posteriors.get(key) or fresh[key] for key in keys]
        return torch.stack([m for m, _ in pairs]), torch.stack([s for _, s in pairs])

    def save(self, path, identity: dict, clips: Optional[dict] = None) -> int:
        """Write the posteriors cached since the last save to the safetensors file ``path`` (atomically;
        nothing when there are none), tagged with ``identity`` (str -> str: the encoder and size they are valid
        for) and the fingerprint in ``clips`` (clip id -> str, e.g. ``TrainingClips.clip_fingerprints()``;
        None: unknown) of each clip they belong to. Returns how many were written."""
        from safetensors.torch import save_file

        if not self._unsaved:
            return 0
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, key in enumerate(self._unsaved):
            mean, std = self._posteriors[key]
            tensors[f"{i}.mean"] = mean.detach().cpu().contiguous()
            tensors[f"{i}.std"] = std.detach().cpu().contiguous()
        written = sorted({clip for clip, _ in self._unsaved})
        metadata = {**identity, "keys": json.dumps([[clip, int(frame)] for clip, frame in self._unsaved]),
                    "clips": json.dumps({clip: (clips or {}).get(clip, UNKNOWN_CLIP) for clip in written})}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        self._read.add(path.resolve())
        count, self._unsaved = len(self._unsaved), []
        return count

    def load(self, folder, identity: dict, device=None, clips: Optional[dict] = None, adopt: bool = False) -> int:
        """Add the posteriors of every ``*.safetensors`` file in ``folder`` written with the same ``identity``
        (others are skipped with a warning: another VAE encoder or training size), while there is room: the
        frames of the clips in ``clips`` written with the same fingerprint (``clips`` None: the frames of clips
        of unknown fingerprint); other clips' frames are left alone. A file read or written before is not read
        again. ``adopt``: the next :meth:`save` writes the added frames too (an earlier run's posteriors taken
        into this run's own folder). Returns how many were added."""
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        added, foreign = 0, []
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            if len(self._posteriors) >= self.max_frames:
                break
            path = path.resolve()
            if path in self._read:
                continue
            self._read.add(path)
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    metadata = handle.metadata() or {}
                    if any(metadata.get(k) != v for k, v in identity.items()):
                        foreign.append(path.name)
                        continue
                    fingerprints = json.loads(metadata["clips"])
                    for i, (clip, frame) in enumerate(json.loads(metadata["keys"])):
                        key = (clip, int(frame))
                        expected = _clip_fingerprint(clips, clip)
                        if (expected is None or fingerprints.get(clip) != expected or key in self._posteriors
                                or len(self._posteriors) >= self.max_frames):
                            continue
                        self._posteriors[key] = (handle.get_tensor(f"{i}.mean").to(device),
                                                 handle.get_tensor(f"{i}.std").to(device))
                        if adopt:
                            self._unsaved.append(key)
                        added += 1
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:  # damaged: encode again
                log.warning("latent cache file %s is unreadable (%s); its frames will be encoded again", path, error)
        if foreign:
            log.warning("latent cache: %d file(s) in %s were written for another VAE encoder or training size (or by "
                        "an older version) and are not used (%s); delete them to free the space", len(foreign), folder,
                        ", ".join(foreign[:3]))
        return added


def module_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_digest(vae: nn.Module) -> str:
    """:func:`module_digest` of what a VAE posterior depends on: a diffusers VAE's ``encoder`` and ``quant_conv``
    (a decoder trained on leaves persisted posteriors valid); the whole module for a VAE without an encoder."""
    parts = {name: getattr(vae, name, None) for name in ("encoder", "quant_conv")}
    parts = {name: part for name, part in parts.items() if isinstance(part, nn.Module)}
    return module_digest(nn.ModuleDict(parts) if "encoder" in parts else vae)


def latent_cache_identity(vae: nn.Module, config: TrainConfig) -> dict:
    """What persisted posteriors are valid for, besides each clip's fingerprint: the VAE encoder's weights and
    dtype and the training size."""
    return {"format": LATENT_CACHE_FORMAT, "encoder": encoder_digest(vae),
            "vae_dtype": str(next(vae.parameters()).dtype), "size": f"{config.height}x{config.width}"}


def _clip_fingerprint(clips: Optional[dict], clip: str) -> Optional[str]:
    """What a persisted clip's fingerprint must be for this run (None: the clip is not this run's)."""
    return UNKNOWN_CLIP if clips is None else clips.get(clip)


def frame_keys(batch: dict) -> list:
    """(clip id, source frame) of every frame of a batch, batch-major: the latent cache's keys."""
    ids, sources = batch.get("clip_id"), batch.get("source_frames")
    if ids is None or not isinstance(sources, torch.Tensor):
        raise ConfigError("the latent cache needs batches with clip_id and source_frames (TrainingClips items); "
                          "set latent_cache_frames to 0 for this dataset")
    ids = [ids] if isinstance(ids, str) else list(ids)
    return [(clip, int(frame)) for clip, row in zip(ids, sources.tolist()) for frame in row]


@torch.no_grad()
def clip_latents(vae, frames: torch.Tensor, generator, chunk: int = 8, cache: Optional[LatentCache] = None,
                 keys: Optional[Sequence] = None) -> torch.Tensor:
    """Scaled VAE latents (B, F, 4, h, w) of frames (B, F, 3, H, W): a posterior sample per frame times the
    VAE's scaling factor, encoded ``chunk`` frames at a time. With a ``cache`` (and one key per frame) the
    posteriors come from it, and the noise is drawn in the same chunks, so the latents are the same."""
    from diffusers.utils.torch_utils import randn_tensor

    b, f = frames.shape[:2]
    flat = frames.flatten(0, 1)
    if cache is None:
        dists = [vae.encode(flat[i:i + chunk].to(vae.dtype)).latent_dist for i in range(0, flat.shape[0], chunk)]
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    else:
        if keys is None or len(keys) != flat.shape[0]:
            raise ConfigError(f"the latent cache needs one key per frame ({flat.shape[0]}), got "
                              f"{None if keys is None else len(keys)}")
        mean, std = cache.posteriors(vae, flat, keys, chunk)
    # one draw per chunk, as DiagonalGaussianDistribution.sample makes them: the same noise either way
    parts = [mean[i:i + chunk] + std[i:i + chunk] * randn_tensor(
                 mean[i:i + chunk].shape, generator=generator, device=mean.device, dtype=mean.dtype)
             for i in range(0, flat.shape[0], chunk)]
    latents = torch.cat(parts).float() * vae.config.scaling_factor
    return latents.reshape(b, f, *latents.shape[1:])


def added_time_ids(batch: int, config: TrainConfig, device) -> torch.Tensor:
    """(B, 3) [fps - 1, motion_bucket_id, noise_aug]: what the sampler feeds (``pipe(fps=...)``)."""
    ids = [config.fps - 1, config.motion_bucket_id, config.noise_aug]
    return torch.tensor([ids] * batch, dtype=torch.float32, device=device)


def check_batch(batch: dict, config: TrainConfig, latent_factor: int = 8) -> None:
    frames = 1 + config.num_frames
    h, w, f = config.height, config.width, latent_factor
    expected = {"pixels": (frames, 3, h, w), "pose_images": (frames, 3, h, w), "hand_mask": (frames, 1, h // f, w // f)}
    for key, shape in expected.items():
        value = batch.get(key)
        if not isinstance(value, torch.Tensor) or value.ndim != 5 or tuple(value.shape[1:]) != shape:
            raise ConfigError(f"batch[{key!r}] must be a tensor (B, {', '.join(map(str, shape))}) for num_frames="
                              f"{config.num_frames} at {w}x{h}, got {getattr(value, 'shape', type(value).__name__)}")


def training_step(modules: TrainModules, batch: dict, config: TrainConfig, generator: torch.Generator) -> dict:
    """The loss of one batch, with its graph (call ``backward`` on ``out["loss"]``).

    ``batch``: ``pixels`` and ``pose_images`` (B, 1+F, 3, H, W) in [-1, 1] with the reference at index 0,
    ``hand_mask`` (B, 1+F, 1, H/f, W/f) for a VAE downsampling by f (8 for SVD's). Random draws from
    ``generator``, in this order: VAE posterior samples of the clip, conditioning-image noise, noise levels,
    latent noise, condition-dropout draws.
    Returns ``loss`` (scalar with grad), ``hand_loss`` (no grad; NaN without hands), ``sigma`` (B,),
    ``drop_clip`` / ``drop_image`` (B,) bool.
    """
    check_batch(batch, config, vae_downscale(modules.vae.config))
    device = modules.device
    pixels = batch["pixels"].to(device, non_blocking=True)
    pose_images = batch["pose_images"].to(device, non_blocking=True)
    hand_mask = batch["hand_mask"].to(device, non_blocking=True)
    b, frames = pixels.shape[:2]

    cache = modules.latent_cache
    latents = clip_latents(modules.vae, pixels, generator, config.vae_encode_chunk, cache,
                           frame_keys(batch) if cache is not None else None)
    reference = pixels[:, 0]
    cond_latent = condition_latents(modules.vae, reference, config.noise_aug, generator)
    embeddings = clip_embeddings(modules.image_encoder, modules.feature_extractor, reference).float()
    sigma = objective.sample_sigmas(b, generator, log_mean=config.log_sigma_mean, log_std=config.log_sigma_std,
                                    device=device)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    drop_clip, drop_image = objective.condition_dropout_masks(b, config.condition_dropout, generator, device=device)

    image_latents = cond_latent.unsqueeze(1).expand(-1, frames, -1, -1, -1)
    embeddings, image_latents = objective.apply_condition_dropout(embeddings, image_latents, drop_clip, drop_image)
    noisy = objective.add_noise(latents, noise, sigma)
    _, _, _, c_noise = objective.edm_preconditioning(sigma)
    sample = torch.cat([objective.unet_input(noisy, sigma), image_latents], dim=2)
    pose_keep = ~(drop_clip & drop_image)

    autocast = (torch.autocast(device.type, dtype=config.autocast_dtype) if config.autocast_dtype is not None
                else nullcontext())
    with autocast:
        output = modules.denoiser(sample, c_noise, embeddings, added_time_ids(b, config, device),
                                  pose_images, pose_keep)
    x0 = objective.denoised(output.float(), noisy, sigma)
    weights = objective.loss_weights(hand_mask, config.hand_weight)
    loss, hand_loss = objective.diffusion_loss(x0, latents, sigma, weights)
    if config.hand_weight <= 1:
        # diffusion_loss finds the hand region where the weights exceed 1: measure it with a marker weight.
        with torch.no_grad():
            _, hand_loss = objective.diffusion_loss(x0, latents, sigma, objective.loss_weights(hand_mask, 2.0))
    return {"loss": loss, "hand_loss": hand_loss, "sigma": sigma, "drop_clip": drop_clip, "drop_image": drop_image}


# ================================================================================================ trainer
def make_optimizer(config: TrainConfig, params: list) -> torch.optim.Optimizer:
    kwargs = dict(lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                  weight_decay=config.weight_decay)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError("optimizer adamw8bit needs the bitsandbytes package (pip install bitsandbytes, on a "
                              "CUDA machine); use optimizer adamw otherwise") from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Trainer:
    """Optimiser, LR schedule, loss scaler, EMA and the step counter around :func:`training_step`.

    ``step`` counts completed optimiser steps. ``generator`` holds this rank's training draws. The EMA (when
    on) lives on rank 0 only: it is what rank 0 saves and validates with.
    """

    def __init__(self, modules: TrainModules, config: TrainConfig, *, rank: int = 0, world_size: int = 1):
        self.modules = modules
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.named_params = modules.trainable_named_parameters()
        params = [p for _, p in self.named_params]
        if not params:
            raise ConfigError("nothing to train: every parameter is frozen")
        self.optimizer = make_optimizer(config, params)
        schedule = (config.warmup_steps, config.steps, config.decay_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, *schedule))
        self.scaler = torch.amp.GradScaler(modules.device.type) if config.mixed_precision == "fp16" else None
        self.ema = None
        if config.ema_decay is not None and rank == 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.ema_decay)
        self.generator = torch.Generator(device=modules.device).manual_seed(rank_seed(config.seed, rank))
        self.step = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on ``batch``; returns this step's metrics averaged over the ranks (floats)."""
        params = [p for _, p in self.named_params]
        lr = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        out = training_step(self.modules, batch, self.config, self.generator)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.step + 1}: lower the learning "
                                     "rate, use bf16 instead of fp16, or check the data")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = float("nan")
        if self.config.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(params)
        self.step += 1
        loss_value, hand_value = self._mean_over_ranks(loss.detach(), out["hand_loss"])
        return {"loss": loss_value, "hand_loss": hand_value, "lr": lr, "grad_norm": grad_norm}

    def _mean_over_ranks(self, loss: torch.Tensor, hand_loss: torch.Tensor) -> tuple:
        """Mean loss over the ranks, and the mean hand loss over the ranks that saw a hand (NaN if none)."""
        has_hand = torch.isfinite(hand_loss)
        values = torch.stack([loss.float(), torch.where(has_hand, hand_loss.float(), torch.zeros_like(loss)),
                              has_hand.float()])
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
        total, hand_total, hand_count = values.tolist()
        return total / self.world_size, (hand_total / hand_count if hand_count else float("nan"))

    # -------------------------------------------------------------- EMA weights in the modules
    @contextmanager
    def averaged_weights(self):
        """Within the block, the modules hold the EMA weights (rank 0 with EMA on); restored after."""
        if self.ema is None:
            yield
            return
        params = [p for _, p in self.named_params]
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    # -------------------------------------------------------------- state
    def rank_state(self, data_state: dict) -> dict:
        """This rank's random and data state (what makes the next step reproducible)."""
        np_state = np.random.get_state()
        state = {
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": {"kind": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                          "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                          "cached_gaussian": float(np_state[4])},
            "python_rng": random.getstate(),
            "data": {"epoch": int(data_state["epoch"]), "position": int(data_state["position"])},
        }
        if self.modules.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.modules.device)
        return state

    def restore_rank_state(self, state: dict) -> dict:
        """Restore the random streams; returns the data state {epoch, position}."""
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        npr = state["numpy_rng"]
        np.random.set_state((npr["kind"], npr["key"].numpy().astype(np.uint32), npr["pos"], npr["has_gauss"],
                             npr["cached_gaussian"]))
        random.setstate(_as_tuples(state["python_rng"]))
        if "cuda_rng" in state and self.modules.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.modules.device)
        return dict(state["data"])

    def state_dict(self, rank_states: list) -> dict:
        ema = None
        if self.ema is not None:
            ema = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "world_size": self.world_size,
            "config": self.config.to_dict(),
            "trainable": [n for n, _ in self.named_params],
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": ema,
            "ranks": rank_states,
        }

    def load_state_dict(self, state: dict, ema_weights: Optional[dict] = None) -> None:
        """Optimiser, schedule, scaler and EMA from a checkpoint's train state (the weights are loaded
        separately); ``ema_weights``: name -> tensor of the EMA copy (the checkpoint's model file)."""
        names = [n for n, _ in self.named_params]
        if state["trainable"] != names:
            raise ConfigError("the checkpoint trained a different set of parameters than this run (trainable "
                              "setting or model changed); resume with the same settings or use a new run folder")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            if state.get("ema") is None or ema_weights is None:
                raise ConfigError("the checkpoint has no EMA state but this run uses EMA; resume with the same "
                                  "ema_decay or use a new run folder")
            self.ema.load_state_dict(state["ema"])
            device = self.modules.device
            self.ema.shadow_params = [ema_weights[n].to(device=device, dtype=p.dtype).clone()
                                      for n, p in self.named_params]
        self.step = int(state["step"])


def _as_tuples(value):
    """random.setstate needs tuples; a weights-only load may hand lists back."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# ================================================================================================ checkpoints
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``run_dir``, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = []
    for entry in run.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and entry.is_dir() and (entry / MODEL_FILE).is_file() and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir) -> Optional[Path]:
    """The newest complete checkpoint folder of a run, or None (a half-written one is never visible:
    folders are renamed into place only when complete)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_stale_temporaries(run_dir) -> None:
    """Clean up after a writer killed mid-checkpoint (called before a run starts): half-written folders
    and latent-cache files are deleted; a replaced checkpoint whose replacement never arrived is put back."""
    for stale in (Path(run_dir) / LATENT_CACHE_DIR).glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    for entry in sorted(Path(run_dir).iterdir()):
        if not entry.name.startswith(f".{CHECKPOINT_PREFIX}"):
            continue
        name, sep, _ = entry.name[1:].partition(".old-")
        if sep and CHECKPOINT_PATTERN.match(name) and not (entry.parent / name).exists():
            os.replace(entry, entry.parent / name)
        elif sep or ".tmp-" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)


def load_train_state(checkpoint_dir) -> dict:
    """The train state of a checkpoint folder, loaded with ``weights_only=True`` (never runs pickled code)."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} not found: {checkpoint_dir} is not a training checkpoint folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise ModelFileError(f"training state {path} is unreadable ({type(exc).__name__}: {exc}); delete this "
                             "checkpoint folder to resume from the previous one") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ModelFileError(f"training state {path} is not format {STATE_FORMAT}; it was written by another "
                             "version: start a new run folder")
    return state


def _write_model_files(directory: Path, modules: TrainModules, trainer: Trainer) -> None:
    from mimicmotion.loading import save_checkpoint

    plain = {"unet": modules.unet, "pose_net": modules.pose_net}
    if trainer.ema is not None:
        save_checkpoint(plain, directory / RAW_MODEL_FILE)
        with trainer.averaged_weights():
            save_checkpoint(plain, directory / MODEL_FILE)
    else:
        save_checkpoint(plain, directory / MODEL_FILE)


def save_training_checkpoint(run_dir, modules: TrainModules, trainer: Trainer, rank_states: list,
                             keep: Optional[int] = None) -> Path:
    """Write ``run_dir/ckpt-<step>/`` atomically (a temporary folder renamed into place): ``model.safetensors``
    (``unet.*`` + ``pose_net.*``, EMA weights when EMA is on, loadable with ``load_pipeline``), the raw
    weights in ``model_raw.safetensors`` when EMA is on, and ``train_state.pt``. Then keeps only the newest
    ``keep`` checkpoints. Returns the folder."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    final = run / checkpoint_name(trainer.step)
    tmp = run / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_model_files(tmp, modules, trainer)
        state_tmp = tmp / (STATE_FILE + ".part")
        torch.save(trainer.state_dict(rank_states), state_tmp)
        os.replace(state_tmp, tmp / STATE_FILE)
        if final.exists():  # a previous attempt reached this step: replace it with this one
            old = run / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        for _, old in list_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_weights(checkpoint_dir, modules: TrainModules, ema: bool) -> Optional[dict]:
    """Load the optimised weights of a checkpoint into the modules; returns the EMA weights (name -> tensor)
    when ``ema`` (they are the checkpoint's model file), else None."""
    from mimicmotion.loading import read_checkpoint, split_checkpoint

    folder = Path(checkpoint_dir)
    raw_path = folder / RAW_MODEL_FILE
    if ema and not raw_path.is_file():
        raise ConfigError(f"checkpoint {folder} was written without EMA but this run uses EMA; resume with the same "
                          "ema_decay or use a new run folder")
    weights = read_checkpoint(raw_path if ema else folder / MODEL_FILE)
    groups, _ = split_checkpoint(weights)
    with torch.no_grad():
        for name in ("unet", "pose_net"):
            module = getattr(modules, name)
            missing, unexpected = module.load_state_dict(groups[name], strict=False)
            if missing or unexpected:
                raise ModelFileError(f"checkpoint {folder} does not fit the {name} of this run (missing "
                                     f"{list(missing)[:4]}, unexpected {list(unexpected)[:4]}); use a new run folder")
    return read_checkpoint(folder / MODEL_FILE) if ema else None


# ================================================================================================ metrics
def append_csv(path: Path, columns: Sequence[str], row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_csv_rows(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_csv(path: Path, columns: Sequence[str], last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a crashed run logged steps its checkpoint does not hold)."""
    rows = read_csv_rows(path)
    kept = [r for r in rows if int(r["step"]) <= last_step]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` finite values (NaNs skipped; NaN where a window has none)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(len(values))
    lo = np.maximum(idx + 1 - window, 0)
    n = counts[idx + 1] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[idx + 1] - sums[lo]) / np.maximum(n, 1), np.nan)


def draw_loss_curve(steps: Sequence[float], series: dict, out_path, *, size=(900, 450),
                    title: str = "training loss") -> Path:
    """A line chart (PNG) of one or more series over ``steps``, drawn with OpenCV; log-scaled y when the
    values span more than a factor of 20. ``series``: label -> values (NaNs leave gaps). Written atomically."""
    import cv2

    width, height = size
    left, right, top, bottom = 80, 20, 40, 50
    image = np.full((height, width, 3), 255, np.uint8)
    colours = [(200, 120, 40), (40, 40, 220), (40, 160, 40), (160, 40, 160)]
    steps = np.asarray(steps, dtype=np.float64)
    finite = np.concatenate([np.asarray(v, np.float64)[np.isfinite(v)] for v in series.values()] or [np.array([])])
    cv2.putText(image, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    if len(steps) and finite.size:
        log_scale = finite.min() > 0 and finite.max() / finite.min() > 20
        tf = np.log10 if log_scale else (lambda v: v)
        lo, hi = tf(finite.min()), tf(finite.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        x0, x1 = steps.min(), steps.max() if steps.max() > steps.min() else steps.min() + 1

        def to_px(x, y):
            px = left + (x - x0) / (x1 - x0) * (width - left - right)
            py = height - bottom - (tf(y) - lo) / (hi - lo) * (height - top - bottom)
            return px, py

        for k, (label, values) in enumerate(series.items()):
            values = np.asarray(values, np.float64)
            colour = colours[k % len(colours)]
            ok = np.isfinite(values) & (values > 0 if log_scale else True)
            # Draw each run of consecutive finite points as one polyline.
            segments, current = [], []
            for x, y, good in zip(steps, values, ok):
                if good:
                    current.append(to_px(x, y))
                elif current:
                    segments.append(current)
                    current = []
            if current:
                segments.append(current)
            for seg in segments:
                pts = np.round(np.array(seg)).astype(np.int32).reshape(-1, 1, 2)
                if len(seg) == 1:
                    cv2.circle(image, tuple(pts[0, 0]), 2, colour, -1, cv2.LINE_AA)
                else:
                    cv2.polylines(image, [pts], False, colour, 1 if k == 0 else 2, cv2.LINE_AA)
            cv2.putText(image, label, (width - right - 200, top + 18 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        colour, 1, cv2.LINE_AA)
        inv = (lambda v: 10 ** v) if log_scale else (lambda v: v)
        for frac in (0.0, 0.5, 1.0):
            y_val = inv(lo + frac * (hi - lo))
            py = int(round(height - bottom - frac * (height - top - bottom)))
            cv2.putText(image, f"{y_val:.3g}", (5, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for frac in (0.0, 0.5, 1.0):
            px = int(round(left + frac * (width - left - right)))
            cv2.putText(image, f"{x0 + frac * (x1 - x0):.0f}", (px - 15, height - bottom + 20),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, "step" + ("   (log scale)" if log_scale else ""), (width // 2 - 40, height - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("OpenCV could not encode the loss curve PNG")
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, out)
    return out


def draw_run_curve(run_dir) -> Optional[Path]:
    """``run_dir/loss_curve.png`` from ``metrics.csv``: the loss, its moving average and the hand loss."""
    rows = read_csv_rows(Path(run_dir) / METRICS_FILE)
    if not rows:
        return None
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    hand = np.array([float(r["hand_loss"]) for r in rows])
    window = min(50, len(loss))
    series = {"loss": loss, f"loss (mean of {window})": moving_average(loss, window)}
    if np.isfinite(hand).any():
        series[f"hand loss (mean of {window})"] = moving_average(hand, window)
    return draw_loss_curve(steps, series, Path(run_dir) / LOSS_CURVE_FILE)


# ================================================================================================ validation
def frames_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 (the inverse of x / 127.5 - 1, rounded)."""
    return ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def validation_render(modules: TrainModules, item: dict, config: TrainConfig, seed: int) -> np.ndarray:
    """Render a held-out item with the current weights: its reference (index 0) and all its poses through
    ``MimicMotionPipeline`` with ``config.validation_steps`` steps; returns the frames after the reference,
    uint8 (F, H, W, 3). Leaves every global random stream untouched."""
    import PIL.Image

    from mimicmotion.pipeline import frames_to_uint8

    pipe = modules.pipeline()
    device = modules.device
    frames = item["pixels"].shape[0]
    tile = min(72, frames)
    was_training = modules.unet.training, modules.pose_net.training
    modules.unet.eval()
    modules.pose_net.eval()
    devices = [device] if device.type == "cuda" else []
    # Under mixed precision the frozen encoders hand the sampler low-precision conditioning; autocast lets
    # the float32 UNet and PoseNet take it, as in training.
    autocast = (torch.autocast(device.type, dtype=config.autocast_dtype) if config.autocast_dtype is not None
                else nullcontext())
    try:
        with torch.random.fork_rng(devices=devices), autocast:
            out = pipe(PIL.Image.fromarray(frames_uint8(item["pixels"][:1])[0]), item["pose_images"],
                       height=config.height, width=config.width, num_frames=frames, tile_size=tile,
                       tile_overlap=min(6, max(tile - 2, 0)), num_inference_steps=config.validation_steps,
                       fps=config.fps, motion_bucket_id=config.motion_bucket_id, noise_aug_strength=0.0,
                       generator=torch.Generator(device).manual_seed(seed), output_type="pt", device=device).frames[0]
    finally:
        modules.unet.train(was_training[0])
        modules.pose_net.train(was_training[1])
    return frames_to_uint8(out[1:].float().cpu())


def run_validation(modules: TrainModules, trainer: Trainer, items: list, config: TrainConfig, run_dir: Path) -> dict:
    """Render every held-out item, write ``validation/step-<step>-<k>.mp4`` and score it against the
    ground-truth frames; returns the mean PSNR and SSIM and the video paths, and appends validation.csv."""
    from mimicmotion.metrics import psnr, ssim
    from mimicmotion.video import write_video

    out_dir = run_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    scores, videos = [], []
    py_state, np_state = random.getstate(), np.random.get_state()
    with trainer.averaged_weights():
        for k, item in enumerate(items):
            rendered = validation_render(modules, item, config, seed=config.seed + k)
            truth = frames_uint8(item["pixels"][1:])
            path = out_dir / f"step-{trainer.step:06d}-{k}.mp4"
            write_video(path, list(rendered), fps=config.validation_fps)
            scores.append((psnr(rendered, truth), ssim(rendered, truth)))
            videos.append(path)
    random.setstate(py_state)
    np.random.set_state(np_state)
    result = {"step": trainer.step, "psnr": float(np.mean([s[0] for s in scores])),
              "ssim": float(np.mean([s[1] for s in scores])), "video": str(videos[0]) if videos else ""}
    append_csv(run_dir / VALIDATION_FILE, VALIDATION_COLUMNS, result)
    return result


# ================================================================================================ data
class BatchStream:
    """Batches of a (sharded) dataset in epoch order, resumable at (epoch, position in batches).

    Each epoch's item order comes from the dataset (``set_epoch``); a DataLoader with ``num_workers``
    processes reads it, starting at ``position``. The state after a batch is what a resumed run needs."""

    def __init__(self, dataset, batch_size: int, collate_fn, num_workers: int = 0, epoch: int = 0,
                 position: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.epoch = epoch
        self.position = position
        self.batches_per_epoch = len(dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"this worker's share of the training clips ({len(dataset)}) is smaller than the batch "
                              f"size {batch_size}: lower batch_size or the number of workers, or select more clips")
        self._iterator = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def _open(self):
        from torch.utils.data import DataLoader

        self.dataset.set_epoch(self.epoch)
        start = self.position * self.batch_size
        indices = range(start, self.batches_per_epoch * self.batch_size)
        # Its own generator (worker seeds): opening a loader must not draw from torch's global RNG, or a
        # resumed run (which opens one mid-epoch) would leave that stream elsewhere than the uninterrupted run.
        generator = torch.Generator().manual_seed(self.epoch * 1_000_003 + self.position)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, collate_fn=self.collate_fn,
                            num_workers=self.num_workers, drop_last=True, generator=generator,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False)
        return iter(loader)

    def next(self) -> dict:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._iterator = None
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self.position += 1
        return batch


# ================================================================================================ the loop
@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Optional[Path]  # newest checkpoint folder
    model_path: Optional[Path]  # its model.safetensors (what load_pipeline reads)
    metrics_path: Path
    loss_curve: Optional[Path]
    last_metrics: dict = field(default_factory=dict)
    validation: list = field(default_factory=list)
    resumed_from: Optional[int] = None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (NaN where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def write_json_atomic(path: Path, value, default=None) -> None:
    """``value`` as JSON into ``path`` in one rename (``default`` as in json.dumps)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=default) + "\n")
    os.replace(tmp, path)


def check_resume(run_dir: Path, checkpoint: Path, state: dict, config: TrainConfig, world_size: int) -> None:
    diffs = config_differences(state["config"], config)
    if diffs:
        raise ConfigError(f"run folder {run_dir} holds a run with other settings ({'; '.join(diffs)}); resume it with "
                          "the same settings or pass a new run folder")
    if state["world_size"] != world_size:
        raise ConfigError(f"checkpoint {checkpoint.name} was written by {state['world_size']} workers, this run has "
                          f"{world_size}: the data shards and random streams would not continue; use "
                          f"{state['world_size']} workers or a new run folder")


def train(config: TrainConfig, *, run_dir, catalog_root=None, clip_ids: Optional[Sequence[str]] = None,
          base_model_dir=None, init_checkpoint=None, components: Optional[dict] = None, dataset=None,
          validation_clip_ids: Sequence[str] = (), validation_items: Optional[list] = None, rank: int = 0,
          world_size: int = 1, device=None, report: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train (or resume) one rank of a run until ``config.steps`` optimiser steps are done.

    Model: ``components`` (e.g. ``mimicmotion.tiny.tiny_components()``) or ``base_model_dir`` plus an
    optional ``init_checkpoint``. Data: ``dataset`` (a TrainingClips-like dataset already sharded for this
    rank) or ``catalog_root`` + ``clip_ids``. Validation renders use ``validation_items`` or items of
    ``validation_clip_ids`` (reference = first frame). With ``world_size`` > 1 the caller has initialised
    ``torch.distributed``; rank 0 writes checkpoints, metrics and validation renders. ``report(metrics)`` is
    called on every rank every ``log_every`` steps and at checkpoints (Ray Train's report is a barrier, so
    every rank calls it equally often): loss and hand loss are averaged over the ranks, timings are the
    rank's own, validation scores (``val_psnr``, ``val_ssim``) come with rank 0's report.
    """
    from mimicmotion.training.dataset import TrainingClips, collate

    config.validate()
    run = Path(run_dir)
    if world_size > 1 and not _distributed():
        raise ConfigError(f"world_size={world_size} needs torch.distributed initialised (Ray Train does it); run "
                          "with one worker in-process")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
    run.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temporaries(run)
    checkpoint = latest_checkpoint(run)
    state = None
    if checkpoint is not None:
        state = load_train_state(checkpoint)
        check_resume(run, checkpoint, state, config, world_size)

    # Identical initial weights on every rank (fresh PoseNet draws from the global RNG).
    torch.manual_seed(config.seed)
    if components is None:
        if base_model_dir is None:
            raise ConfigError("pass the base model folder (SVD img2vid-xt in diffusers layout) or components")
        components = load_components(base_model_dir, init_checkpoint)
    modules = prepare_modules(components, config, device)
    if modules.device.type == "cuda":
        torch.cuda.set_device(modules.device)  # all_gather_object over NCCL uses the current device
    latent_factor = vae_downscale(modules.vae.config)
    if dataset is None:
        if catalog_root is None or not clip_ids:
            raise ConfigError("pass a catalog and the training clip ids (select_clips), or a dataset")
        dataset = TrainingClips(catalog_root, list(clip_ids), num_frames=config.num_frames, height=config.height,
                                width=config.width, seed=config.seed, rank=rank, world_size=world_size,
                                reference=config.reference, hand_threshold=config.hand_threshold,
                                hand_margin=config.hand_margin, latent_factor=latent_factor)
    if validation_items is None:
        validation_items = []
        if config.validate_every and validation_clip_ids and rank == 0:
            held_out = TrainingClips(catalog_root, list(validation_clip_ids), num_frames=config.num_frames,
                                     height=config.height, width=config.width, seed=config.seed, reference="first",
                                     hand_threshold=config.hand_threshold, hand_margin=config.hand_margin,
                                     latent_factor=latent_factor)
            validation_items = [held_out[i] for i in range(len(held_out))]

    seed = rank_seed(config.seed, rank)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    data_state = {"epoch": 0, "position": 0}
    if state is not None:
        ema_weights = load_checkpoint_weights(checkpoint, modules, ema=config.ema_decay is not None)
    if world_size > 1:
        wrap_distributed(modules)
    trainer = Trainer(modules, config, rank=rank, world_size=world_size)
    resumed_from = None
    if state is not None:
        trainer.load_state_dict(state, ema_weights if rank == 0 else None)
        if len(state["ranks"]) != world_size:
            raise ModelFileError(f"{checkpoint} holds random states of {len(state['ranks'])} ranks, expected "
                                 f"{world_size}; it is damaged: delete it to resume from the previous checkpoint")
        data_state = trainer.restore_rank_state(state["ranks"][rank])
        resumed_from = trainer.step
        log.info("rank %d: resuming %s from %s (step %d)", rank, run, checkpoint.name, trainer.step)
    stream = BatchStream(dataset, config.batch_size, collate, config.data_workers, **data_state)
    cache_folder = cache_identity = cache_clips = None
    if modules.latent_cache is not None:
        cache_identity = latent_cache_identity(modules.vae, config)
        fingerprints = getattr(dataset, "clip_fingerprints", None)
        cache_clips = fingerprints() if callable(fingerprints) else None
        if config.persist_latent_cache:
            cache_folder = run / LATENT_CACHE_DIR
            loaded = modules.latent_cache.load(cache_folder, cache_identity, modules.device, cache_clips)
            log.info("rank %d: latent cache starts with %d frame(s) from %s", rank, loaded, cache_folder)
        for folder in config.latent_cache_from:
            # rank 0 writes them into this run's folder at the next checkpoint, so a resume needs no other folder
            loaded = modules.latent_cache.load(folder, cache_identity, modules.device, cache_clips,
                                               adopt=cache_folder is not None and rank == 0)
            log.info("rank %d: latent cache: %d more frame(s) of this run's clips from %s", rank, loaded, folder)

    metrics_path = run / METRICS_FILE
    if rank == 0:
        write_json_atomic(run / CONFIG_FILE, config.to_dict())
        truncate_csv(metrics_path, METRIC_COLUMNS, trainer.step)
        truncate_csv(run / VALIDATION_FILE, VALIDATION_COLUMNS, trainer.step)

    samples_per_step = config.batch_size * world_size
    last_metrics: dict = {}
    validation: list = []
    while trainer.step < config.steps:
        t0 = time.perf_counter()
        batch = stream.next()
        t1 = time.perf_counter()
        step_metrics = trainer.train_step(batch)
        if modules.device.type == "cuda":
            torch.cuda.synchronize(modules.device)
        t2 = time.perf_counter()
        step = trainer.step
        row = {"step": step, "epoch": stream.epoch, **step_metrics, "samples_per_s": samples_per_step / (t2 - t0),
               "step_time_s": t2 - t1, "data_time_s": t1 - t0, "wall_time": time.time(),
               "max_memory_mb": (torch.cuda.max_memory_allocated(modules.device) / 2 ** 20
                                 if modules.device.type == "cuda" else float("nan")),
               "max_rss_mb": peak_rss_mb()}
        last_metrics = row
        if rank == 0:
            append_csv(metrics_path, METRIC_COLUMNS, row)
        if config.validate_every and step % config.validate_every == 0 and rank == 0 and validation_items:
            result = run_validation(modules, trainer, validation_items, config, run)
            validation.append(result)
            row = {**row, "val_psnr": result["psnr"], "val_ssim": result["ssim"]}
            log.info("step %d: validation PSNR %.2f dB, SSIM %.4f (%s)", step, result["psnr"], result["ssim"],
                     result["video"])
        is_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
        if is_checkpoint:
            if cache_folder is not None:
                modules.latent_cache.save(cache_folder / f"rank{rank}-step{step:08d}.safetensors", cache_identity,
                                          cache_clips)
            rank_states = _gather(trainer.rank_state(stream.state()), world_size)
            if rank == 0:
                folder = save_training_checkpoint(run, modules, trainer, rank_states, keep=config.keep_checkpoints)
                draw_run_curve(run)
                log.info("step %d: loss %.4f, checkpoint %s", step, row["loss"], folder)
            if world_size > 1:
                torch.distributed.barrier()
                if cache_folder is not None:  # what the other ranks encoded since the last checkpoint
                    modules.latent_cache.load(cache_folder, cache_identity, modules.device, cache_clips)
        if report is not None and (step % config.log_every == 0 or is_checkpoint):
            report(row)
    final = latest_checkpoint(run)
    curve = run / LOSS_CURVE_FILE
    return TrainResult(run_dir=run, step=trainer.step, checkpoint=final,
                       model_path=final / MODEL_FILE if final is not None else None, metrics_path=metrics_path,
                       loss_curve=curve if curve.is_file() else None, last_metrics=last_metrics,
                       validation=validation, resumed_from=resumed_from)
