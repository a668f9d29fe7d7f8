"""Pose files: one Parquet table per video, one row per (frame, person) with all 134 keypoints.

Columns: ``frame`` (position in the sampled sequence), ``source_frame`` (index in the decoded video),
``person``, and fixed-size lists ``x``, ``y``, ``score`` of 134 float64 each (NaN = no location; float64
because the release's keypoints are float64 and pose images depend on their last bits).
Frames without a person have no row; the frame count and the source facts live in the file's
key-value metadata under ``mimicmotion``, so empty frames are never lost.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mimicmotion.errors import PoseError
from mimicmotion.pose.layout import NUM_POINTS, validate_frame

POSE_FILE_VERSION = 1
_META_KEY = b"mimicmotion"


@dataclass
class PoseSequence:
    """Poses of a sampled video: ``frames[i]`` is (P_i, 134, 3) for sampled frame i."""

    frames: list
    width: int
    height: int
    fps: float = 0.0  # fps of the sampled sequence
    source: str = ""
    source_frames: list = field(default_factory=list)  # decoded-video index of each sampled frame
    sample_stride: int = 1

    def __len__(self) -> int:
        return len(self.frames)


def _schema() -> pa.Schema:
    pts = pa.list_(pa.float64(), NUM_POINTS)
    return pa.schema(
        [("frame", pa.int32()), ("source_frame", pa.int32()), ("person", pa.int16()),
         ("x", pts), ("y", pts), ("score", pts)]
    )


def poses_to_table(seq: PoseSequence) -> pa.Table:
    src = list(seq.source_frames) or list(range(len(seq.frames)))
    if len(src) != len(seq.frames):
        raise ValueError("source_frames must have one entry per frame")
    rows_frame, rows_src, rows_person, kps = [], [], [], []
    for i, frame in enumerate(seq.frames):
        arr = validate_frame(frame, f"frame {i}").astype(np.float64)
        for p in range(arr.shape[0]):
            rows_frame.append(i)
            rows_src.append(int(src[i]))
            rows_person.append(p)
            kps.append(arr[p])
    k = np.stack(kps) if kps else np.zeros((0, NUM_POINTS, 3), np.float64)

    def col(c):
        return pa.FixedSizeListArray.from_arrays(pa.array(k[:, :, c].reshape(-1), pa.float64()), NUM_POINTS)

    table = pa.Table.from_arrays(
        [pa.array(rows_frame, pa.int32()), pa.array(rows_src, pa.int32()), pa.array(rows_person, pa.int16()),
         col(0), col(1), col(2)],
        schema=_schema(),
    )
    meta = asdict(seq)
    meta.pop("frames")
    meta.update(num_frames=len(seq.frames), source_frames=[int(s) for s in src], version=POSE_FILE_VERSION)
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def save_poses(path, seq: PoseSequence) -> Path:
    """Write ``seq`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(poses_to_table(seq), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_poses(path) -> PoseSequence:
    """Read a pose file written by :func:`save_poses`; raise PoseError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise PoseError(f"pose file not found: {path} (create one with `mimicmotion pose VIDEO --out {path.name}`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for non-Parquet input
        raise PoseError(f"{path} is not a readable Parquet pose file ({exc}); re-extract it with `mimicmotion pose`") from exc
    raw = (table.schema.metadata or {}).get(_META_KEY)
    missing = {"frame", "x", "y", "score"} - set(table.column_names)
    if raw is None or missing:
        raise PoseError(f"{path} is not a MimicMotion pose file (missing metadata or columns {sorted(missing)})")
    meta = json.loads(raw)
    n = int(meta["num_frames"])
    frame_ids = table.column("frame").to_numpy()
    k = np.stack(
        [np.asarray(table.column(c).combine_chunks().flatten(), np.float64).reshape(-1, NUM_POINTS)
         for c in ("x", "y", "score")],
        axis=-1,
    )
    order = np.argsort(frame_ids, kind="stable")
    frames = [np.zeros((0, NUM_POINTS, 3), np.float64) for _ in range(n)]
    if len(order):
        bounds = np.searchsorted(frame_ids[order], np.arange(n + 1))
        for i in range(n):
            frames[i] = k[order[bounds[i]:bounds[i + 1]]]
    return PoseSequence(
        frames=frames, width=int(meta["width"]), height=int(meta["height"]), fps=float(meta.get("fps", 0.0)),
        source=meta.get("source", ""), source_frames=list(meta.get("source_frames", range(n))),
        sample_stride=int(meta.get("sample_stride", 1)),
    )
