"""Speed and memory options of the render path that leave its results within float noise.

They act on a loaded pipeline, in place, and are all off by default (the release's path):

- ``channels_last``: the UNet's and PoseNet's convolutions in NHWC, the layout tensor cores prefer;
- ``forward_chunk_size``: the transformer blocks' feed-forward layers run over chunks of the batch
  (diffusers' feed-forward chunking), which bounds the largest activation at the cost of a little speed;
- ``compile_unet``: ``torch.compile`` of the UNet (in place, the module keeps its class and config), with
  inductor's on-disk cache in ``compile_cache_dir`` so a second process starts fast.

Guidance and tile batching (``batch_guidance``, ``tiles_per_batch``), offload (``pipe.offload``) and chunked
decoding (``decode_chunk_size``) are pipeline call options; dtype is a load option.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from mimicmotion.errors import ConfigError


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False
    forward_chunk_size: Optional[int] = None
    compile_unet: bool = False
    compile_mode: Optional[str] = None  # torch.compile mode: None (default), "max-autotune", ...
    compile_backend: str = "inductor"
    compile_cache_dir: Optional[str] = None

    def validate(self) -> "SpeedOptions":
        if self.forward_chunk_size is not None and (isinstance(self.forward_chunk_size, bool)
                                                    or not isinstance(self.forward_chunk_size, int)
                                                    or self.forward_chunk_size < 1):
            raise ConfigError(f"forward_chunk_size must be a positive integer or None (got {self.forward_chunk_size!r})")
        if self.compile_mode is not None and not self.compile_unet:
            raise ConfigError("compile_mode is set but compile_unet is off: turn compile_unet on or drop compile_mode")
        return self


def apply_speed_options(pipe, options: SpeedOptions):
    """Apply ``options`` to ``pipe`` (in place); returns the pipeline. Applying the same options twice is a no-op."""
    options.validate()
    if options.channels_last:
        _conv2d_layout(pipe.unet, torch.channels_last)
        _conv2d_layout(pipe.pose_net, torch.channels_last)
    if options.forward_chunk_size is not None:
        pipe.unet.enable_forward_chunking(chunk_size=options.forward_chunk_size, dim=0)
    if options.compile_unet and not getattr(pipe.unet, "_mimicmotion_compiled", False):
        if options.compile_cache_dir:
            # inductor reads its cache location from the environment when it first compiles
            os.makedirs(options.compile_cache_dir, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(options.compile_cache_dir)
        pipe.unet.compile(mode=options.compile_mode, backend=options.compile_backend, dynamic=False)
        pipe.unet._mimicmotion_compiled = True
    return pipe


def reset_speed_options(pipe):
    """Undo the reversible options (layout, feed-forward chunking); a compiled UNet stays compiled."""
    _conv2d_layout(pipe.unet, torch.contiguous_format)
    _conv2d_layout(pipe.pose_net, torch.contiguous_format)
    _set_chunking(pipe.unet, None)
    return pipe


def _set_chunking(module: torch.nn.Module, chunk_size: Optional[int]) -> None:
    for child in module.modules():
        if hasattr(child, "set_chunk_feed_forward"):
            child.set_chunk_feed_forward(chunk_size=chunk_size, dim=0)


def _conv2d_layout(module: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Re-lay the 2-D convolutions' weights (``Module.to(memory_format=...)`` also hits the temporal
    layers' 5-D weights, which channels_last cannot hold)."""
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, torch.nn.Conv2d):
                child.weight.data = child.weight.data.contiguous(memory_format=memory_format)
