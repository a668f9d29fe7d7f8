"""Training samples from the catalog (SPEC section 7): a reference frame plus a window of consecutive
sampled frames of one clip, with their confidence-aware pose images (SPEC 3) and hand-region masks.

One item is one clip. ``select_clips`` picks the clip ids (a named catalog query or SQL with bound
parameters); ``TrainingClips`` turns them into tensors:

- window: ``num_frames`` consecutive sampled frames of the clip, starting at a random position when the
  clip is longer (drawn from (seed, epoch, clip id), so every rank and every rerun agrees);
- reference (position 0): ``"random"`` picks any frame of the same *video* that has a subject pose (in any
  of the video's clips, drawn from the same (seed, epoch, clip id) stream), ``"first"`` repeats the
  window's first frame. It is cropped with this clip's crop box and its pose mapped into that crop;
- frames are decoded at the clip's source indices, cropped with the clip's box and resized to
  (height, width); poses are the clip's subject only (inference draws one person), in crop-normalised
  coordinates, which are the resized frame's.

Clips shorter than ``num_frames`` are skipped with a logged warning (a selection may mix lengths); only
when no clip is long enough is that a ConfigError. Sharding for DDP: the sorted clip list is shuffled by
(seed, epoch), padded by wrapping to a multiple of ``world_size`` and dealt round-robin, so every rank has
the same number of items (a rank with fewer batches would leave the others waiting in all-reduce).
A clip that appears twice after padding gets the same window both times (its draws depend only on
(seed, epoch, clip id)). The epoch lives in a shared-memory tensor, so ``set_epoch`` in the main process
reaches DataLoader workers, persistent ones included (call it before iterating the epoch's loader).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow.compute as pc
import torch

from catalog.api import Catalog
from catalog.queries import named_query
from catalog.store import read_part
from mimicmotion.curation import crop_and_resize, to_crop_coordinates
from mimicmotion.errors import ConfigError, VideoError
from mimicmotion.pose.draw import draw_pose, pose_images_to_tensor
from mimicmotion.pose.layout import NUM_POINTS
from mimicmotion.training import objective
from mimicmotion.video import read_frames

logger = logging.getLogger(__name__)

REFERENCE_MODES = ("random", "first")
LATENT_FACTOR = 8  # SVD's VAE downsampling: the hand mask lives on the (H/8, W/8) latent grid
ASPECT_TOLERANCE = 0.01  # a crop may be resized to a size of a slightly different aspect (rounding)
_LIST_LIMIT = 5  # how many offending clips an error message names


# ----------------------------------------------------------------------------------------------------
# Choosing clips

def select_clips(catalog_root, query: str = "training_clips", params: Optional[dict] = None,
                 sql: Optional[str] = None) -> list[str]:
    """Clip ids (sorted, unique) from the named catalog query ``query`` with ``params``, or, when ``sql`` is
    given (``query`` is then ignored), from that SQL (any SELECT with a ``clip_id`` column; ``params`` bind to
    its ``$name`` placeholders). ConfigError when nothing matches, naming the query, its parameters and how
    to relax them."""
    cat = Catalog(catalog_root)
    params = dict(params or {})
    named = None
    if sql is not None:
        table = cat.query(sql, params)
        what = f"the SQL query {sql.strip()!r} with parameters {params or 'none'}"
    else:
        named = named_query(query)
        table = cat.named(query, **params)
        bound = named.bind(params)
        what = f"the named query {query!r} with " + (", ".join(f"{k}={v}" for k, v in bound.items()) or "no parameters")
    if "clip_id" not in table.column_names:
        raise ConfigError(f"{what} returned the columns {', '.join(table.column_names) or 'none'} but no clip_id: "
                          "select clip_id (e.g. SELECT clip_id FROM clips WHERE ...)")
    clip_ids = sorted({c for c in table.column("clip_id").to_pylist() if c is not None})
    if clip_ids:
        return clip_ids
    total = cat.query("SELECT count(*) AS n FROM clips").column("n")[0].as_py()
    if total == 0:
        raise ConfigError(f"the catalog {cat.root} has no clips: curate videos into it first "
                          f"(`mimicmotion curate VIDEOS --catalog {cat.root}`)")
    if named is None:
        hint = "loosen its WHERE conditions"
    else:
        hint = ("relax the thresholds (lower min_* values, raise max_* values; defaults: "
                + ", ".join(f"{k}={p.default}" for k, p in named.params.items()) + ")")
    raise ConfigError(f"no clip matches {what} (the catalog has {total} clips): {hint}; "
                      f"`mimicmotion catalog stats --catalog {cat.root}` shows what the clips look like")


# ----------------------------------------------------------------------------------------------------
# Deterministic draws and sharding (pure)

def _clip_key(clip_id: str) -> int:
    return int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:16], "little")


def item_rng(seed: int, epoch: int, clip_id: str) -> np.random.Generator:
    """The random stream of one clip in one epoch: the same on every rank, worker and rerun."""
    return np.random.default_rng([seed, epoch, _clip_key(clip_id)])


def window_start(rng: np.random.Generator, clip_frames: int, num_frames: int) -> int:
    """Start of a window of ``num_frames`` inside a clip of ``clip_frames`` sampled frames (uniform)."""
    return int(rng.integers(0, clip_frames - num_frames + 1))


def shard_order(num_items: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's item indices: a (seed, epoch) permutation of range(num_items), padded by wrapping to a
    multiple of ``world_size`` and dealt round-robin. Every rank gets ceil(num_items / world_size)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    per_rank = math.ceil(num_items / world_size)
    padded = np.resize(order, per_rank * world_size)  # np.resize repeats the array cyclically
    return padded[rank::world_size]


# ----------------------------------------------------------------------------------------------------
# The dataset

@dataclass(frozen=True)
class _ClipInfo:
    clip_id: str
    video_id: str
    source_path: str
    size_bytes: int
    video_width: int
    video_height: int
    num_frames: int
    crop: tuple  # (x, y, w, h) source pixels


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _names(ids: Sequence[str]) -> str:
    ids = list(ids)
    more = f" and {len(ids) - _LIST_LIMIT} more" if len(ids) > _LIST_LIMIT else ""
    return ", ".join(ids[:_LIST_LIMIT]) + more


class TrainingClips(torch.utils.data.Dataset):
    """Training items from catalog clips; see the module docstring for the sampling rules.

    Each item: ``pixels`` and ``pose_images`` float32 (1 + num_frames, 3, height, width) in [-1, 1] (x / 127.5
    - 1), ``hand_mask`` float32 (1 + num_frames, 1, height // f, width // f) on the latent grid of a VAE that
    downsamples by ``latent_factor`` f (8, SVD's), ``clip_id`` and
    ``source_frames`` (int64 decoded-video indices); index 0 is the reference. ``cache_frames`` keeps each
    decoded, cropped frame and its pose image in memory (per DataLoader worker; use persistent workers),
    for small datasets trained for many steps.
    """

    def __init__(self, catalog_root, clip_ids: Sequence[str], *, num_frames: int = 16, height: int, width: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, reference: str = "random",
                 hand_threshold: float = objective.HAND_CONFIDENCE_THRESHOLD,
                 hand_margin: float = objective.HAND_MARGIN, cache_frames: bool = False,
                 latent_factor: int = LATENT_FACTOR):
        self.num_frames = _check_int("num_frames", num_frames, 1)
        self.latent_factor = _check_int("latent_factor", latent_factor, 1)
        for name, value in (("height", height), ("width", width)):
            if _check_int(name, value, self.latent_factor) % self.latent_factor:
                raise ConfigError(f"{name} must be a multiple of {self.latent_factor} (the VAE's downsampling), got "
                                  f"{value}; e.g. 1024 x 576 or a multiple-of-64 size of the clips' aspect")
        self.height, self.width = int(height), int(width)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be below world_size ({self.world_size}), got {rank}")
        if reference not in REFERENCE_MODES:
            raise ConfigError(f"reference must be one of {', '.join(REFERENCE_MODES)}, got {reference!r}")
        self.reference = reference
        if isinstance(hand_threshold, bool) or not isinstance(hand_threshold, Real) or not 0 <= hand_threshold <= 1:
            raise ConfigError(f"hand_threshold must be a number in [0, 1], got {hand_threshold!r}")
        if isinstance(hand_margin, bool) or not isinstance(hand_margin, Real) or not hand_margin >= 0:
            raise ConfigError(f"hand_margin must be a number >= 0 (a fraction of the hand's size), got {hand_margin!r}")
        self.hand_threshold, self.hand_margin = float(hand_threshold), float(hand_margin)
        self.cache_frames = bool(cache_frames)
        if isinstance(clip_ids, str) or not clip_ids:
            raise ConfigError("clip_ids must be a non-empty list of clip ids: choose them with "
                              "mimicmotion.training.dataset.select_clips(catalog)")

        self._catalog = Catalog(catalog_root)
        self._clips = self._load_clips(sorted(str(c) for c in clip_ids))
        self._references = self._load_reference_frames(sorted({c.video_id for c in self._clips}))
        self._frame_cache: dict = {}  # (clip_id, source_frame) -> (cropped frame, pose image), uint8 HWC
        self._pose_cache: dict = {}  # clip_id -> subject poses (num_frames arrays (P, 134, 3)), source frames
        # Shared with DataLoader workers (fork or spawn), so set_epoch reaches persistent workers too.
        self._shared_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._local_epoch = 0
        self._order = shard_order(len(self._clips), self.seed, 0, self.rank, self.world_size)

    # ---------------------------------------------------------------------------------------------- setup
    def _load_clips(self, clip_ids: list[str]) -> list[_ClipInfo]:
        table = self._catalog.query(
            """SELECT c.clip_id, c.video_id, v.source_path, v.size_bytes, v.width, v.height, c.num_frames,
                      c.crop_x, c.crop_y, c.crop_w, c.crop_h
               FROM clips c JOIN videos v USING (video_id)
               WHERE c.clip_id IN (SELECT unnest($ids))""", {"ids": sorted(set(clip_ids))})
        rows = {r["clip_id"]: r for r in table.to_pylist()}
        unknown = sorted(set(clip_ids) - set(rows))
        if unknown:
            raise ConfigError(f"{len(unknown)} clip id(s) are not in the catalog {self._catalog.root}: "
                              f"{_names(unknown)}; take ids from select_clips on this catalog")
        short = sorted({c for c in clip_ids if rows[c]["num_frames"] < self.num_frames})
        if short:
            message = (f"{len(short)} of {len(set(clip_ids))} clips have fewer than num_frames={self.num_frames} "
                       f"sampled frames: {_names(short)}")
            if len(short) == len(set(clip_ids)):
                raise ConfigError(f"{message}; lower num_frames or select longer clips "
                                  f"(select_clips(..., params={{'min_frames': {self.num_frames}}}))")
            logger.warning("%s; skipping them (select with min_frames=%d to avoid this)", message, self.num_frames)
        clips = [_ClipInfo(clip_id=c, video_id=rows[c]["video_id"], source_path=rows[c]["source_path"],
                           size_bytes=rows[c]["size_bytes"], video_width=rows[c]["width"],
                           video_height=rows[c]["height"], num_frames=rows[c]["num_frames"],
                           crop=(rows[c]["crop_x"], rows[c]["crop_y"], rows[c]["crop_w"], rows[c]["crop_h"]))
                 for c in clip_ids if rows[c]["num_frames"] >= self.num_frames]
        target = self.width / self.height
        off = sorted({c.clip_id for c in clips if abs((c.crop[2] / c.crop[3]) / target - 1) > ASPECT_TOLERANCE})
        if off:
            example = next(c for c in clips if c.clip_id == off[0])
            raise ConfigError(f"{len(off)} clip(s) have crops whose aspect differs from the training size "
                              f"{self.width}x{self.height} by more than {ASPECT_TOLERANCE:.0%} (e.g. {off[0]}: crop "
                              f"{example.crop[2]}x{example.crop[3]}): {_names(off)}; pass a height/width of the "
                              "clips' aspect (their output_width/output_height) or select clips of one aspect")
        missing = sorted({c.source_path for c in clips if not os.path.isfile(c.source_path)})
        if missing:
            logger.warning("%d source video(s) of the selected clips are missing (items from them will fail): %s",
                           len(missing), _names(missing))
        return clips

    def _load_reference_frames(self, video_ids: list[str]) -> dict:
        """video_id -> sorted decoded-video indices of the frames with a subject pose (any clip)."""
        table = self._catalog.query(
            """SELECT DISTINCT video_id, source_frame FROM poses
               WHERE is_subject AND video_id IN (SELECT unnest($ids)) ORDER BY video_id, source_frame""",
            {"ids": video_ids})
        videos = table.column("video_id").to_numpy(zero_copy_only=False)
        frames = table.column("source_frame").to_numpy().astype(np.int64)
        out = {}
        for v in video_ids:
            out[v] = frames[videos == v]
            if out[v].size == 0:
                raise ConfigError(f"video {v} of the catalog {self._catalog.root} has clips but no subject pose "
                                  "rows: the catalog is damaged; re-curate the video (--retry-failed) or rebuild")
        return out

    # ---------------------------------------------------------------------------------------------- Dataset
    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the shards and redraw windows and references for ``epoch`` (call before each epoch)."""
        self._shared_epoch.fill_(_check_int("epoch", epoch, 0))
        self._sync_epoch()

    @property
    def epoch(self) -> int:
        return int(self._shared_epoch)

    def _sync_epoch(self) -> int:
        epoch = int(self._shared_epoch)
        if epoch != self._local_epoch:
            self._order = shard_order(len(self._clips), self.seed, epoch, self.rank, self.world_size)
            self._local_epoch = epoch
        return epoch

    def __len__(self) -> int:
        return len(self._order)  # the same for every epoch

    def clip_fingerprints(self) -> dict[str, str]:
        """Per clip id, SHA-256 of what else decides its frames' pixels: the video's size in bytes, the crop and
        the training size (the clip id itself names the video's content: it is made from the video's hash).
        Persisted latents of a clip are valid in any run that fingerprints it the same, whatever the run folder,
        rank, seed or other clips; the path is left out so a copy of the videos elsewhere keeps them."""
        return {c.clip_id: hashlib.sha256(json.dumps(
                    [c.clip_id, c.size_bytes, [float(v) for v in c.crop], [self.height, self.width]]).encode()
                ).hexdigest() for c in self._clips}

    @property
    def clip_ids(self) -> list[str]:
        """Every usable clip (all ranks), sorted; clips too short for num_frames are left out."""
        return [c.clip_id for c in self._clips]

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < len(self):
            raise IndexError(f"item {i!r} is out of range for a shard of {len(self)} items")
        epoch = self._sync_epoch()
        clip = self._clips[int(self._order[int(i)])]
        rng = item_rng(self.seed, epoch, clip.clip_id)
        start = window_start(rng, clip.num_frames, self.num_frames)
        poses, sources = self._clip_poses(clip)
        window_poses = poses[start:start + self.num_frames]
        window_sources = sources[start:start + self.num_frames]
        if self.reference == "first":
            ref_source, ref_pose = window_sources[0], window_poses[0]
        else:
            candidates = self._references[clip.video_id]
            ref_source = int(candidates[int(rng.integers(0, len(candidates)))])
            ref_pose = self._reference_pose(clip, ref_source, window_sources, window_poses)
        all_sources = [ref_source] + list(window_sources)
        all_poses = [ref_pose] + list(window_poses)
        frames, pose_images = self._frames_and_pose_images(clip, all_sources, all_poses)
        hand_mask = objective.hand_region_mask(all_poses, self.height, self.width, self.height // self.latent_factor,
                                               self.width // self.latent_factor, threshold=self.hand_threshold,
                                               margin=self.hand_margin)
        return {"pixels": pose_images_to_tensor(frames), "pose_images": pose_images_to_tensor(pose_images),
                "hand_mask": hand_mask, "clip_id": clip.clip_id,
                "source_frames": torch.tensor(all_sources, dtype=torch.int64)}

    # ---------------------------------------------------------------------------------------------- item parts
    def _clip_poses(self, clip: _ClipInfo) -> tuple[list, list]:
        """The clip's subject poses (crop-normalised) and the decoded-video index of each sampled frame."""
        cached = self._pose_cache.get(clip.clip_id)
        if cached is not None:
            return cached
        seq = self._catalog.clip_poses(clip.clip_id, space="crop", subject_only=True)
        if len(seq.frames) != clip.num_frames or len(seq.source_frames) != clip.num_frames:
            raise ConfigError(f"clip {clip.clip_id}: the catalog lists {clip.num_frames} frames but has pose rows "
                              f"for {len(seq.frames)}: the catalog is damaged; re-curate the video")
        out = ([np.asarray(f, np.float64).reshape(-1, NUM_POINTS, 3) for f in seq.frames],
               [int(s) for s in seq.source_frames])
        if self.cache_frames:
            self._pose_cache[clip.clip_id] = out
        return out

    def _reference_pose(self, clip: _ClipInfo, source_frame: int, window_sources: list, window_poses: list):
        """The subject's pose at ``source_frame`` of the clip's video, mapped into this clip's crop."""
        if source_frame in window_sources:
            return window_poses[window_sources.index(source_frame)]
        rows = read_part(self._catalog.root, clip.video_id, "poses",
                         filter=(pc.field("source_frame") == source_frame) & pc.field("is_subject"),
                         columns=["clip_id", "x", "y", "score"])
        if rows.num_rows == 0:
            raise ConfigError(f"video {clip.video_id}: no subject pose at frame {source_frame} although the index "
                              "lists one; rebuild the catalog index (`mimicmotion catalog rebuild`)")
        person = np.stack([np.asarray(rows.column(c)[0].as_py(), np.float64) for c in ("x", "y", "score")], -1)
        return to_crop_coordinates(person[None], clip.crop, clip.video_width, clip.video_height)

    def _frames_and_pose_images(self, clip: _ClipInfo, sources: list, poses: list) -> tuple[np.ndarray, np.ndarray]:
        """Cropped, resized frames and pose images, uint8 (N, height, width, 3), for the decoded-video
        indices ``sources`` (repeats allowed) and their poses."""
        wanted = sorted({s for s in sources if (clip.clip_id, s) not in self._frame_cache})
        made: dict = {}
        if wanted:
            decoded = self._decode(clip, wanted)
            for s, frame in zip(wanted, decoded):
                made[s] = crop_and_resize(frame, clip.crop, self.width, self.height)
        frames, images = [], []
        drawn: dict = {}
        for s, pose in zip(sources, poses):
            cached = self._frame_cache.get((clip.clip_id, s))
            if cached is not None:
                frame, image = cached
            else:
                frame = made[s]
                image = drawn.get(s)
                if image is None:
                    image = drawn[s] = draw_pose(pose, self.height, self.width)
                if self.cache_frames:
                    self._frame_cache[(clip.clip_id, s)] = (frame, image)
            frames.append(frame)
            images.append(image)
        return np.stack(frames), np.stack(images)

    def _decode(self, clip: _ClipInfo, indices: list) -> np.ndarray:
        path = Path(clip.source_path)
        fix = "re-curate the video into the catalog from its current location, or restore the file"
        if not path.is_file():
            raise VideoError(f"clip {clip.clip_id}: its source video {path} is missing: {fix}")
        size = path.stat().st_size
        if clip.size_bytes is not None and size != clip.size_bytes:
            raise VideoError(f"clip {clip.clip_id}: its source video {path} has changed since it was curated "
                             f"({size} bytes, the catalog recorded {clip.size_bytes}), so its crops and poses no "
                             f"longer match: {fix}")
        try:
            return read_frames(path, indices)
        except VideoError as exc:
            raise VideoError(f"clip {clip.clip_id}: {exc}") from exc


def collate(items: list[dict]) -> dict:
    """Batch items of :class:`TrainingClips`: tensors stacked to (B, ...), ``clip_id`` a list of str."""
    if not items:
        raise ConfigError("collate needs at least one item")
    out = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(value, torch.Tensor) else list(values)
    return out
