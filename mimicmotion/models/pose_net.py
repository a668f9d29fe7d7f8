"""PoseNet: the small convolutional encoder that turns pose images into UNet input features (SPEC section 5).

Eight 2-D convolutions, each followed by SiLU, take a pose image (3, H, W) in [-1, 1] down by 8 to the latent
grid (128, H/8, W/8); a zero-initialised 1x1 projection maps that to the UNet's first block width (320 for
SVD) and a learnable scalar (2.0 at start) scales the result. Parameter names match the released weights:
``conv_layers.{0,2,...,14}.{weight,bias}``, ``final_proj.{weight,bias}``, ``scale``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from mimicmotion.errors import ConfigError

# (in, out, kernel, stride) of the eight convolutions; padding is 1 throughout. The stride-2, kernel-4
# layers halve the size exactly, so H/8 x W/8 comes out for H, W divisible by 8.
CONV_SPECS = (
    (3, 3, 3, 1),
    (3, 16, 4, 2),
    (16, 16, 3, 1),
    (16, 32, 4, 2),
    (32, 32, 3, 1),
    (32, 64, 4, 2),
    (64, 64, 3, 1),
    (64, 128, 3, 1),
)
FEATURE_CHANNELS = CONV_SPECS[-1][1]
INITIAL_SCALE = 2.0
DOWNSCALES = (2, 4, 8)


def conv_specs(downscale: int = 8) -> tuple:
    """The convolutions for a VAE that downsamples by ``downscale``: the released layout for 8 (SVD's VAE);
    for 4 or 2 the last one or two stride-2 layers become stride-1 kernel-3 layers, so the features come out
    on that VAE's latent grid (a small demo VAE with fewer blocks). Channels and parameter names are kept."""
    if downscale not in DOWNSCALES:
        raise ConfigError(f"PoseNet downscale must be one of {DOWNSCALES} (the VAE's downsampling), got {downscale}")
    halvings = {8: 3, 4: 2, 2: 1}[downscale]
    specs, seen = [], 0
    for c_in, c_out, k, s in CONV_SPECS:
        if s == 2:
            seen += 1
            if seen > halvings:
                k, s = 3, 1
        specs.append((c_in, c_out, k, s))
    return tuple(specs)


def vae_downscale(vae_config) -> int:
    """How much a diffusers VAE downsamples (8 for SVD's), from its config: 2 ** (blocks - 1)."""
    blocks = vae_config["block_out_channels"] if isinstance(vae_config, Mapping) else vae_config.block_out_channels
    return 2 ** (len(blocks) - 1)


def he_normal_std(conv: nn.Conv2d) -> float:
    """He-normal standard deviation sqrt(2 / fan_in) with fan_in = k_h * k_w * C_in (as the release)."""
    fan_in = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels
    return math.sqrt(2.0 / fan_in)


class PoseNet(nn.Module):
    """Pose images (N, 3, H, W) or (B, F, 3, H, W) in [-1, 1] -> features (N or B*F, C, H/d, W/d), d = 8.

    ``noise_latent_channels`` is the UNet's ``block_out_channels[0]`` (320 for SVD). At initialisation the
    output is exactly zero (zero projection), so a fresh PoseNet leaves the UNet unchanged. ``downscale``: the
    VAE's downsampling d (``vae_downscale``); 8, the release's, unless a small VAE has fewer blocks.
    """

    def __init__(self, noise_latent_channels: int = 320, downscale: int = 8):
        super().__init__()
        self.downscale = int(downscale)
        layers: list[nn.Module] = []
        for c_in, c_out, k, s in conv_specs(self.downscale):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=1), nn.SiLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(FEATURE_CHANNELS, noise_latent_channels, kernel_size=1)
        self.reset_parameters()
        self.scale = nn.Parameter(torch.full((1,), INITIAL_SCALE))

    @property
    def noise_latent_channels(self) -> int:
        return self.final_proj.out_channels

    # ``device`` / ``dtype`` as diffusers models have them: DiffusionPipeline.device asks every component.
    @property
    def device(self) -> torch.device:
        return self.scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    def reset_parameters(self) -> None:
        """He-normal convolutions with zero bias; zero final projection (weight and bias)."""
        for module in self.conv_layers:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=he_normal_std(module))
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    def forward(self, pose_images: torch.Tensor) -> torch.Tensor:
        if pose_images.ndim == 5:
            pose_images = pose_images.flatten(0, 1)
        elif pose_images.ndim != 4:
            raise ConfigError(
                f"PoseNet expects pose images shaped (N, 3, H, W) or (B, F, 3, H, W), got {tuple(pose_images.shape)}"
            )
        features = self.final_proj(self.conv_layers(pose_images))
        return features * self.scale
