"""A tiny, randomly initialised MimicMotion with the real model's structure, for tests and demos.

Every component is the class the real model uses (SVD UNet with pose injection, temporal-decoder VAE with
8x down-sampling, CLIP vision model with projection, Euler scheduler with SVD-xt's config, CLIP image
processor, PoseNet), only narrow: the whole model is about 2.0M parameters and runs a 64x64 clip in a
fraction of a second on a CPU. ``save_tiny_model`` writes it in the layout ``load_pipeline`` reads: an SVD
base folder in diffusers layout plus a checkpoint with ``unet.*`` and ``pose_net.*`` keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

# scheduler/scheduler_config.json of stabilityai/stable-video-diffusion-img2vid-xt (and -xt-1-1).
SVD_XT_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}

# OpenAI CLIP normalisation (feature_extractor/preprocessor_config.json of SVD).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_IMAGE_SIZE = 224

TINY_CLIP_DIM = 32
# The real UNet: blocks (320, 640, 1280, 1280), three cross-attention down blocks then a plain one, mirrored
# on the way up. The tiny one keeps one of each kind; GroupNorm needs widths divisible by 32.
TINY_UNET_CONFIG = dict(
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    num_attention_heads=(2, 4),
    cross_attention_dim=TINY_CLIP_DIM,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=3 * 8,  # fps-1, motion bucket, noise augmentation
    transformer_layers_per_block=1,
    num_frames=8,
)
# Four blocks like the real VAE (128, 256, 512, 512): the latent grid is H/8 x W/8.
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    scaling_factor=0.18215,
    force_upcast=True,
)
TINY_CLIP_CONFIG = dict(
    hidden_size=TINY_CLIP_DIM,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=CLIP_IMAGE_SIZE,
    patch_size=32,
    projection_dim=TINY_CLIP_DIM,
    hidden_act="gelu",  # SVD's ViT-H/14 image encoder uses gelu, not CLIP's default quick_gelu
)

# model_index.json of the SVD pipeline (what `from_pretrained` of diffusers' SVD pipeline reads).
SVD_MODEL_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}

# Component seeds are offsets of the caller's seed, so each component is the same whatever else is built.
_SEED_OFFSETS = {"unet": 0, "vae": 1, "image_encoder": 2, "pose_net": 3, "base_unet": 4}


def _seeded(seed: int, component: str, build):
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed + _SEED_OFFSETS[component])
        return build()


def tiny_unet_config(sample_size: int = 64) -> dict:
    return dict(TINY_UNET_CONFIG, sample_size=sample_size // 8)


def tiny_components(seed: int = 0, sample_size: int = 64) -> dict:
    """The six pipeline components (vae, image_encoder, unet, scheduler, feature_extractor, pose_net), tiny
    and randomly initialised; the same seed gives identical weights. ``sample_size`` is the nominal pixel
    size (the UNet config's ``sample_size`` is its latent size, ``sample_size // 8``); any size that is a
    multiple of 16 runs."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mimicmotion.models.pose_net import PoseNet, vae_downscale
    from mimicmotion.models.unet import PoseConditionedUNet

    unet = _seeded(seed, "unet", lambda: PoseConditionedUNet(**tiny_unet_config(sample_size)))
    vae = _seeded(seed, "vae", lambda: AutoencoderKLTemporalDecoder(**TINY_VAE_CONFIG, sample_size=sample_size))
    image_encoder = _seeded(seed, "image_encoder",
                            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG)))
    pose_net = _seeded(seed, "pose_net", lambda: PoseNet(unet.config.block_out_channels[0], vae_downscale(vae.config)))
    return dict(
        vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG),
        feature_extractor=clip_feature_extractor(), pose_net=pose_net.eval(),
    )


def clip_feature_extractor():
    """SVD's CLIP image processor settings (224x224, OpenAI normalisation)."""
    from mimicmotion.loading import clip_image_processor_class

    return clip_image_processor_class()(
        image_mean=list(CLIP_IMAGE_MEAN), image_std=list(CLIP_IMAGE_STD),
        size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )


def save_base_folder(base, comps: dict, *, weights_variant: Optional[str] = None, base_unet=None) -> Path:
    """Write an SVD base folder in diffusers layout from pipeline components: VAE, image encoder, scheduler,
    feature extractor and model_index.json, plus the UNet's config (as the stock SVD class) and, when
    ``base_unet`` is given, its weights. ``weights_variant="fp16"`` writes the weights as fp16 variants."""
    import diffusers
    from diffusers import UNetSpatioTemporalConditionModel

    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)

    def base_copy(module):
        # fp16 variant files hold fp16 tensors; the components stay float32 for the checkpoint.
        return module if weights_variant is None else _cast_copy(module, torch.float16)

    # The base's UNet is the stock SVD class: its config must read as SVD's, not as PoseConditionedUNet.
    if base_unet is not None:
        base_copy(base_unet).save_pretrained(base / "unet", variant=weights_variant)
    else:
        unet_config = {k: v for k, v in comps["unet"].config.items() if not k.startswith("_")}
        with torch.device("meta"):
            UNetSpatioTemporalConditionModel(**unet_config).save_config(base / "unet")
    base_copy(comps["vae"]).save_pretrained(base / "vae", variant=weights_variant)
    base_copy(comps["image_encoder"]).save_pretrained(base / "image_encoder", variant=weights_variant)
    comps["scheduler"].save_pretrained(base / "scheduler")
    comps["feature_extractor"].save_pretrained(base / "feature_extractor")
    model_index = dict(SVD_MODEL_INDEX, _diffusers_version=diffusers.__version__)
    (base / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    return base


def save_tiny_model(directory, seed: int = 0, *, checkpoint_format: str = "safetensors",
                    checkpoint_dtype: Optional[torch.dtype] = None, base_unet_weights: bool = False,
                    weights_variant: Optional[str] = None, sample_size: int = 64) -> tuple:
    """Write ``tiny_components(seed)`` as ``load_pipeline`` expects it; returns (base_dir, checkpoint_path).

    ``directory/svd-tiny/``: the base folder in diffusers' SVD layout (model_index.json, unet/config.json,
    vae/, image_encoder/, scheduler/, feature_extractor/). ``directory/mimicmotion-tiny.safetensors`` (or
    ``.pth`` with ``checkpoint_format="pth"``: a flat torch state dict like the released checkpoint) holds
    ``unet.*`` and ``pose_net.*``, cast to ``checkpoint_dtype`` if given (the release ships fp16).

    ``base_unet_weights``: also write UNet weights into the base folder, as the real SVD folder has; they are
    a *different* random draw, standing for the SVD weights that the checkpoint replaces.
    ``weights_variant="fp16"``: write the base's weight files only as fp16 variants
    (``*.fp16.safetensors``), like a download of SVD's fp16 files only.
    """
    from diffusers import UNetSpatioTemporalConditionModel

    from mimicmotion.loading import save_checkpoint

    if checkpoint_format not in ("safetensors", "pth"):
        raise ValueError(f"checkpoint_format must be 'safetensors' or 'pth', got {checkpoint_format!r}")
    if weights_variant not in (None, "fp16"):
        raise ValueError(f"weights_variant must be None or 'fp16', got {weights_variant!r}")
    out = Path(directory)
    comps = tiny_components(seed, sample_size)
    stock = None
    if base_unet_weights:
        stock = _seeded(seed, "base_unet", lambda: UNetSpatioTemporalConditionModel(**tiny_unet_config(sample_size)))
    base = save_base_folder(out / "svd-tiny", comps, weights_variant=weights_variant, base_unet=stock)

    modules = {"unet": comps["unet"], "pose_net": comps["pose_net"]}
    if checkpoint_dtype is not None:
        modules = {name: _cast_copy(m, checkpoint_dtype) for name, m in modules.items()}
    if checkpoint_format == "safetensors":
        checkpoint = save_checkpoint(modules, out / "mimicmotion-tiny.safetensors")
    else:
        checkpoint = out / "mimicmotion-tiny.pth"
        state = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
        torch.save(state, checkpoint)
    return base, checkpoint


def _cast_copy(module, dtype: torch.dtype):
    import copy

    # torch.nn.Module.to: diffusers' override warns on every dtype cast.
    return torch.nn.Module.to(copy.deepcopy(module), dtype)
