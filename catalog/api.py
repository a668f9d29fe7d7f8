"""Python entry points to a catalog: queries returning Arrow tables, named training selections, statistics,
and a clip's poses as a PoseSequence (for rendering or training without re-detection)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.index import connect, rebuild_index, run_query
from catalog.queries import NAMED_QUERIES, STATS_SQL, named_query
from catalog.store import PARTS_DIR, catalog_root, read_part
from mimicmotion.curation import to_crop_coordinates
from mimicmotion.pose.io import PoseSequence
from mimicmotion.pose.layout import NUM_POINTS

POSE_SPACES = ("crop", "frame")


class Catalog:
    """A catalog folder. Queries open a read-only DuckDB connection per call (so no lock is held between
    calls and a running curation can keep writing)."""

    def __init__(self, root=None):
        self.root = catalog_root(root)

    def __repr__(self) -> str:
        return f"Catalog({str(self.root)!r})"

    def rebuild(self) -> Path:
        """Recreate the DuckDB database from the Parquet files."""
        return rebuild_index(self.root)

    def query(self, sql: str, params: Optional[dict] = None) -> pa.Table:
        """Any SQL over the views ``videos``, ``clips`` and ``poses``; ``params`` bind to ``$name``."""
        return run_query(sql, params, root=self.root)

    def named(self, name: str, **params) -> pa.Table:
        """A named query (see ``catalog.queries.NAMED_QUERIES``) with its parameters."""
        query = named_query(name)
        return run_query(query.sql, query.bind(params), root=self.root)

    @staticmethod
    def named_queries() -> dict:
        return dict(NAMED_QUERIES)

    def training_clips(self, **params) -> pa.Table:
        return self.named("training_clips", **params)

    def videos(self) -> pa.Table:
        return self.query("SELECT * FROM videos ORDER BY video_id")

    def clips(self) -> pa.Table:
        return self.query("SELECT * FROM clips ORDER BY clip_id")

    def stats(self) -> dict:
        """Counts and mean quality: {'videos': [...by status], 'failures': [...], 'clips': {...},
        'poses': {...}, 'bytes': size of the Parquet files}."""
        con = connect(self.root)
        try:
            out = {name: run_query(sql, con=con).to_pylist() for name, sql in STATS_SQL.items()}
        finally:
            con.close()
        out["clips"], out["poses"] = out["clips"][0], out["poses"][0]
        out["bytes"] = sum(f.stat().st_size for f in (self.root / PARTS_DIR).rglob("*.parquet"))
        return out

    def clip_poses(self, clip_id: str, space: str = "crop", subject_only: bool = False) -> PoseSequence:
        """The poses of a clip. ``space="crop"``: normalised to the clip's crop box, with width/height = the
        crop's size in source pixels (what training and rendering see); ``"frame"``: as stored, normalised
        to the source frame. ``subject_only`` keeps just the subject (one person per frame). KeyError for
        an unknown clip id."""
        if space not in POSE_SPACES:
            from mimicmotion.errors import ConfigError

            raise ConfigError(f"space must be one of {', '.join(POSE_SPACES)}, got {space!r}")
        video_id = str(clip_id).rsplit("-", 1)[0]
        try:
            clip = read_part(self.root, video_id, "clips", filter=pc.field("clip_id") == clip_id).to_pylist()
            video = read_part(self.root, video_id, "videos").to_pylist()[0]
        except KeyError:
            clip = []
        if not clip:
            raise KeyError(f"clip {clip_id!r} is not in the catalog {self.root}")
        clip = clip[0]
        rows = read_part(self.root, video_id, "poses", filter=pc.field("clip_id") == clip_id)
        n = clip["num_frames"]
        frame_ids = rows.column("frame").to_numpy()
        keep = rows.column("is_subject").to_numpy(zero_copy_only=False) if subject_only else np.ones(len(rows), bool)
        k = np.stack([np.asarray(rows.column(c).combine_chunks().flatten(), np.float64).reshape(-1, NUM_POINTS)
                      for c in ("x", "y", "score")], axis=-1)
        order = np.lexsort((rows.column("person").to_numpy(), frame_ids))
        frames = [np.zeros((0, NUM_POINTS, 3)) for _ in range(n)]
        # Every clip frame has its subject's row, so each frame's source index is known from the rows.
        source_frames = [0] * n
        for f, s in zip(frame_ids, rows.column("source_frame").to_numpy()):
            source_frames[int(f)] = int(s)
        by_frame: dict = {}
        for i in order:
            if keep[i]:
                by_frame.setdefault(int(frame_ids[i]), []).append(k[i])
        for f, people in by_frame.items():
            frames[f] = np.stack(people)
        width, height = video["width"], video["height"]
        crop = (clip["crop_x"], clip["crop_y"], clip["crop_w"], clip["crop_h"])
        if space == "crop":
            frames = [to_crop_coordinates(f, crop, width, height) for f in frames]
            width, height = clip["crop_w"], clip["crop_h"]
        return PoseSequence(frames=frames, width=width, height=height, fps=clip["fps"], source=video["source_path"],
                            source_frames=source_frames, sample_stride=clip["sample_stride"])


def clip_poses(clip_id: str, catalog=None, space: str = "crop", subject_only: bool = False) -> PoseSequence:
    """The poses of catalog clip ``clip_id`` (default catalog folder when ``catalog`` is None)."""
    return Catalog(catalog).clip_poses(clip_id, space=space, subject_only=subject_only)
