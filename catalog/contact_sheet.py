"""Contact sheets: one tile per clip showing what training will see (the clip's crop of its middle frame,
resized to the training aspect) with the poses drawn over it, so people can look before they trust a
dataset."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pyarrow.compute as pc

from catalog.api import Catalog
from catalog.store import read_part
from mimicmotion.curation import contact_sheet, crop_and_resize, overlay_pose

log = logging.getLogger(__name__)


def pick_clips(clip_ids_per_video: Sequence[Sequence[str]], limit: int) -> list[str]:
    """Up to ``limit`` clip ids, spread over the videos: every video's first clip, then second, ..."""
    picked: list[str] = []
    depth = 0
    while len(picked) < limit and any(depth < len(ids) for ids in clip_ids_per_video):
        for ids in clip_ids_per_video:
            if depth < len(ids) and len(picked) < limit:
                picked.append(ids[depth])
        depth += 1
    return picked


def short_label(clip_id: str) -> str:
    """``0123456789abcdef-0002`` -> ``01234567-2``: enough to find the clip, short enough for a tile."""
    video_id, _, index = clip_id.rpartition("-")
    return f"{video_id[:8]}-{int(index)}" if index.isdigit() else clip_id


def _clip_row(catalog: Catalog, clip_id: str) -> dict:
    video_id = clip_id.rsplit("-", 1)[0]
    return read_part(catalog.root, video_id, "clips", filter=pc.field("clip_id") == clip_id).to_pylist()[0]


def clip_tile(catalog: Catalog, clip_id: str, tile_width: int, tile_height: int) -> np.ndarray:
    """The clip's middle frame, its crop resized to the tile, with the clip's poses drawn on top."""
    from mimicmotion.video import read_frames

    clip = _clip_row(catalog, clip_id)
    poses = catalog.clip_poses(clip_id, space="crop")
    middle = len(poses) // 2
    frame = read_frames(poses.source, [poses.source_frames[middle]])[0]
    crop = (clip["crop_x"], clip["crop_y"], clip["crop_w"], clip["crop_h"])
    return overlay_pose(crop_and_resize(frame, crop, tile_width, tile_height), poses.frames[middle])


def write_contact_sheet(catalog: Catalog, clip_ids: Sequence[str], out_path, tile_height: int = 256,
                        columns: int = 6) -> Path:
    """Draw the tiles of ``clip_ids`` into one PNG at ``out_path`` (written atomically). Tiles have the
    first clip's output aspect."""
    if not clip_ids:
        raise ValueError("write_contact_sheet needs at least one clip id")
    first = _clip_row(catalog, clip_ids[0])
    tile_width = max(2, int(round(tile_height * first["output_width"] / first["output_height"])))
    tiles = []
    for cid in clip_ids:
        try:
            tiles.append((clip_tile(catalog, cid, tile_width, tile_height), short_label(cid)))
        except Exception as exc:  # a video that no longer decodes (moved, truncated) costs its tile, not the sheet
            log.warning("contact sheet: no tile for clip %s (%s)", cid, exc)
    if not tiles:
        raise ValueError(f"none of the {len(clip_ids)} clips could be drawn (their videos do not decode)")
    sheet = contact_sheet(tiles, columns=columns)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}-{secrets.token_hex(4)}.png")
    try:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
