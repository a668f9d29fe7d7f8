"""Curating one video into the catalog: hash -> skip if done -> probe -> poses -> clips -> rows -> commit.

A video is identified by the SHA-256 of its bytes. It is done when its folder exists under parts/; a
re-run skips it (without re-hashing when the path, size and modification time match a row already in the
catalog). Failures are rows too: a corrupt, empty, audio-only, personless or too-short video gets a
``videos`` row with ``status = 'failed'``, ``error_kind`` and a readable ``error``, and is not retried
unless asked (``retry_failed``). Unexpected errors (``error_kind = 'internal'``, e.g. a crashed worker)
are recorded as well but retried by the next run. Configuration problems (a missing model file, bad
settings) are not the video's fault: they are raised and stop the run.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from catalog.schema import SCHEMA_VERSION, arrow_schema, column_names
from catalog.store import commit_part, is_committed, read_table
from mimicmotion.curation import (CurationSettings, VideoPlan, VideoRejected, detect_poses, file_sha256,
                                  load_sidecar, plan_clips, sample_sidecar, sidecar_path)
from mimicmotion.errors import ConfigError, MimicMotionError, ModelFileError, PoseError, VideoError
from mimicmotion.pose.layout import NUM_POINTS

log = logging.getLogger(__name__)

VIDEO_ID_LENGTH = 16


def video_id_of(content_hash: str) -> str:
    return content_hash[:VIDEO_ID_LENGTH]


def clip_id_of(video_id: str, index: int) -> str:
    return f"{video_id}-{index:04d}"


@dataclass
class VideoOutcome:
    """What happened to one input file in a run (small: no poses; safe to pass between tasks)."""

    path: str
    status: str  # ok | failed | skipped
    video_id: Optional[str] = None
    error_kind: Optional[str] = None
    reason: Optional[str] = None
    num_clips: int = 0
    clip_ids: list = field(default_factory=list)
    duration_s: float = 0.0  # video length (for throughput), 0 when unknown or skipped
    seconds: float = 0.0  # wall time spent on it in this run


class KnownVideos:
    """The videos already in the catalog, read once at the start of a run."""

    def __init__(self, table: pa.Table):
        rows = table.to_pylist()
        self.status = {r["video_id"]: (r["status"], r["error_kind"]) for r in rows}
        self.by_file = {(r["source_path"], r["size_bytes"], r["source_mtime_ns"]): r["video_id"] for r in rows}
        self.sidecar = {r["video_id"]: (r["source_path"], r.get("sidecar_mtime_ns")) for r in rows}

    @classmethod
    def load(cls, root) -> "KnownVideos":
        cols = ["video_id", "source_path", "size_bytes", "source_mtime_ns", "status", "error_kind",
                "sidecar_mtime_ns"]
        return cls(read_table(root, "videos", columns=cols))

    def is_done(self, video_id: str, retry_failed: bool = False) -> bool:
        """Done = committed and not to be redone (failed with retry_failed, or an internal error)."""
        if video_id not in self.status:
            return False
        status, kind = self.status[video_id]
        return status == "ok" or not (retry_failed or kind == "internal")

    def same_file(self, path: str, size: int, mtime_ns: int) -> Optional[str]:
        return self.by_file.get((path, size, mtime_ns))

    def sidecar_changed(self, video_id: str, path: str, sidecar_mtime_ns: Optional[int]) -> bool:
        """Whether the sidecar pose file next to ``path`` appeared, changed or went away since the video's row
        was written from that path: its poses are an input like the video's bytes, so a fixed sidecar is
        curated again. (The same content at another path is the same video, already done.)"""
        if video_id not in self.sidecar:
            return False
        known_path, known_stamp = self.sidecar[video_id]
        return known_path == path and known_stamp != sidecar_mtime_ns


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, VideoRejected):
        return exc.kind
    if isinstance(exc, VideoError):
        return "video"
    if isinstance(exc, PoseError):
        return "pose"
    return "internal"


def _obtain_poses(path: Path, info, pose_source: str, estimator, settings: CurationSettings, batch_size: int):
    """(estimator name or 'sidecar', estimator version or None, PoseSequence)."""
    use_sidecar = pose_source == "sidecar" or (pose_source == "auto" and sidecar_path(path).is_file())
    if use_sidecar:
        seq = load_sidecar(path, info.width, info.height, info.num_frames)
        seq = sample_sidecar(seq, info.fps, settings.sample_stride, sidecar_path(path).name)
        if seq.source_frames:  # the poses come from a file: the frames they describe must decode (truncation)
            from mimicmotion.video import read_frames

            read_frames(path, [seq.source_frames[-1]])
        return "sidecar", None, seq
    if estimator is None:
        raise ConfigError(f"{path.name} needs pose detection (pose_source={pose_source!r}) but no pose estimator "
                          "was given: pass a pose estimator (DWPose or the bundled one), or use sidecar pose files")
    seq = detect_poses(path, estimator, settings.sample_stride, batch_size, info=info)
    return getattr(estimator, "name", "dwpose"), getattr(estimator, "version", None), seq


def _sidecar_stamp(path: Path) -> Optional[int]:
    try:
        return sidecar_path(path).stat().st_mtime_ns
    except OSError:
        return None


def _sidecar_changed(known: KnownVideos, video_id: str, path: Path, stamp: Optional[int], pose_source: str) -> bool:
    return pose_source in ("sidecar", "auto") and known.sidecar_changed(video_id, str(path), stamp)


def _broken_link(path: Path) -> Optional[str]:
    """Why ``path`` is a symbolic link that leads to no file (dangling, or a loop), else None."""
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return f"{path} is a symbolic link loop: fix or remove the link"
    except OSError as exc:
        if "loop" in str(exc).lower() or getattr(exc, "errno", None) == 40:  # ELOOP
            return f"{path} is a symbolic link loop: fix or remove the link"
        return f"{path} is a broken symbolic link (to {os.readlink(path)}, which does not exist): fix or remove it"
    return None if target.is_file() else f"{path} links to {target}, which is not a file"


def curate_file(path, root, settings: CurationSettings, *, pose_source: str = "detect", estimator=None,
                known: Optional[KnownVideos] = None, retry_failed: bool = False, batch_size: int = 16) -> VideoOutcome:
    """Curate one video file into the catalog at ``root`` (created with catalog.store.init_catalog)."""
    from mimicmotion.video import check_frame_size, probe

    start = time.perf_counter()
    known = known if known is not None else KnownVideos.load(root)
    broken = _broken_link(Path(path))
    if broken:
        return VideoOutcome(str(path), "failed", error_kind="video", reason=broken)
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        return VideoOutcome(str(path), "failed", error_kind="video",
                            reason=f"{path} cannot be read ({exc.strerror}): it was moved or deleted during the run")
    sidecar_stamp = _sidecar_stamp(path) if pose_source in ("sidecar", "auto") else None
    same = known.same_file(str(path), st.st_size, st.st_mtime_ns)
    if same is not None and known.is_done(same, retry_failed) and not _sidecar_changed(
            known, same, path, sidecar_stamp, pose_source):
        return VideoOutcome(str(path), "skipped", video_id=same, reason="already in the catalog")

    content_hash = file_sha256(path)
    video_id = video_id_of(content_hash)
    hash_s = time.perf_counter() - start
    changed = _sidecar_changed(known, video_id, path, sidecar_stamp, pose_source)
    redo = video_id in known.status and (not known.is_done(video_id, retry_failed) or changed)
    if (known.is_done(video_id, retry_failed) and not changed) or (not redo and is_committed(root, video_id)):
        return VideoOutcome(str(path), "skipped", video_id=video_id, reason="same content already in the catalog")

    row = {name: None for name in column_names("videos")}
    row.update(video_id=video_id, content_hash=content_hash, source_path=str(path), file_name=path.name,
               size_bytes=st.st_size, source_mtime_ns=st.st_mtime_ns, num_clips=0, settings=settings.to_json(),
               schema_version=SCHEMA_VERSION, hash_s=hash_s, sidecar_mtime_ns=sidecar_stamp)
    plan: Optional[VideoPlan] = None
    timer = time.perf_counter()
    try:
        info = probe(path)
        check_frame_size(info)  # before any frame is decoded
        row.update(duration_s=info.duration, fps=info.fps, num_frames=info.num_frames, width=info.width,
                   height=info.height, rotation=info.rotation, has_audio=info.has_audio, video_codec=info.video_codec)
        row["probe_s"], timer = time.perf_counter() - timer, time.perf_counter()
        source, version, seq = _obtain_poses(path, info, pose_source, estimator, settings, batch_size)
        row.update(pose_source=source, pose_estimator=None if source == "sidecar" else source,
                   pose_estimator_version=version, sample_stride=seq.sample_stride, sampled_frames=len(seq))
        row["pose_s"], timer = time.perf_counter() - timer, time.perf_counter()
        plan = plan_clips(seq, settings)
        row["plan_s"] = time.perf_counter() - timer
        row.update(status="ok", num_clips=len(plan.clips), frames_with_person=plan.frames_with_person)
    except (ConfigError, ModelFileError):
        raise
    except VideoRejected as exc:
        row.update(status="failed", error_kind=exc.kind, error=str(exc), plan_s=time.perf_counter() - timer)
    except Exception as exc:  # any other failure is recorded as data; the run goes on
        kind = _error_kind(exc)
        message = str(exc) if isinstance(exc, MimicMotionError) else f"{type(exc).__name__}: {exc}"
        if kind == "internal":
            log.error("curating %s failed unexpectedly:\n%s", path, traceback.format_exc())
        row.update(status="failed", error_kind=kind, error=message)
    row["total_s"] = time.perf_counter() - start
    row["curated_at"] = _dt.datetime.now(_dt.timezone.utc)

    tables = {"videos": pa.Table.from_pylist([row], schema=arrow_schema("videos")),
              "clips": clip_table(video_id, plan, settings), "poses": pose_table(video_id, plan)}
    if not commit_part(root, video_id, tables, replace=redo):
        return VideoOutcome(str(path), "skipped", video_id=video_id, reason="committed by another run meanwhile")
    clip_ids = [clip_id_of(video_id, c.index) for c in plan.clips] if plan else []
    return VideoOutcome(str(path), row["status"], video_id=video_id, error_kind=row["error_kind"], reason=row["error"],
                        num_clips=len(clip_ids), clip_ids=clip_ids, duration_s=float(row["duration_s"] or 0.0),
                        seconds=time.perf_counter() - start)


def clip_table(video_id: str, plan: Optional[VideoPlan], settings: CurationSettings) -> pa.Table:
    schema = arrow_schema("clips")
    if plan is None:
        return schema.empty_table()
    seq = plan.poses
    out_w, out_h = settings.output_size
    source = list(seq.source_frames)
    rows = []
    for clip in plan.clips:
        s = clip.stats
        x, y, w, h = clip.crop
        fps = float(seq.fps)
        rows.append(dict(
            clip_id=clip_id_of(video_id, clip.index), video_id=video_id, clip_index=clip.index,
            start_frame=clip.start, end_frame=clip.stop, source_start_frame=source[clip.start],
            source_end_frame=source[clip.stop - 1] + 1, num_frames=clip.num_frames, sample_stride=seq.sample_stride,
            fps=fps, duration_s=clip.num_frames / fps if fps > 0 else 0.0, crop_x=x, crop_y=y, crop_w=w, crop_h=h,
            output_width=out_w, output_height=out_h, person_count=s.person_count,
            mean_person_count=s.mean_person_count, body_conf_mean=s.body_conf_mean, body_conf_min=s.body_conf_min,
            hand_conf_mean=s.hand_conf_mean, hand_conf_min=s.hand_conf_min, face_conf_mean=s.face_conf_mean,
            face_conf_min=s.face_conf_min, both_hands_fraction=s.both_hands_fraction,
            motion_magnitude=s.motion_magnitude, body_coverage=s.body_coverage, subject_height=s.subject_height,
        ))
    return pa.Table.from_pylist(rows, schema=schema)


def pose_table(video_id: str, plan: Optional[VideoPlan]) -> pa.Table:
    """One row per (clip, frame, person) with the 134 keypoints exactly as the pose source gave them."""
    schema = arrow_schema("poses")
    if plan is None:
        return schema.empty_table()
    seq = plan.poses
    clip_ids, frames, source_frames, persons, subjects, keypoints = [], [], [], [], [], []
    for clip in plan.clips:
        cid = clip_id_of(video_id, clip.index)
        for offset, (position, subject) in enumerate(zip(range(clip.start, clip.stop), clip.subjects)):
            people = np.asarray(seq.frames[position], dtype=np.float64).reshape(-1, NUM_POINTS, 3)
            for p in range(people.shape[0]):
                clip_ids.append(cid)
                frames.append(offset)
                source_frames.append(int(seq.source_frames[position]))
                persons.append(p)
                subjects.append(p == subject)
                keypoints.append(people[p])
    k = np.stack(keypoints) if keypoints else np.zeros((0, NUM_POINTS, 3))

    def points(c: int) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(k[:, :, c].reshape(-1), pa.float64()), NUM_POINTS)

    return pa.Table.from_arrays(
        [pa.array(clip_ids, pa.string()), pa.array([video_id] * len(clip_ids), pa.string()),
         pa.array(frames, pa.int32()), pa.array(source_frames, pa.int32()), pa.array(persons, pa.int16()),
         pa.array(subjects, pa.bool_()), points(0), points(1), points(2)],
        schema=schema)
