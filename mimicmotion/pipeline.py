"""MimicMotionPipeline: Stable Video Diffusion + PoseNet with progressive latent fusion (SPEC section 6).

The default path reproduces the released inference exactly (same random draws in the same order, same
tile plan, weights, fusion order, guidance and scheduler calls). The denoising step is split into pieces
that a distributed executor can run tile by tile:

    state = pipe.prepare(...)                      # conditioning computed once per render
    for each step i:
        model_in = pipe.model_input(state, i)      # scaled latents + image latents, both CFG branches
        outs = [denoiser(model_in[:, idx], t, ...)  # any executor: local, batched, Ray actors
                for idx in state.tiles]
        pipe.finish_step(state, i, outs)           # fuse with position weights, guidance, scheduler step
    frames = pipe.decode(state.latents, ...)

``__call__`` runs exactly that loop with the local :class:`TileDenoiser`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from mimicmotion.errors import ConfigError
from mimicmotion.models.pose_net import vae_downscale
from mimicmotion.tiling import effective_tile_size, fuse_tile_outputs, tile_plan, tile_weights, validate_tiling

# The release's defaults (inference config of MimicMotion 1.1).
RELEASE_DEFAULTS = dict(
    tile_size=72, tile_overlap=6, num_inference_steps=25, min_guidance_scale=2.0, max_guidance_scale=2.0,
    fps=7, motion_bucket_id=127, noise_aug_strength=0.0, decode_chunk_size=8, seed=42,
)


@dataclass
class MimicMotionPipelineOutput(BaseOutput):
    """``frames``: (B, F, 3, H, W) in [0,1] for "pt", (B, F, H, W, 3) for "np", lists of PIL for "pil",
    latents (B, F, 4, h, w) for "latent". Frame 0 is the reference; the caller drops it."""

    frames: object


@dataclass
class Conditioning:
    """Per-render conditioning, computed once and shared by every tile and step (both CFG branches
    stacked unconditional first, as in the release)."""

    image_embeddings: torch.Tensor  # (2, 1, D): zeros, CLIP embedding
    image_latents: torch.Tensor  # (2, F, 4, h, w): zeros, VAE mode of the reference
    added_time_ids: torch.Tensor  # (2, 3): [fps-1, motion_bucket_id, noise_aug_strength] twice
    pose_latents: torch.Tensor  # (F, C0, h, w): PoseNet features of every frame (conditional branch)


@dataclass
class SamplingState:
    """Everything the denoising loop needs; ``latents`` is updated in place of each step."""

    cond: Conditioning
    latents: torch.Tensor  # (1, F, 4, h, w)
    timesteps: torch.Tensor
    guidance_scale: torch.Tensor  # (1, F, 1, 1, 1)
    tiles: list
    weights: torch.Tensor
    num_frames: int
    step_kwargs: dict = field(default_factory=dict)


class TileDenoiser:
    """Runs the UNet for tiles: both guidance branches, optionally several tiles in one batch.

    Stateless apart from the UNet, so a Ray actor can hold one and run any subset of tiles.
    ``batch_guidance`` (release behaviour) stacks the unconditional and conditional branch in one call;
    ``tiles_per_batch`` > 1 additionally stacks several equal-length tiles (an option; results agree with
    the unbatched path within float noise).
    """

    def __init__(self, unet, batch_guidance: bool = True, tiles_per_batch: int = 1):
        if tiles_per_batch < 1:
            raise ConfigError(f"tiles_per_batch must be >= 1 (got {tiles_per_batch})")
        self.unet = unet
        self.batch_guidance = batch_guidance
        self.tiles_per_batch = tiles_per_batch

    def _unet(self, sample, t, emb, time_ids, pose):
        return self.unet(sample, t, encoder_hidden_states=emb, added_time_ids=time_ids, pose_latents=pose,
                         return_dict=False)[0]

    def __call__(self, model_input: torch.Tensor, t, cond: Conditioning, tiles: Sequence[Sequence[int]]):
        """``model_input``: (2, F, 8, h, w) for the whole video (or already gathered frames indexed by
        ``tiles``). Returns one (2, len(tile), 4, h, w) output per tile, in tile order."""
        outputs = []
        group: list = []
        for idx in tiles:
            if group and (len(group) == self.tiles_per_batch or len(idx) != len(group[0])):
                outputs.extend(self._run_group(model_input, t, cond, group))
                group = []
            group.append(list(idx))
        if group:
            outputs.extend(self._run_group(model_input, t, cond, group))
        return outputs

    def _run_group(self, model_input, t, cond, group):
        if len(group) == 1 and not self.batch_guidance:
            idx = group[0]
            uncond = self._unet(model_input[:1, idx], t, cond.image_embeddings[:1], cond.added_time_ids[:1], None)
            condi = self._unet(model_input[1:, idx], t, cond.image_embeddings[1:], cond.added_time_ids[1:],
                               cond.pose_latents[idx])
            return [torch.cat([uncond, condi])]
        # One call: for each tile its unconditional then conditional branch (zero pose features for the
        # unconditional branch, exactly as the release feeds them).
        samples, embs, ids, poses = [], [], [], []
        for idx in group:
            samples.append(model_input[:, idx])
            embs.append(cond.image_embeddings)
            ids.append(cond.added_time_ids)
            pose = cond.pose_latents[idx]
            poses.extend([torch.zeros_like(pose), pose])
        out = self._unet(torch.cat(samples), t, torch.cat(embs), torch.cat(ids), torch.cat(poses))
        return list(out.split(2))


class MimicMotionPipeline(DiffusionPipeline):
    """Pose-guided image-to-video generation (MimicMotion). Components as in diffusers' SVD pipeline plus
    ``pose_net``. See the module docstring for the step structure."""

    model_cpu_offload_seq = "image_encoder->pose_net->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, pose_net):
        super().__init__()
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                              feature_extractor=feature_extractor, pose_net=pose_net)
        self.vae_scale_factor = vae_downscale(self.vae.config)
        pose_downscale = getattr(pose_net, "downscale", self.vae_scale_factor)
        if pose_downscale != self.vae_scale_factor:
            raise ConfigError(f"the PoseNet downsamples pose images by {pose_downscale} but the VAE's latents are "
                              f"1/{self.vae_scale_factor} of the frame: build the PoseNet with "
                              f"downscale={self.vae_scale_factor} (PoseNet(..., downscale=vae_downscale(vae.config)))")
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        # Model offload: each stage moves its module to the execution device and back to CPU afterwards.
        self.offload = False

    # ------------------------------------------------------------------ helpers
    def _stage(self, module, device):
        if self.offload:
            module.to(device)

    def _unstage(self, module):
        if self.offload:
            module.to("cpu")

    @property
    def latent_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE factor x UNet down-sampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_inputs(self, image, image_pose, height, width, num_frames, tile_size, tile_overlap,
                     num_inference_steps, min_guidance_scale, max_guidance_scale, decode_chunk_size):
        if not isinstance(image, (PIL.Image.Image, np.ndarray)):
            raise ConfigError(f"image must be a PIL image or a uint8 HxWx3 array, got {type(image).__name__}")
        m = self.latent_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise ConfigError(f"height and width must be positive multiples of {m} (got {height}x{width}); "
                              f"the release renders 1024x576 or 576x1024")
        if not isinstance(image_pose, torch.Tensor) or image_pose.ndim != 4 or image_pose.shape[1] != 3:
            raise ConfigError("image_pose must be a float tensor (F, 3, H, W) in [-1, 1] whose frame 0 is the "
                              f"reference pose, got {getattr(image_pose, 'shape', type(image_pose))}")
        if tuple(image_pose.shape[-2:]) != (height, width):
            raise ConfigError(f"pose images are {tuple(image_pose.shape[-2:])} but height x width is {height}x{width}")
        if num_frames != image_pose.shape[0]:
            raise ConfigError(f"num_frames={num_frames} but {image_pose.shape[0]} pose frames were given")
        validate_tiling(num_frames, tile_size, tile_overlap)
        if num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1 (got {num_inference_steps})")
        if min_guidance_scale < 1 or max_guidance_scale < 1:
            raise ConfigError("guidance scales must be >= 1 (1 = no guidance; the release uses 2.0), got "
                              f"min {min_guidance_scale}, max {max_guidance_scale}")
        if decode_chunk_size < 1:
            raise ConfigError(f"decode_chunk_size must be >= 1 (got {decode_chunk_size})")

    # ------------------------------------------------------------------ conditioning
    def encode_clip(self, image: PIL.Image.Image, device) -> torch.Tensor:
        """CLIP image embedding (1, 1, D): [-1,1], antialiased resize to 224, CLIP normalisation."""
        dtype = self.image_encoder.dtype
        pixels = self.image_processor.numpy_to_pt(self.image_processor.pil_to_numpy(image))
        pixels = _resize_with_antialiasing(pixels * 2.0 - 1.0, (224, 224))
        pixels = (pixels + 1.0) / 2.0
        mean = torch.tensor(self.feature_extractor.image_mean, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.feature_extractor.image_std, dtype=pixels.dtype).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(device=device, dtype=dtype)
        self._stage(self.image_encoder, device)
        emb = self.image_encoder(pixels).image_embeds.unsqueeze(1)
        self._unstage(self.image_encoder)
        return emb

    def encode_vae(self, image: PIL.Image.Image, height, width, noise_aug_strength, generator, device):
        """VAE latent (1, 4, h, w) of the noise-augmented reference (distribution mode, not scaled).
        The augmentation noise is drawn even at strength 0, as the release does (it advances the RNG)."""
        pixels = self.image_processor.preprocess(image, height=height, width=width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + noise_aug_strength * noise
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        self._stage(self.vae, device)
        if upcast:
            self.vae.to(dtype=torch.float32)
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        if upcast:
            self.vae.to(dtype=torch.float16)
        self._unstage(self.vae)
        return latents

    def encode_poses(self, image_pose: torch.Tensor, device, chunk_size: int = 0) -> torch.Tensor:
        """PoseNet features (F, C0, h, w), computed once per render (optionally in frame chunks)."""
        self._stage(self.pose_net, device)
        dtype = next(self.pose_net.parameters()).dtype
        chunks = image_pose.split(chunk_size) if chunk_size else [image_pose]
        feats = torch.cat([self.pose_net(c.to(device=device, dtype=dtype)) for c in chunks])
        self._unstage(self.pose_net)
        return feats

    # ------------------------------------------------------------------ the step pieces
    def prepare(
        self, image, image_pose, *, height, width, num_frames=None, tile_size=72, tile_overlap=6,
        num_inference_steps=25, min_guidance_scale=2.0, max_guidance_scale=2.0, fps=7, motion_bucket_id=127,
        noise_aug_strength=0.0, generator=None, independent_noise=False, device=None, pose_chunk_size=0,
        decode_chunk_size=8,
    ) -> SamplingState:
        """Validate inputs and compute everything that does not change across steps."""
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
        num_frames = image_pose.shape[0] if num_frames is None else num_frames
        self.check_inputs(image, image_pose, height, width, num_frames, tile_size, tile_overlap,
                          num_inference_steps, min_guidance_scale, max_guidance_scale, decode_chunk_size)
        device = torch.device(device) if device is not None else self._execution_device
        tile = effective_tile_size(num_frames, tile_size)

        emb = self.encode_clip(image, device)
        image_latent = self.encode_vae(image, height, width, noise_aug_strength, generator, device).to(emb.dtype)
        pose_latents = self.encode_poses(image_pose, device, pose_chunk_size).to(emb.dtype)

        image_latents = image_latent.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
        cond = Conditioning(
            image_embeddings=torch.cat([torch.zeros_like(emb), emb]),
            image_latents=torch.cat([torch.zeros_like(image_latents), image_latents]),
            added_time_ids=self._time_ids(fps - 1, motion_bucket_id, noise_aug_strength, emb.dtype, device),
            pose_latents=pose_latents,
        )

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        channels = self.unet.config.in_channels // 2
        noise_frames = num_frames if independent_noise else tile
        latents = randn_tensor((1, noise_frames, channels, h, w), generator=generator, device=device, dtype=emb.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        # Periodic initial noise: frame k starts from tile-noise k mod T (the release's repeat).
        latents = latents.repeat(1, num_frames // noise_frames + 1, 1, 1, 1)[:, :num_frames]

        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames).unsqueeze(0)
        guidance = guidance.to(device, latents.dtype)[..., None, None, None]
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator  # the release passes it; Euler draws (unused) churn noise
        return SamplingState(
            cond=cond, latents=latents, timesteps=timesteps, guidance_scale=guidance,
            tiles=tile_plan(num_frames, tile_size, tile_overlap), weights=tile_weights(tile, device=device),
            num_frames=num_frames, step_kwargs=step_kwargs,
        )

    def _time_ids(self, fps, motion_bucket_id, noise_aug_strength, dtype, device):
        ids = [fps, motion_bucket_id, noise_aug_strength]
        expected = self.unet.add_embedding.linear_1.in_features
        if self.unet.config.addition_time_embed_dim * len(ids) != expected:
            raise ConfigError(f"UNet expects an added-time embedding of {expected} values; its config is inconsistent")
        return torch.tensor([ids, ids], dtype=dtype, device=device)

    def model_input(self, state: SamplingState, step: int) -> torch.Tensor:
        """(2, F, 8, h, w): scheduler-scaled latents for both branches with the image latents appended."""
        t = state.timesteps[step]
        scaled = self.scheduler.scale_model_input(torch.cat([state.latents] * 2), t)
        return torch.cat([scaled, state.cond.image_latents], dim=2)

    def finish_step(self, state: SamplingState, step: int, tile_outputs) -> torch.Tensor:
        """Fuse tile outputs with the position weights, apply per-frame guidance, take one scheduler step."""
        fused = fuse_tile_outputs(tile_outputs, state.tiles, state.weights, state.num_frames)
        uncond, cond = fused.chunk(2)
        guided = uncond + state.guidance_scale * (cond - uncond)
        t = state.timesteps[step]
        state.latents = self.scheduler.step(guided, t, state.latents, **state.step_kwargs, return_dict=False)[0]
        return state.latents

    def decode(self, latents: torch.Tensor, decode_chunk_size: int = 8, decode_device=None) -> torch.Tensor:
        """Latents (B, F, 4, h, w) -> frames (B, F, 3, H, W) float32 in [0, 1], decoded in chunks.
        ``decode_device`` (e.g. "cpu") runs the VAE decoder elsewhere to save accelerator memory."""
        b, f = latents.shape[:2]
        flat = latents.flatten(0, 1) / self.vae.config.scaling_factor
        device = torch.device(decode_device) if decode_device is not None else flat.device
        moved = decode_device is not None and self.vae.device != device
        if moved:
            original = self.vae.device
            self.vae.to(device)
        self._stage(self.vae, device)
        frames = decode_latents(self.vae, flat, decode_chunk_size, device)
        self._unstage(self.vae)
        if moved:
            self.vae.to(original)
        frames = frames.float().reshape(b, f, *frames.shape[1:])
        return (frames / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        image,
        image_pose: torch.Tensor,
        height: int = 1024,
        width: int = 576,
        num_frames: Optional[int] = None,
        tile_size: int = 72,
        tile_overlap: int = 6,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 2.0,
        max_guidance_scale: float = 2.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.0,
        decode_chunk_size: int = 8,
        generator: Optional[torch.Generator] = None,
        output_type: str = "pt",
        return_dict: bool = True,
        device=None,
        independent_noise: bool = False,
        batch_guidance: bool = True,
        tiles_per_batch: int = 1,
        tile_executor: Optional[Callable] = None,
        callback_on_step_end: Optional[Callable] = None,
        decode_device=None,
        pose_chunk_size: int = 0,
    ):
        """Render a video. Defaults are the release's (T=72, O=6, 25 steps, guidance 2.0, fps 7, motion
        bucket 127, noise augmentation 0, decode chunks of 8).

        ``tile_executor(model_input, t, cond, tiles) -> list of tile outputs`` replaces the local UNet
        (the distributed renderer plugs in here). ``callback_on_step_end(pipe, step, t, {"latents": ...})``
        may return {"latents": new} (e.g. to checkpoint or edit the latent).
        """
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ConfigError(f"output_type must be one of pt, np, pil, latent (got {output_type!r})")
        state = self.prepare(
            image, image_pose, height=height, width=width, num_frames=num_frames, tile_size=tile_size,
            tile_overlap=tile_overlap, num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale, fps=fps,
            motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength, generator=generator,
            independent_noise=independent_noise, device=device, pose_chunk_size=pose_chunk_size,
            decode_chunk_size=decode_chunk_size,
        )
        executor = tile_executor or TileDenoiser(self.unet, batch_guidance, tiles_per_batch)
        self._stage(self.unet, state.latents.device)
        with self.progress_bar(total=len(state.timesteps) * len(state.tiles)) as bar:
            for i, t in enumerate(state.timesteps):
                model_in = self.model_input(state, i)
                outs = executor(model_in, t, state.cond, state.tiles)
                bar.update(len(state.tiles))
                self.finish_step(state, i, outs)
                if callback_on_step_end is not None:
                    result = callback_on_step_end(self, i, t, {"latents": state.latents}) or {}
                    state.latents = result.get("latents", state.latents)
        self._unstage(self.unet)

        if output_type == "latent":
            frames = state.latents
        else:
            frames = self.decode(state.latents, decode_chunk_size, decode_device)
            if output_type == "np":
                frames = frames.permute(0, 1, 3, 4, 2).numpy()
            elif output_type == "pil":
                frames = [self.image_processor.pt_to_numpy(v) for v in frames]
                frames = [self.image_processor.numpy_to_pil(v) for v in frames]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return MimicMotionPipelineOutput(frames=frames)


def decode_latents(vae, latents: torch.Tensor, chunk_size: int = 8, device=None) -> torch.Tensor:
    """Unscaled latents (N, C, h, w) -> the VAE's frames (N, 3, H, W) in about [-1, 1], on the CPU, decoded
    ``chunk_size`` consecutive frames at a time from frame 0 (a temporal decoder sees each chunk as one clip):
    how the sampler decodes a video."""
    device = latents.device if device is None else torch.device(device)
    accepts_frames = "num_frames" in inspect.signature(vae.forward).parameters
    frames = []
    for i in range(0, latents.shape[0], chunk_size):
        chunk = latents[i:i + chunk_size].to(device=device, dtype=vae.dtype)
        kwargs = {"num_frames": chunk.shape[0]} if accepts_frames else {}
        frames.append(vae.decode(chunk, **kwargs).sample.cpu())
    return torch.cat(frames)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) floats in [0,1] -> (F, H, W, 3) uint8 by truncation, as the release's
    ``(frames * 255.0).to(torch.uint8)``."""
    return (frames * 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
