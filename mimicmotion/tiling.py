"""Tile plan and position-aware fusion weights (SPEC section 6): small pure functions.

A video of F frames (frame 0 = the reference) is covered by tiles of T frames that overlap by O frames
after the reference. Every tile starts with frame 0. At every denoising step the model outputs of all
tiles are blended with triangular weights that peak at the tile's centre, so a frame deep inside a tile
counts more than one at its edge.
"""
from __future__ import annotations

import numpy as np
import torch

from mimicmotion.errors import ConfigError


def validate_tiling(num_frames: int, tile_size: int, tile_overlap: int) -> None:
    if num_frames < 1:
        raise ConfigError(f"num_frames must be >= 1 (got {num_frames}): pass at least the reference pose")
    if tile_size < 2:
        raise ConfigError(f"tile_size must be >= 2 (got {tile_size}): the release uses 72 (16 for the 16-frame model)")
    if not 0 <= tile_overlap < tile_size - 1:
        raise ConfigError(
            f"tile_overlap must be in [0, tile_size - 2] (got overlap {tile_overlap} with tile_size {tile_size}): "
            "tiles must advance by at least one frame; the release uses 6 with 72"
        )


def effective_tile_size(num_frames: int, tile_size: int) -> int:
    """The release crashes when F < T; here the whole video becomes one short tile."""
    return min(tile_size, num_frames)


def tile_plan(num_frames: int, tile_size: int, tile_overlap: int) -> list[list[int]]:
    """Frame indices of each tile, reference frame 0 first in every tile.

    For F >= T this is the release's plan: starts i = 0, T-O, 2(T-O), ... while i <= F-T, tile =
    [0, i+1, ..., i+T-1]; if the last tile stops short of F-1, one more tile [0, F-T+1, ..., F-1].
    For F < T: a single tile of all F frames.
    """
    validate_tiling(num_frames, tile_size, tile_overlap)
    if num_frames <= tile_size:
        return [list(range(num_frames))]
    stride = tile_size - tile_overlap
    tiles = [[0, *range(i + 1, i + tile_size)] for i in range(0, num_frames - tile_size + 1, stride)]
    if tiles[-1][-1] < num_frames - 1:
        tiles.append([0, *range(num_frames - tile_size + 1, num_frames)])
    return tiles


def tile_weights(tile_size: int, device=None) -> torch.Tensor:
    """Triangular position weights w_j = min((j+0.5)*2/T, 2-(j+0.5)*2/T), float32 as in the release."""
    w = (torch.arange(tile_size, device=device) + 0.5) * 2.0 / tile_size
    return torch.minimum(w, 2 - w)


def fuse_tile_outputs(tile_outputs, tiles, weights: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Weighted average of per-tile model outputs over the frames they cover.

    ``tile_outputs[k]`` has shape (B, len(tiles[k]), C, h, w). Accumulation runs in tile order in the
    outputs' dtype (as the release does), so any executor that returns the same tile outputs produces
    bit-identical fused results.
    """
    first = tile_outputs[0]
    fused = first.new_zeros((first.shape[0], num_frames, *first.shape[2:]))
    count = first.new_zeros((num_frames,))
    for idx, out in zip(tiles, tile_outputs):
        w = weights[: len(idx)].to(out.device)
        fused[:, idx] += out * w[:, None, None, None]
        count[idx] += w
    if bool((count == 0).any()):
        raise ValueError("tile plan leaves frames uncovered")
    return fused.div_(count[:, None, None, None])


def blend_segments(segment_frames, tiles, num_frames: int) -> np.ndarray:
    """The naive alternative to progressive fusion: tiles rendered as independent videos, blended once in
    pixel space with the same triangular weights. ``segment_frames[k]``: float or uint8 (len(tiles[k]), H, W, C)
    for the frames of ``tiles[k]``. Returns float32 (num_frames, H, W, C); frames no tile covers stay 0."""
    first = np.asarray(segment_frames[0])
    out = np.zeros((num_frames, *first.shape[1:]), np.float64)
    total = np.zeros(num_frames, np.float64)
    for idx, frames in zip(tiles, segment_frames):
        frames = np.asarray(frames, np.float64)
        if len(frames) != len(idx):
            raise ConfigError(f"a segment has {len(frames)} frames for a tile of {len(idx)}")
        w = tile_weights(len(idx)).double().numpy()
        out[idx] += frames * w[:, None, None, None]
        total[idx] += w
    covered = total > 0
    out[covered] /= total[covered][:, None, None, None]
    return out.astype(np.float32)


def segment_boundaries(tiles, num_frames: int) -> list[int]:
    """Frames t >= 2 where the set of tiles covering frame t differs from that of frame t-1: where
    independently rendered segments would show a seam (frame 0, the reference, is in every tile)."""
    cover = [frozenset(k for k, idx in enumerate(tiles) if f in idx) for f in range(num_frames)]
    return [t for t in range(2, num_frames) if cover[t] != cover[t - 1]]
