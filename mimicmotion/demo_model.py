"""The project's small demo model: architecture, VAE pre-training, and the files `load_pipeline` reads.

Every component is the class the real model uses (SVD UNet with pose injection, temporal-decoder VAE with
8x down-sampling, CLIP vision model with projection, PoseNet, SVD-xt's Euler scheduler), sized to train from
scratch on a CPU and to render 128x192 (portrait 9:16-ish) clips in seconds. Its recipe:

1. generate procedural dancers (`mimicmotion.synthetic`) and curate them with the `curate` flow (sidecars);
2. pre-train the VAE as a frame autoencoder on those frames (`pretrain_vae`; SVD's VAE comes pre-trained,
   a from-scratch model has to learn one), then set its ``scaling_factor`` so latents have unit variance;
   trained on single frames, its temporal decoder is held frame-wise (``hold_decoder_framewise``) so the
   sampler's 8-frame decode chunks decode like single frames;
3. train UNet + PoseNet with the `train` flow (SPEC 7), VAE and CLIP frozen. The CLIP image encoder stays
   at its random initialisation: a fixed random projection of the reference still tells references apart,
   and the reference's appearance reaches the UNet mainly through the image latent.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from mimicmotion.errors import ConfigError
from mimicmotion.models.pose_net import vae_downscale
from mimicmotion.tiny import TINY_CLIP_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

DEMO_RESOLUTION = 128  # short side; the render's output size rule makes portrait frames 128 x 192
DEMO_HEIGHT, DEMO_WIDTH = 192, 128
DEMO_TILE_SIZE = 8  # frames per tile, the reference included; training clips are the reference + 7 frames
DEMO_TILE_OVERLAP = 2
# The procedural videos (`generate_dataset`) and how they become clips (`CurationSettings`): two clips of 24
# sampled frames per video. The demo_model flow and benchmarks/demo_continue_gpu.py both use these.
DEMO_VIDEO_FRAMES, DEMO_VIDEO_FPS = 96, 24.0
DEMO_CURATION = dict(sample_stride=2, clip_length=24, min_clip_length=DEMO_TILE_SIZE + 1, aspect="2:3",
                     resolution=DEMO_RESOLUTION)

DEMO_LATENT_CHANNELS = 4  # as SVD; the UNet takes the noisy latents and the reference latent (2 x 4)
DEMO_UNET_CONFIG = dict(
    TINY_UNET_CONFIG,
    in_channels=2 * DEMO_LATENT_CHANNELS,
    out_channels=DEMO_LATENT_CHANNELS,
    block_out_channels=(64, 128),
    num_attention_heads=(2, 4),
    num_frames=DEMO_TILE_SIZE,
)
DEMO_VAE_CONFIG = dict(TINY_VAE_CONFIG, block_out_channels=(64, 64, 64, 64), latent_channels=DEMO_LATENT_CHANNELS)
# A 4x variant (benchmarks/RESULTS.md: an 8x latent cannot hold the synthetic tiled floors): one VAE block
# fewer, so latents are 48 x 32 at 192 x 128; the UNet gets a cheap first level at that grid (32 channels, no
# attention) and keeps the 8x model's two levels below it. The PoseNet follows the VAE (``vae_downscale``).
DEMO_UNET_CONFIG_4X = dict(
    DEMO_UNET_CONFIG,
    down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
    block_out_channels=(32, 64, 128),
    num_attention_heads=(1, 2, 4),
)
DEMO_VAE_CONFIG_4X = dict(DEMO_VAE_CONFIG, down_block_types=("DownEncoderBlock2D",) * 3,
                          block_out_channels=(64, 64, 64))
DEMO_ARCHITECTURES = {8: (DEMO_UNET_CONFIG, DEMO_VAE_CONFIG), 4: (DEMO_UNET_CONFIG_4X, DEMO_VAE_CONFIG_4X)}
DEMO_DOWNSCALES = tuple(DEMO_ARCHITECTURES)
DEMO_CLIP_CONFIG = dict(TINY_CLIP_CONFIG)

# Training from scratch (not SVD fine-tuning): a larger learning rate, a short warm-up, and a noise-level
# distribution centred lower and wider than SVD's N(1.6, 0.7) so a small model also learns the low-noise
# steps that shape details. No mixed precision on CPU.
DEMO_TRAIN_CONFIG = dict(
    num_frames=DEMO_TILE_SIZE - 1, height=DEMO_HEIGHT, width=DEMO_WIDTH, batch_size=1, lr=2e-4, warmup_steps=100,
    log_sigma_mean=0.7, log_sigma_std=1.6, checkpoint_every=200, keep_checkpoints=2, validate_every=0,
    # Every frame a training item can hold stays encoded: 256 clips x 48 frames (the window's 24 and the
    # video's other pose frames, any of which can be the reference) = 12288 posteriors, ~150 MB per worker for
    # the 8x VAE, ~600 MB for the 4x one; kept on disk too, so a resumed run does not encode them again.
    ema_decay=None, latent_cache_frames=16384, persist_latent_cache=True,
    # Ray Train's report is a barrier across the workers: once per step it cost ~0.6 s of a 2 s step on CPU.
    log_every=50,
    # One loader process per worker decodes the next item while the step runs.
    data_workers=1,
)


def demo_latent_cache_frames(videos: int) -> int:
    """The training's latent cache size for a dataset of ``videos`` procedural videos: every frame a training
    item of the demo's curation (two 24-frame clips at stride 2 per 96-frame video) can hold, 96 per video;
    at least ``DEMO_TRAIN_CONFIG``'s."""
    return max(DEMO_TRAIN_CONFIG["latent_cache_frames"], 96 * videos)


# Component seeds are offsets of the caller's seed (the same component whatever else is built).
_SEED_OFFSETS = {"unet": 0, "vae": 1, "image_encoder": 2, "pose_net": 3}


def _seeded(seed: int, component: str, build: Callable):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _SEED_OFFSETS[component])
        return build()


def demo_components(seed: int = 0, downscale: int = 8) -> dict:
    """The six pipeline components of the demo architecture, randomly initialised (same seed, same weights).
    ``downscale`` 4 builds the 4x variant (``DEMO_VAE_CONFIG_4X``, ``DEMO_UNET_CONFIG_4X``)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mimicmotion.models.pose_net import PoseNet
    from mimicmotion.models.unet import PoseConditionedUNet
    from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG, clip_feature_extractor

    if downscale not in DEMO_DOWNSCALES:
        raise ConfigError(f"the demo VAE downsamples by one of {DEMO_DOWNSCALES}, got {downscale}")
    unet_config, vae_config = DEMO_ARCHITECTURES[downscale]
    unet = _seeded(seed, "unet", lambda: PoseConditionedUNet(**unet_config, sample_size=DEMO_HEIGHT // downscale))
    vae = _seeded(seed, "vae", lambda: AutoencoderKLTemporalDecoder(**vae_config, sample_size=DEMO_HEIGHT))
    image_encoder = _seeded(seed, "image_encoder",
                            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**DEMO_CLIP_CONFIG)))
    pose_net = _seeded(seed, "pose_net", lambda: PoseNet(unet.config.block_out_channels[0], vae_downscale(vae.config)))
    return dict(vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(),
                scheduler=EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG),
                feature_extractor=clip_feature_extractor(), pose_net=pose_net.eval())


# ---------------------------------------------------------------------------------------------- VAE
def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ConfigError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_reconstruct(vae, images: torch.Tensor, sample: bool = False,
                    generator: Optional[torch.Generator] = None, num_frames: int = 1) -> tuple:
    """(reconstruction, posterior) of images (N, 3, H, W) in [-1, 1]. The encoder sees each frame on its own;
    the temporal decoder decodes runs of ``num_frames`` consecutive images together (N a multiple of it), as
    the sampler decodes a video in chunks."""
    if len(images) % num_frames:
        raise ConfigError(f"{len(images)} images do not split into clips of {num_frames} frames")
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    recon = vae.decode(latents, num_frames=num_frames).sample
    return recon, posterior


def psnr_of(recon: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR in dB of [-1, 1] images (data range 2)."""
    mse = float(((recon.clamp(-1, 1) - images) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def check_device(device) -> str:
    """See :func:`mimicmotion.devices.check_device`."""
    from mimicmotion.devices import check_device as _check

    return _check(device)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's weights are on (the VAE stages run where the caller put the VAE)."""
    return next(module.parameters()).device


def random_crops(images: torch.Tensor, size: Optional[int], generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` window of the batch, on the 8-pixel latent grid (None: whole images)."""
    if size is None:
        return images
    h, w = images.shape[-2:]
    y = int(torch.randint(0, (h - size) // 8 + 1, (1,), generator=generator)) * 8
    x = int(torch.randint(0, (w - size) // 8 + 1, (1,), generator=generator)) * 8
    return images[..., y:y + size, x:x + size]


def ssim_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of image batches (N, C, H, W) in [-1, 1], differentiable: ``mimicmotion.metrics.ssim``'s
    definition (Gaussian window, sigma 1.5, radius 5; per channel; mean over the interior pixels whose window
    lies inside the image) on the 0..255 scale it scores frames on."""
    from mimicmotion.metrics import SSIM_K1, SSIM_K2, gaussian_kernel

    g = torch.as_tensor(gaussian_kernel(), dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, -1, -1)
    blur = lambda t: torch.nn.functional.conv2d(t, window, groups=channels)
    # on [0, 1] (a pure rescaling of 0..255): SSIM's luminance term is not shift-invariant
    x, y = (x + 1.0) / 2.0, (y + 1.0) / 2.0
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    return (((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))).mean()


def make_posterior_deterministic(vae, log_variance: float = -20.0) -> None:
    """Fix the encoder's log-variance output at ``log_variance`` (std 4.5e-5 at -20): a sample is then the mode.

    A from-scratch VAE trained briefly has not learnt to shrink its posterior variance; without this, the
    latents a trainer samples (``latent_dist.sample()``, as SVD fine-tuning does) would carry unit noise.
    The log-variance half of ``quant_conv`` becomes a constant."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = log_variance
    vae.quant_conv.weight.register_hook(lambda g: torch.cat([g[:channels], torch.zeros_like(g[channels:])]))
    vae.quant_conv.bias.register_hook(lambda g: torch.cat([g[:channels], torch.zeros_like(g[channels:])]))


def hold_decoder_framewise(vae) -> int:
    """Zero the temporal decoder's time-neighbour weights (the outer taps of its (3, 1, 1) Conv3d kernels) and
    keep them at zero in training: each frame then decodes from its own latent whatever the decode chunk.

    For a VAE pre-trained on single frames: a one-frame decode only ever trains the centre tap, so the outer
    taps would keep their random initial values and mix neighbouring frames into garbage colours when the
    sampler decodes 8 frames at once. Returns the number of convolutions held."""
    held = 0
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] == 3:
            with torch.no_grad():
                module.weight[:, :, 0] = 0.0
                module.weight[:, :, 2] = 0.0
            mask = torch.zeros_like(module.weight)
            mask[:, :, 1] = 1.0
            handles = module.__dict__.setdefault("_framewise_hooks", [])
            handles.append(module.weight.register_hook(lambda g, m=mask: g * m))
            held += 1
    return held


def release_decoder_time_taps(vae) -> None:
    """Undo ``hold_decoder_framewise``'s gradient masks (a decoder loaded from disk has none): the outer time taps
    train again, from whatever they hold."""
    for module in vae.decoder.modules():
        for handle in module.__dict__.pop("_framewise_hooks", []):
            handle.remove()


def _as_clips(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) single frames or (N, T, H, W, 3) clips -> (N, T, H, W, 3)."""
    if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3:
        raise ConfigError(f"VAE training data must be uint8 frames (N, H, W, 3) or clips (N, T, H, W, 3), got "
                          f"{frames.dtype} {frames.shape}")
    return frames[:, None] if frames.ndim == 4 else frames


def pretrain_vae(vae, frames: np.ndarray, *, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3,
                 kl_weight: float = 1e-6, crop: Optional[int] = 64, warmup_steps: int = 100, seed: int = 0,
                 held_out: Optional[np.ndarray] = None, log_every: int = 100, ssim_weight: float = 0.0,
                 train_encoder: bool = True, log: Optional[Callable[[dict], None]] = None) -> dict:
    """Train ``vae`` (in place) as an autoencoder: L1 + MSE reconstruction with a small KL term.

    ``frames``: uint8 training frames (N, H, W, 3), or short clips (N, T, H, W, 3) whose T frames the temporal
    decoder decodes together (``num_frames=T``). Clips are what a video VAE needs: its decoder's temporal
    layers only learn from multi-frame decodes, and the sampler decodes a video several frames at a time.
    Single frames (T = 1) train a frame-wise decoder (``hold_decoder_framewise``).
    ``batch_size`` counts frames (a multiple of T). ``held_out``: frames or clips to report PSNR on. The model
    is convolutional, so it trains on random ``crop`` x ``crop`` windows (a multiple of 8, the same window for
    all frames of a batch; None = whole frames), several times cheaper than whole frames on a CPU. Batches
    are drawn with a generator seeded by ``seed`` (deterministic on CPU); the learning rate warms up
    linearly over ``warmup_steps`` then follows a cosine to zero. ``ssim_weight`` adds ``ssim_weight * (1 -
    SSIM)`` to the loss (it rewards edges and texture that L1/MSE blur away). ``train_encoder=False`` trains
    the decoder only: the latents stay exactly as they were, so a UNet trained on them stays valid while the
    decoder improves. Returns the final metrics, including the latent standard deviation the
    ``scaling_factor`` is set from (see ``set_scaling_factor``).
    """
    clips = _as_clips(frames)
    clip_len = clips.shape[1]
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1 (got {steps}, {batch_size})")
    if batch_size % clip_len:
        raise ConfigError(f"batch_size counts frames and must be a multiple of the clip length {clip_len} "
                          f"(got {batch_size})")
    if crop is not None and (crop % 8 or crop < 8 or crop > min(clips.shape[2:4])):
        raise ConfigError(f"VAE crop must be a multiple of 8 no larger than the frames (got {crop} for "
                          f"{clips.shape[3]}x{clips.shape[2]} frames)")
    if crop is not None and crop < 11 and ssim_weight:
        raise ConfigError(f"the SSIM loss needs crops of at least 11 pixels (got {crop})")
    check = _as_clips(held_out) if held_out is not None and len(held_out) else clips[:max(1, 16 // clip_len)]
    # every check is done: only now is the model changed
    make_posterior_deterministic(vae)
    if clip_len == 1:
        hold_decoder_framewise(vae)
    rng = torch.Generator().manual_seed(seed)  # on the CPU wherever the VAE is: the same batches on any device
    device = module_device(vae)
    vae.train()
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(train_encoder)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = time.perf_counter()
    metrics: dict = {}
    for step in range(1, steps + 1):
        idx = torch.randint(len(clips), (batch_size // clip_len,), generator=rng).numpy()
        images = random_crops(frames_to_tensor(clips[idx].reshape(-1, *clips.shape[2:])), crop, rng).to(device)
        recon, posterior = vae_reconstruct(vae, images, sample=False, num_frames=clip_len)
        rec = (recon - images).abs().mean() + ((recon - images) ** 2).mean()
        if ssim_weight:
            rec = rec + ssim_weight * (1.0 - ssim_torch(recon, images))
        # Only the latent mean is learnt: the KL term keeps latents near unit scale.
        kl = (posterior.mean ** 2).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            metrics = dict(step=step, loss=loss.item(), rec=rec.item(), kl=kl.item(), lr=sched.get_last_lr()[0],
                           seconds=time.perf_counter() - start)
            if step == steps or step % (log_every * 5) == 0:
                metrics["held_out_psnr"] = evaluate_vae(vae, check)["psnr"]
                vae.train()
            if log is not None:
                log(metrics)
    vae.requires_grad_(True)
    vae.eval()
    metrics.update(evaluate_vae(vae, check))
    return metrics


@torch.no_grad()
def evaluate_vae(vae, frames: np.ndarray, batch_size: int = 16) -> dict:
    """Reconstruction PSNR (dB), SSIM and the latents' standard deviation (posterior modes) of uint8 frames
    (N, H, W, 3) or clips (N, T, H, W, 3) (each clip decoded as one chunk)."""
    from mimicmotion.metrics import ssim
    from mimicmotion.training.trainer import frames_uint8

    clips = _as_clips(frames)
    vae.eval()
    device = module_device(vae)
    clip_len = clips.shape[1]
    step = max(1, batch_size // clip_len)
    recons, latents, truth = [], [], []
    for i in range(0, len(clips), step):
        images = frames_to_tensor(clips[i:i + step].reshape(-1, *clips.shape[2:]))
        mode = vae.encode(images.to(device)).latent_dist.mode()
        latents.append(mode.cpu())
        recons.append(vae.decode(mode, num_frames=clip_len).sample.cpu())
        truth.append(images)
    recon, images = torch.cat(recons).clamp(-1, 1), torch.cat(truth)
    try:
        similarity = float(ssim(frames_uint8(recon), clips.reshape(-1, *clips.shape[2:])))
    except ConfigError:  # frames smaller than the SSIM window
        similarity = float("nan")
    return dict(psnr=psnr_of(recon, images), ssim=similarity, latent_std=float(torch.cat(latents).std()))


def set_scaling_factor(vae, latent_std: float) -> float:
    """Give the VAE the scaling factor that makes its scaled latents unit-variance (as SD/SVD did: 0.18215)."""
    if not latent_std > 0:
        raise ConfigError(f"latent standard deviation must be positive (got {latent_std})")
    factor = float(f"{1.0 / latent_std:.5f}")
    vae.register_to_config(scaling_factor=factor)
    return factor


# ---------------------------------------------------------------------------------------------- decoder adaptation
# The UNet's latents are not the encoder's: where the model is unsure it leaves them soft, and the decoder,
# trained on the encoder's latents only, decodes soft latents into flat colours. Adapting the decoder (encoder
# frozen) to pairs of (latents the trained model samples for a training clip, that clip's true frames)
# teaches it what those latents should look like. A share of the encoder's own latents keeps what it could
# already reconstruct. Training clips only: the test split stays unseen.
def decoder_pair(pipe, clip, *, steps: int, guidance: float, seed: int, tile_size: int = DEMO_TILE_SIZE,
                 tile_overlap: int = DEMO_TILE_OVERLAP) -> dict:
    """One decoder-adaptation pair from an evaluation clip (``mimicmotion.evaluation.load_eval_clip``): the
    pipeline's latents for the clip's poses (scaled, float32 (1+F, C, h, w), the reference pose's slot first,
    sampled as the evaluation renders) and the frames they should decode to (uint8 (1+F, H, W, 3): the
    reference for that slot, then the clip's frames)."""
    from mimicmotion.evaluation import pose_images
    from mimicmotion.render import RenderSettings, pipeline_output

    settings = RenderSettings(tile_size=tile_size, tile_overlap=tile_overlap, num_inference_steps=steps,
                              min_guidance_scale=guidance, max_guidance_scale=guidance, seed=seed)
    latents = pipeline_output(pipe, clip.frames[0], pose_images(clip), settings, output_type="latent")
    return dict(latents=latents.float().cpu().numpy(), frames=np.concatenate([clip.frames[:1], clip.frames]))


def _check_pairs(pairs, vae) -> None:
    if not len(pairs):
        raise ConfigError("decoder adaptation needs at least one (latents, frames) pair; sample some first")
    factor = vae_downscale(vae.config)
    for i, pair in enumerate(pairs):
        latents, frames = pair.get("latents"), pair.get("frames")
        ok = (isinstance(latents, np.ndarray) and isinstance(frames, np.ndarray) and latents.ndim == 4
              and frames.ndim == 4 and frames.dtype == np.uint8 and len(latents) == len(frames)
              and latents.shape[1] == vae.config.latent_channels
              and tuple(frames.shape[1:3]) == (latents.shape[2] * factor, latents.shape[3] * factor))
        if not ok:
            raise ConfigError(f"decoder pair {i}: expected latents (F, {vae.config.latent_channels}, h, w) and uint8 "
                              f"frames (F, {factor}h, {factor}w, 3), got {getattr(latents, 'shape', None)} and "
                              f"{getattr(frames, 'dtype', None)} {getattr(frames, 'shape', None)}")


@torch.no_grad()
def pair_scores(vae, pairs, chunk: int = 8) -> dict:
    """Mean SSIM and PSNR of the pairs' latents decoded as the sampler decodes them (``pipeline.decode_latents``),
    on the frames the evaluation scores (those after the reference: pair frames 2..); the frames are rounded to
    uint8 (the evaluation truncates: within one grey level)."""
    from mimicmotion.metrics import psnr, ssim
    from mimicmotion.pipeline import decode_latents
    from mimicmotion.training.trainer import frames_uint8

    vae.eval()
    device = module_device(vae)
    ssims, psnrs = [], []
    for pair in pairs:
        latents = torch.from_numpy(pair["latents"]) / vae.config.scaling_factor
        frames = frames_uint8(decode_latents(vae, latents, chunk, device=device).clamp(-1, 1))
        ssims.append(ssim(frames[2:], pair["frames"][2:]))
        psnrs.append(psnr(frames[2:], pair["frames"][2:]))
    return dict(ssim=float(np.mean(ssims)), psnr=float(np.mean(psnrs)))


def _outer_taps_zero(vae) -> bool:
    convs = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] == 3]
    return bool(convs) and all(not m.weight.detach()[:, :, [0, 2]].any() for m in convs)


def adapt_decoder(vae, pairs, *, steps: int, encoder_share: float = 0.3, crop: Optional[int] = 12, lr: float = 1e-4,
                  ssim_weight: float = 2.0, warmup_steps: int = 50, chunk: int = 8, seed: int = 0, held_out=(),
                  temporal: bool = False, log_every: int = 100, log: Optional[Callable[[dict], None]] = None) -> dict:
    """Train ``vae``'s decoder (in place; encoder frozen, so the latents a UNet learnt on stay valid) to decode
    ``pairs`` (``decoder_pair`` dicts) into their frames.

    Each step decodes one sampler chunk (``chunk`` consecutive frames from a chunk boundary, as ``pipe.decode``
    cuts them) of a random pair, in a random ``crop`` x ``crop`` latent window (None: whole frames); with
    probability ``encoder_share`` the chunk's latents are the encoder's own (posterior mode, scaled) instead
    of the sampled ones. Loss L1 + MSE + ``ssim_weight`` x (1 - SSIM); AdamW, linear warm-up then cosine to 0.
    A decoder held frame-wise (``hold_decoder_framewise``) stays so unless ``temporal``: then the outer taps of
    its time convolutions train too (from zero in a frame-wise decoder), so a frame may draw on its chunk's
    neighbours. ``held_out``: pairs scored before and after (``pair_scores``). Returns the metrics."""
    _check_pairs(pairs, vae)
    if held_out:
        _check_pairs(held_out, vae)
    lengths = {len(p["latents"]) for p in pairs}
    if steps < 1 or chunk < 1 or min(lengths) < chunk:
        raise ConfigError(f"decoder adaptation needs steps >= 1 and pairs of at least one full chunk of {chunk} "
                          f"frames (steps {steps}, pair lengths {sorted(lengths)})")
    if not 0.0 <= encoder_share <= 1.0:
        raise ConfigError(f"encoder_share must be in [0, 1], got {encoder_share}")
    h, w = pairs[0]["latents"].shape[2:]
    factor = vae_downscale(vae.config)
    if crop is not None and (crop < 2 or (ssim_weight and crop * factor < 11)):
        raise ConfigError(f"crop must be at least 2 latent cells (11 pixels with the SSIM term), got {crop}")
    before = pair_scores(vae, held_out, chunk) if held_out else {}
    if temporal:
        release_decoder_time_taps(vae)
    elif _outer_taps_zero(vae):
        hold_decoder_framewise(vae)
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False)
    device = module_device(vae)
    with torch.no_grad():  # the encoder's own latents stay on the VAE's device: no copy per step
        own = [torch.cat([vae.encode(frames_to_tensor(p["frames"][i:i + chunk]).to(device)).latent_dist.mode()
                          for i in range(0, len(p["frames"]), chunk)]) * vae.config.scaling_factor for p in pairs]
    params = [p for p in vae.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    ch, cw = (h, w) if crop is None else (min(crop, h), min(crop, w))
    rng = np.random.default_rng(seed)
    vae.train()
    start, losses, metrics = time.perf_counter(), [], {}
    for step in range(1, steps + 1):
        k = int(rng.integers(len(pairs)))
        n = len(pairs[k]["latents"])
        first = int(rng.integers(n // chunk)) * chunk
        source = own[k] if rng.random() < encoder_share else torch.from_numpy(pairs[k]["latents"])
        latents = source[first:first + chunk] / vae.config.scaling_factor
        images = frames_to_tensor(pairs[k]["frames"][first:first + chunk])
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        latents = latents[:, :, y:y + ch, x:x + cw]
        images = images[:, :, y * factor:(y + ch) * factor, x * factor:(x + cw) * factor]
        latents, images = latents.to(device), images.to(device)
        recon = vae.decode(latents, num_frames=len(latents)).sample
        loss = (recon - images).abs().mean() + ((recon - images) ** 2).mean()
        if ssim_weight:
            loss = loss + ssim_weight * (1.0 - ssim_torch(recon, images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            metrics = dict(step=step, loss=float(np.mean(losses[-log_every:])), seconds=time.perf_counter() - start)
            if log is not None:
                log(metrics)
    vae.requires_grad_(True)
    vae.eval()
    metrics.update(pairs=len(pairs), encoder_share=encoder_share, crop=crop, lr=lr, ssim_weight=ssim_weight,
                   temporal=temporal)
    if held_out:
        metrics.update(held_out=len(held_out), before=before, after=pair_scores(vae, held_out, chunk))
    return metrics


PAIRS_MANIFEST = "pairs.json"
ADAPT_HELD_OUT_EVERY = 16  # every 16th pair is held out of the adaptation and scored


def held_out_split(pairs: list, every: int = ADAPT_HELD_OUT_EVERY) -> tuple:
    """(pairs to adapt on, pairs held out: every ``every``-th, from the first)."""
    return [p for i, p in enumerate(pairs) if i % every], pairs[::every]


def _hash_file(digest, path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _read_pairs_manifest(path: Path) -> Optional[dict]:
    """A pairs folder's pairs.json (None when there is none); an unreadable one is an error naming it."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        manifest = exc
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path} is not a readable record of decoder pairs ({manifest}); remove it and the pairs "
                          f"beside it, or choose another folder")
    return manifest


def folder_digest(folder, skip=()) -> str:
    """SHA-256 over a folder's files (relative paths and bytes, sorted); hidden files and any file or folder
    named in ``skip`` are left out. Which base model sampled the pairs; whether a copy is still current."""
    import hashlib

    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") or part in skip for part in rel.parts):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        _hash_file(digest, path)
    return digest.hexdigest()


def decoder_pairs_identity(base_dir, checkpoint, *, steps: int, guidance: float, max_frames: int, resolution: int,
                           tile_size: int = DEMO_TILE_SIZE, tile_overlap: int = DEMO_TILE_OVERLAP) -> dict:
    """What decides a decoder pair besides its clip and seed: the model's files and the sampling settings."""
    return dict(base=folder_digest(base_dir), checkpoint=checkpoint_digest(checkpoint), steps=int(steps),
                guidance=float(guidance), max_frames=int(max_frames), resolution=int(resolution),
                tile_size=int(tile_size), tile_overlap=int(tile_overlap))


def unused_numbered_path(stem: Path) -> Path:
    """``<stem>-1``, or the first ``<stem>-<n>`` that does not exist yet: where to set something aside."""
    n = 1
    while stem.with_name(f"{stem.name}-{n}").exists():
        n += 1
    return stem.with_name(f"{stem.name}-{n}")


def _set_aside_stale_pairs(out: Path, manifest: Optional[dict], log) -> None:
    """Move pairs another model (or other settings) sampled into ``out/stale-<its checkpoint digest>-<n>/``:
    they must not train this model's decoder, and nothing is deleted (nor overwritten by a later set-aside)."""
    old = (manifest or {}).get("identity", {}).get("checkpoint", "unknown")[:12]
    stale = unused_numbered_path(out / f"stale-{old}")
    stale.mkdir()
    for path in [*out.glob("*.npz"), out / PAIRS_MANIFEST]:
        if path.is_file() and not path.name.startswith("."):
            path.replace(stale / path.name)
    if log is not None:
        log(f"decoder pairs in {out} were sampled by another model or other settings; moved to {stale}")


def write_decoder_pairs(catalog, base_dir, checkpoint, clip_ids, out_dir, *, steps: int, guidance: float,
                        seed: int = 0, max_frames: int = 24, resolution: int = DEMO_RESOLUTION,
                        log: Optional[Callable[[str], None]] = None, device: str = "cpu") -> Path:
    """Sample ``decoder_pair`` for each catalog clip into ``out_dir/<clip_id>.npz`` (one atomic file per clip,
    seed ``seed`` + the clip's position), with the pipeline on ``device``. ``out_dir/pairs.json`` records the
    model and settings (``decoder_pairs_identity``) and each clip's seed: a re-run with the same ones keeps the
    clips already written (it resumes); pairs from another model or other settings (e.g. after more UNet
    steps) are moved to ``out_dir/stale-<digest>-<n>/`` and sampled again. Returns ``out_dir``."""
    from mimicmotion.evaluation import clip_rows, load_eval_clip
    from mimicmotion.loading import load_pipeline
    from mimicmotion.training.trainer import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = decoder_pairs_identity(base_dir, checkpoint, steps=steps, guidance=guidance, max_frames=max_frames,
                                      resolution=resolution)
    manifest_path = out / PAIRS_MANIFEST
    manifest = _read_pairs_manifest(manifest_path)
    if (manifest or {}).get("identity") != identity and (manifest is not None or any(out.glob("*.npz"))):
        _set_aside_stale_pairs(out, manifest, log)
        manifest = None
    manifest = dict(identity=identity, seeds=dict((manifest or {}).get("seeds", {})), clips=list(clip_ids))
    todo = [(i, c) for i, c in enumerate(clip_ids)
            if not (out / f"{c}.npz").is_file() or manifest["seeds"].get(c) != seed + i]
    write_json_atomic(manifest_path, manifest)
    if not todo:
        return out
    rows = clip_rows(catalog, [c for _, c in todo])
    pipe = load_pipeline(base_dir, checkpoint, dtype=torch.float32, device=device)
    pipe.set_progress_bar_config(disable=True)
    for i, clip_id in todo:
        clip = load_eval_clip(catalog, clip_id, rows[clip_id], resolution, max_frames)
        pair = decoder_pair(pipe, clip, steps=steps, guidance=guidance, seed=seed + i)
        tmp = out / f".{clip_id}.tmp.npz"
        np.savez(tmp, **pair)
        tmp.replace(out / f"{clip_id}.npz")
        manifest["seeds"][clip_id] = seed + i
        write_json_atomic(manifest_path, manifest)
        if log is not None:
            log(f"decoder pair {i + 1}/{len(clip_ids)}: {clip_id}")
    return out


def pair_files(folder) -> list:
    """The pair files of the clips the latest ``write_decoder_pairs`` asked for (its pairs.json ``clips``: a
    re-run with fewer clips keeps the others' files without using them); every pair file without that record."""
    files = sorted(p for p in Path(folder).glob("*.npz") if not p.name.startswith("."))
    asked = (_read_pairs_manifest(Path(folder) / PAIRS_MANIFEST) or {}).get("clips")
    if asked is not None:
        asked = set(asked)
        files = [p for p in files if p.stem in asked]
    return files


def pairs_digest(folder) -> str:
    """SHA-256 over the pairs ``load_decoder_pairs`` would load (file names and bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for path in pair_files(folder):
        digest.update(path.name.encode() + b"\0")
        _hash_file(digest, path)
    return digest.hexdigest()


def load_decoder_pairs(folder) -> list:
    """The pairs ``write_decoder_pairs`` wrote, in clip-id order."""
    paths = pair_files(folder)
    if not paths:
        raise ConfigError(f"no decoder pairs (*.npz) in {folder}; sample them first (write_decoder_pairs)")
    pairs = []
    for path in paths:
        with np.load(path) as data:
            pairs.append(dict(latents=data["latents"], frames=data["frames"]))
    return pairs


# ---------------------------------------------------------------------------------------------- files
def save_demo_model(directory, components: dict, *, card: Optional[dict] = None) -> tuple:
    """Write ``components`` as load_pipeline reads them: ``directory/base/`` (diffusers SVD layout, VAE and CLIP
    weights, UNet config) and ``directory/mimicmotion-demo.safetensors`` (unet.* + pose_net.*). ``card``: extra
    facts written to ``directory/training.json``. Returns (base_dir, checkpoint_path)."""
    from mimicmotion.loading import save_checkpoint
    from mimicmotion.tiny import save_base_folder

    out = Path(directory)
    base = save_base_folder(out / "base", components)
    checkpoint = save_checkpoint({"unet": components["unet"], "pose_net": components["pose_net"]},
                                 out / "mimicmotion-demo.safetensors")
    if card is not None:
        tmp = out / ".training.json.tmp"
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        tmp.replace(out / "training.json")
    return base, checkpoint


# The shipped demo model: package data, so `pip install` carries it.
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "demo_model"
SHIPPED_CHECKPOINT = "mimicmotion-demo.safetensors"
TRAINING_RECORD_FILES = ("summary.json", "metrics.csv", "loss_curve.png")  # shipped beside the weights


def demo_model_paths(directory=None) -> tuple:
    """(base_dir, checkpoint) of the demo model in ``directory`` (default: the one shipped in the package)."""
    from mimicmotion.errors import ModelFileError

    folder = Path(directory) if directory is not None else SHIPPED_DIR
    base, checkpoint = folder / "base", folder / SHIPPED_CHECKPOINT
    if not (base / "model_index.json").is_file() or not checkpoint.is_file():
        raise ModelFileError(f"no demo model in {folder} (expected base/model_index.json and {SHIPPED_CHECKPOINT}); "
                             "reinstall the package, or build one with flows/demo_model.py")
    return base, checkpoint


# ---------------------------------------------------------------------------------------------- recipe steps
def collect_frames(video_paths, every: int = 6) -> np.ndarray:
    """Every ``every``-th frame of each video, stacked (uint8 (N, H, W, 3))."""
    return collect_clips(video_paths, clip_length=1, every=every)[:, 0]


def collect_clips(video_paths, clip_length: int = 4, every: int = 2) -> np.ndarray:
    """Runs of ``clip_length`` frames ``every`` frames apart, cut one after another from each video: the VAE's
    training clips (uint8 (N, clip_length, H, W, 3)); a video's leftover frames are dropped."""
    from mimicmotion.video import probe, read_frames

    if clip_length < 1 or every < 1:
        raise ConfigError(f"clip_length and every must be >= 1 (got {clip_length}, {every})")
    chunks = []
    for path in video_paths:
        n = probe(path).num_frames
        usable = len(range(0, n, every)) // clip_length * clip_length
        if usable:
            frames = read_frames(path, list(range(0, n, every))[:usable])
            chunks.append(frames.reshape(-1, clip_length, *frames.shape[1:]))
    if not chunks:
        raise ConfigError("no videos to collect VAE training frames from (or all shorter than one clip): "
                          "generate the synthetic set first")
    return np.concatenate(chunks)


def build_initial_model(out_dir, vae, seed: int = 0) -> tuple:
    """The starting point of UNet training: a base folder holding the pre-trained ``vae`` (frozen from now on),
    the random CLIP encoder and the UNet config, plus a checkpoint with the random UNet and fresh PoseNet (the
    architecture variant that matches the VAE's downsampling)."""
    components = demo_components(seed, vae_downscale(vae.config))
    components["vae"] = vae.eval()
    return save_demo_model(out_dir, components)


def split_sql(split: str, first_clip_only: bool = False, limit: Optional[int] = None, offset: int = 0) -> tuple:
    """(SQL, params) selecting the catalog clips of one split of a synthetic dataset (``train``/``test``).

    ``first_clip_only``: one clip per video (its first), so an evaluation does not count a video twice;
    ``limit``: at most that many clips (in clip-id order, a fixed pseudo-random choice of videos); ``offset``:
    skip that many first, e.g. ``split_sql("test", True, 16, offset=16)`` selects validation clips: videos of the
    test split that the evaluation's first 16 leave out, to choose between candidates without the test clips."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"offset must be an integer >= 0, got {offset!r}")
    sql = ("SELECT c.clip_id FROM clips c JOIN videos v USING (video_id) "
           "WHERE v.status = 'ok' AND v.source_path LIKE $pattern")
    params: dict = {"pattern": f"%/{split}/%"}
    if first_clip_only:
        sql += " AND c.clip_index = 0"
    sql += " ORDER BY c.clip_id"
    if limit is not None:
        sql += " LIMIT $limit"
        params["limit"] = limit
    if offset:
        sql += " OFFSET $offset"
        params["offset"] = offset
    return sql, params


def ship_model(base_dir, checkpoint, card_markdown: str, target=None, extra_files=()) -> Path:
    """Copy a trained model (base folder + checkpoint), its model card and ``extra_files`` (the training
    record: metrics CSV, loss curve, summary) into the package's shipped folder, replacing the previous one
    in one rename."""
    import shutil

    target = Path(target) if target is not None else SHIPPED_DIR
    tmp = _staged_model_folder(base_dir, checkpoint, target, extra_files)
    (tmp / "MODEL_CARD.md").write_text(card_markdown)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        target.replace(old)
    tmp.replace(target)
    if old.exists():
        shutil.rmtree(old)
    return target


def _staged_model_folder(base_dir, checkpoint, target: Path, extra_files=()) -> Path:
    """A fresh temporary sibling of ``target`` holding ``base/``, the checkpoint and ``extra_files``: the
    caller renames it into place."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(base_dir, tmp / "base", ignore=shutil.ignore_patterns(".*"))
    shutil.copy2(checkpoint, tmp / SHIPPED_CHECKPOINT)
    for extra in extra_files:
        shutil.copy2(extra, tmp / Path(extra).name)
    return tmp


def copy_demo_model(source, target) -> Path:
    """Copy a demo model folder (``base/``, the checkpoint, its training record when present) to ``target`` in
    one rename; a ``target`` that already holds a model is kept as it is (a re-run resumes from the same
    start). Returns ``target``."""
    base, checkpoint = demo_model_paths(source)
    target = Path(target)
    if (target / SHIPPED_CHECKPOINT).is_file():
        return target
    record = [Path(source) / name for name in TRAINING_RECORD_FILES]
    _staged_model_folder(base, checkpoint, target, [p for p in record if p.is_file()]).replace(target)
    return target


SHIPPED_RECORD = "shipped.json"  # in a work folder: digests of the checkpoints shipped from it


def checkpoint_digest(path) -> str:
    """The SHA-256 of a checkpoint file (hex): which model a continuation started from."""
    import hashlib

    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()


def record_shipped(work, checkpoint) -> None:
    """Note in ``work``'s shipped.json (atomically) that ``checkpoint`` was shipped from this work folder, so a
    re-run of the same continuation, whose source is now that shipped model, still resumes here."""
    from mimicmotion.training.trainer import write_json_atomic

    digests = shipped_digests(work)
    digest = checkpoint_digest(checkpoint)
    if digest not in digests:
        write_json_atomic(Path(work) / SHIPPED_RECORD, {"shipped_sha256": sorted(digests | {digest})})


def shipped_digests(work) -> set:
    """The checkpoint digests ``record_shipped`` noted in ``work`` (empty when nothing was shipped from it)."""
    path = Path(work) / SHIPPED_RECORD
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text())["shipped_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable record of shipped models ({exc}); remove it") from exc


def check_vae_downscale(vae_dir, downscale: int) -> int:
    """``downscale`` if it is a demo architecture and agrees with the VAE an earlier run saved in ``vae_dir`` (a
    re-run resumes with that VAE, so asking for another architecture in the same work folder is refused)."""
    if downscale not in DEMO_DOWNSCALES:
        raise ConfigError(f"vae_downscale must be one of {DEMO_DOWNSCALES}, got {downscale}")
    config = Path(vae_dir) / "config.json"
    if config.is_file():
        saved = vae_downscale(json.loads(config.read_text()))
        if saved != downscale:
            raise ConfigError(f"{vae_dir} holds a VAE that downsamples by {saved}, not {downscale}: use a fresh --work "
                              f"folder for the other architecture, or pass vae_downscale={saved} to resume")
    return downscale


def check_continuation(work, source) -> None:
    """Refuse a continuation of ``source`` in a work folder whose ``start/`` holds another model: its stages
    (run/, vae-*/, decoder pairs, eval/) belong to that earlier continuation and would be resumed or skipped
    silently. The same source (a re-run resumes) and a model shipped from this work folder (the re-run of a
    shipped continuation) are accepted; so is a work folder without a start yet."""
    start_checkpoint = Path(work) / "start" / SHIPPED_CHECKPOINT
    if not start_checkpoint.is_file():
        return
    _, checkpoint = demo_model_paths(source)
    digest = checkpoint_digest(checkpoint)
    started = checkpoint_digest(start_checkpoint)
    if digest != started and digest not in shipped_digests(work):
        raise ConfigError(
            f"work folder {work} already holds a continuation of another model (its start/ checkpoint has sha256 "
            f"{started[:12]}..., {checkpoint} has {digest[:12]}...): its stages belong to that run and would be "
            "resumed or skipped. Continue in a fresh --work folder, or pass the model that run started from to "
            "resume it")


def base_with_vae(base_dir, vae_dir, target) -> Path:
    """A copy of the base folder ``base_dir`` whose VAE is the one saved in ``vae_dir`` (e.g. a decoder trained
    on), written to ``target`` in one rename. A ``target`` holding exactly these files is kept (a re-run
    resumes with the same model); one made from another VAE or base (e.g. a decoder adapted again) is made
    anew, so its files' times change and evaluations do not reuse its renders. The VAE folder's other files
    (its metrics.json) are not copied. Returns ``target``."""
    import shutil

    target = Path(target)
    if not (Path(vae_dir) / "config.json").is_file():
        raise ConfigError(f"{vae_dir} holds no saved VAE (config.json); train the decoder stage first")
    stale = target.with_name(f".{target.name}.stale")
    if (target / "model_index.json").is_file():
        if (folder_digest(target, skip={"vae"}) == folder_digest(base_dir, skip={"vae"})
                and folder_digest(target / "vae") == folder_digest(vae_dir, skip={"metrics.json"})):
            return target
        if stale.exists():
            shutil.rmtree(stale)
        target.replace(stale)  # a copy of files kept elsewhere: removed once the new copy is in place
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(base_dir, tmp, ignore=shutil.ignore_patterns(".*", "vae"))
    shutil.copytree(vae_dir, tmp / "vae", ignore=shutil.ignore_patterns(".*", "metrics.json"))
    tmp.replace(target)
    if stale.exists():
        shutil.rmtree(stale)
    return target


def prior_training(folder) -> dict:
    """What a demo model folder's ``summary.json`` records of how it was made: ``{"vae": ..., "train": ...}``
    (empty dicts when the folder has no summary), so a model trained on from it can report its totals."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return {"vae": {}, "train": {}}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable JSON summary ({exc}); remove it or restore the demo model "
                          "folder it came with") from exc
    return {"vae": summary.get("vae") or {}, "train": summary.get("train") or {}}


def training_record(metrics_csv, prior: Optional[dict] = None) -> dict:
    """Totals of a run's metrics.csv (rank 0's rows, one per step): steps, training seconds (the sum of
    step and data times, so restarts and start-up are not counted), and the mean loss of the first and
    last 100 steps. ``prior``: the training record of the model this run started from (``prior_training``);
    then ``total_steps`` / ``total_train_seconds`` add it, ``continued_from`` keeps its totals and ``stages``
    (lines saying how its stages were trained, e.g. one on a GPU outside the flow) is carried over, followed by
    a line for the start model's own flow run (``flow_run_stage``) when it had one."""
    import csv

    with open(metrics_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    if not rows:
        raise ConfigError(f"{metrics_csv} has no steps")
    loss = [float(r["loss"]) for r in rows]
    seconds = sum(float(r["step_time_s"]) + float(r.get("data_time_s") or 0) for r in rows)
    record = dict(steps_logged=len(rows), train_seconds=round(seconds, 1),
                  first_loss=round(float(np.mean(loss[:100])), 4), last_loss=round(float(np.mean(loss[-100:])), 4))
    if prior:
        before = dict(steps=int(prior.get("total_steps", prior.get("step") or 0)),
                      train_seconds=float(prior.get("total_train_seconds", prior.get("train_seconds") or 0.0)))
        record.update(continued_from=before, total_steps=before["steps"] + len(rows),
                      total_train_seconds=round(before["train_seconds"] + seconds, 1))
        # the start model's history, as its card told it, then the start model's own flow run (its card's
        # "UNet + PoseNet" line, which this run's line replaces)
        stages = list(prior.get("stages") or [])
        if prior.get("steps_logged") and prior.get("config"):
            stages.append(flow_run_stage(prior))
        if stages:
            record["stages"] = stages
    return record


def flow_run_stage(run: dict) -> str:
    """A Stage line for a train-flow run's record (``run`` as the demo_model flow's summary keeps it), for the
    card of a model trained on from it."""
    config = run["config"]
    decay = f", decaying to 0 over the last {config['decay_steps']}" if config.get("decay_steps") else ""
    backend = run.get("backend", "ray")
    return (f"{run['steps_logged']} steps through the train flow ({'Ray Train' if backend == 'ray' else backend}, "
            f"{run.get('workers', 1)} workers x batch {config.get('batch_size', 1)}, {run.get('clips', '?')} clips, "
            f"lr {config.get('lr')}{decay}, train seed {config.get('seed')}; {float(run['train_seconds']):.0f} s of "
            f"training; loss {run.get('first_loss')} -> {run.get('last_loss')}, first and last 100 steps): "
            "the model this run continued")


def model_card(summary: dict) -> str:
    """The shipped model's card: data, recipe, time and measured results (from the demo_model flow's summary)."""
    vae, run, evaluation = summary.get("vae", {}), summary.get("train", {}), summary.get("evaluation", {})
    lines = [
        "# MimicMotion demo model", "",
        "A small model with the real architecture (SVD UNet with PoseNet, temporal-decoder VAE, CLIP vision",
        "encoder), trained from scratch by this project on procedural dancers (`mimicmotion.synthetic`) with",
        "its own curate and train flows (`flows/demo_model.py`). It renders 128x192 portrait clips on a CPU.",
        "It knows only the synthetic figures: it is a working demonstration of the pipeline, not a model for",
        "real people.", "",
        *(["It was trained in stages, not all of them necessarily in those flows (e.g. one on a GPU machine",
           "without Prefect or Ray); the Stage lines below say where and how.", ""] if run.get("stages") else []),
        "## Recipe", "",
        *([_data_line(summary["data"])] if isinstance(summary.get("data"), dict) else []),
        f"- VAE ({vae.get('downscale', 8)}x downsampling: latents {192 // vae.get('downscale', 8)} x "
        f"{128 // vae.get('downscale', 8)}): {_picked(vae, ('frames', 'psnr', 'ssim', 'scaling_factor', 'seconds'))}; "
        "pre-trained on single frames, its temporal decoder held frame-wise (`hold_decoder_framewise`)",
        *([f"- VAE decoder, trained on with its encoder frozen (L1 + MSE + {vae['decoder'].get('ssim_weight')} x "
           f"(1 - SSIM)): {_picked(vae['decoder'], ('step', 'psnr', 'ssim', 'seconds'))}"
           + _earlier_decoder_stage(vae["decoder"])]
          if isinstance(vae.get("decoder"), dict) else []),
        *([f"- Whole VAE (encoder too) trained on from the earlier demo model's (L1 + MSE + "
           f"{vae['continued'].get('ssim_weight')} x (1 - SSIM)): "
           f"{_picked(vae['continued'], ('step', 'psnr', 'ssim', 'seconds'))}; its latents moved, so the UNet "
           "below trained on with them"] if isinstance(vae.get("continued"), dict) else []),
        *([_adapted_line(vae["adapted"])] if isinstance(vae.get("adapted"), dict) else []),
        "- UNet + PoseNet: "
        + _picked(run, ("step", "workers", "clips", "train_seconds", "first_loss", "last_loss"), all_keys=True),
        *([f"- Continued from an earlier demo model trained {run['continued_from']['steps']} steps "
           f"({run['continued_from']['train_seconds']:.0f} s): {run['total_steps']} steps, "
           f"{run['total_train_seconds']:.0f} s of training in all (the continuation's loss is logged from its "
           "own step 1)"] if run.get("continued_from") else []),
        *[f"- Stage: {stage}" for stage in run.get("stages") or []],
        f"- Config: {json.dumps(run.get('config', DEMO_TRAIN_CONFIG))}",
        "- CLIP image encoder: random initialisation, frozen (see mimicmotion/demo_model.py).", "",
        "## Results on the test split", "", "```", json.dumps(evaluation, indent=2, default=str), "```", "",
        *_baseline_verdicts(evaluation),
    ]
    return "\n".join(lines)


def _data_line(data: dict) -> str:
    extra = data.get("extra_train_videos") or 0
    more = f", and {extra} more training videos (seed {data.get('seed', 0) + 1})" if extra else ""
    return (f"- Data: {data.get('videos')} procedural videos (`generate_dataset`, seed {data.get('seed', 0)}; a fifth "
            f"of them the test split){more}; curated from their pose sidecars")


def _picked(record: dict, keys, all_keys: bool = False) -> str:
    """JSON of ``record``'s entries under ``keys`` (those it has; ``all_keys``: every key, null when missing)."""
    return json.dumps({k: record.get(k) for k in keys if all_keys or k in record}, default=str)


def _adapted_line(adapted: dict) -> str:
    """The model card's line for the decoder adaptation; says which clips scored it."""
    validation = adapted.get("held_out_source") == "validation"
    held = (f"{adapted.get('held_out', 0)} validation clips (test videos the evaluation leaves out)" if validation
            else f"{adapted.get('held_out', 0)} held-out clips of training videos")
    how = "encoder frozen, time taps trained" if adapted.get("temporal") else "encoder frozen"
    return (f"- VAE decoder adapted to the UNet's own samples (`adapt_decoder`, {how}; trained on "
            f"{adapted.get('pairs')} training clips sampled at guidance {adapted.get('guidance')}, "
            f"{adapted.get('step')} steps, {adapted.get('seconds', 0):.0f} s): the samples of {held} decode at "
            f"{_scores(adapted.get('before'))} before, {_scores(adapted.get('after'))} after")


def _scores(scores) -> str:
    """"SSIM s / PSNR p dB" of a ``pair_scores`` dict ("-" without one)."""
    if not isinstance(scores, dict):
        return "-"
    return f"SSIM {scores.get('ssim', float('nan')):.3f} / PSNR {scores.get('psnr', float('nan')):.2f} dB"


def _earlier_decoder_stage(decoder: dict) -> str:
    """", after an earlier decoder stage of N steps (SSIM weight w, held-out SSIM s)" for each stage before this
    one (a decoder trained on again from a finished demo model); "" for a first stage."""
    earlier = decoder.get("continued_from")
    if not isinstance(earlier, dict):
        return ""
    return (f", after an earlier decoder stage of {earlier.get('step')} steps (SSIM weight "
            f"{earlier.get('ssim_weight')}, held-out SSIM {earlier.get('ssim', float('nan')):.3f})"
            + _earlier_decoder_stage(earlier))


def _baseline_verdicts(evaluation) -> list:
    """One line per baseline: does the model beat it on SSIM and PSNR (the issue's bar)?"""
    rows = {r.get("method"): r for r in evaluation} if isinstance(evaluation, list) else {}
    model = rows.get("mimicmotion")
    if model is None:
        return []
    lines = []
    for name, row in rows.items():
        if name == "mimicmotion":
            continue
        if name == "vae_reconstruction":  # a ceiling, not a baseline
            lines.append(f"- ceiling: the test frames through the VAE score SSIM {row.get('ssim'):.3f}, PSNR "
                         f"{row.get('psnr'):.2f} dB; no model that decodes with this VAE can do better.")
            continue
        beats = [m for m in ("ssim", "psnr") if model.get(m, float("nan")) > row.get(m, float("nan"))]
        verdict = "beats it on " + " and ".join(beats) if beats else "does not beat it"
        lines.append(f"- against {name}: the model {verdict} (SSIM {model.get('ssim'):.3f} vs {row.get('ssim'):.3f}, "
                     f"PSNR {model.get('psnr'):.2f} vs {row.get('psnr'):.2f} dB).")
    return lines + [""]
