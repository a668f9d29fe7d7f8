"""The catalog's Parquet schemas (version ``SCHEMA_VERSION``; documented column by column in catalog/README.md).

Three tables: ``videos`` (one row per distinct video file content), ``clips`` (one row per training clip)
and ``poses`` (one row per clip, frame and person, with all 134 keypoints). Every column is declared here
once, with its type and meaning; the writer, the DuckDB views and the README check all follow this list.
"""
from __future__ import annotations

import json

import pyarrow as pa

from mimicmotion.pose.layout import NUM_POINTS

SCHEMA_VERSION = 2
META_KEY = b"mimicmotion.catalog"

_KEYPOINTS = pa.list_(pa.float64(), NUM_POINTS)

# (name, type, nullable, description)
VIDEO_COLUMNS = [
    ("video_id", pa.string(), False, "first 16 hex digits of content_hash; names the video's folder"),
    ("content_hash", pa.string(), False, "SHA-256 of the file's bytes (hex): the video's identity"),
    ("source_path", pa.string(), False, "absolute path of the file when it was curated"),
    ("file_name", pa.string(), False, "file name of source_path"),
    ("size_bytes", pa.int64(), False, "file size in bytes"),
    ("source_mtime_ns", pa.int64(), False, "file modification time (ns since the epoch) when curated"),
    ("status", pa.string(), False, "'ok' (clips were made) or 'failed' (see error_kind, error)"),
    ("error_kind", pa.string(), True, "for failures: video | pose | no_person | too_short | internal"),
    ("error", pa.string(), True, "for failures: the reason, readable"),
    ("duration_s", pa.float64(), True, "video stream duration in seconds"),
    ("fps", pa.float64(), True, "frame rate of the file"),
    ("num_frames", pa.int32(), True, "frames in the file"),
    ("width", pa.int32(), True, "frame width in display orientation (rotation applied)"),
    ("height", pa.int32(), True, "frame height in display orientation"),
    ("rotation", pa.int16(), True, "clockwise display rotation of the coded picture: 0, 90, 180 or 270"),
    ("has_audio", pa.bool_(), True, "whether the file has an audio track"),
    ("video_codec", pa.string(), True, "video codec name (FFmpeg's)"),
    ("pose_source", pa.string(), True, "'dwpose' or 'mediapipe' (detected by that estimator) or 'sidecar' "
                                        "(from <stem>.poses.parquet)"),
    ("pose_estimator", pa.string(), True, "estimator that detected the poses: 'dwpose' or 'mediapipe' (null for "
                                           "sidecar poses)"),
    ("pose_estimator_version", pa.string(), True, "its models, e.g. 'mediapipe-holistic-0.10.21' or "
                                                   "'dwpose:yolox_l.onnx+dw-ll_ucoco_384.onnx'"),
    ("sidecar_mtime_ns", pa.int64(), True, "modification time of <stem>.poses.parquet when curated with pose source "
                                           "sidecar or auto (null: none); a changed sidecar is curated again"),
    ("sample_stride", pa.int32(), True, "decoded frames between sampled frames"),
    ("sampled_frames", pa.int32(), True, "number of sampled frames with poses"),
    ("frames_with_person", pa.int32(), True, "sampled frames where at least one person counts"),
    ("num_clips", pa.int32(), False, "clips made from the video (0 when failed)"),
    ("settings", pa.string(), False, "JSON of the curation settings used"),
    ("schema_version", pa.int16(), False, "catalog schema version of the row"),
    ("curated_at", pa.timestamp("us", tz="UTC"), False, "when the row was written"),
    ("hash_s", pa.float64(), False, "seconds spent hashing the file"),
    ("probe_s", pa.float64(), True, "seconds spent probing the file"),
    ("pose_s", pa.float64(), True, "seconds spent decoding + detecting poses (or reading the sidecar)"),
    ("plan_s", pa.float64(), True, "seconds spent choosing subjects, clips, crops and statistics"),
    ("total_s", pa.float64(), False, "seconds for the whole video, writing excluded"),
]

CLIP_COLUMNS = [
    ("clip_id", pa.string(), False, "'<video_id>-<clip_index as 4 digits>'"),
    ("video_id", pa.string(), False, "the video (videos.video_id)"),
    ("clip_index", pa.int32(), False, "position of the clip within its video, from 0"),
    ("start_frame", pa.int32(), False, "first sampled frame of the clip (index into the video's sampled frames)"),
    ("end_frame", pa.int32(), False, "sampled frame after the last one (exclusive)"),
    ("source_start_frame", pa.int32(), False, "decoded-video index of the clip's first frame"),
    ("source_end_frame", pa.int32(), False, "decoded-video index of the clip's last frame + 1"),
    ("num_frames", pa.int32(), False, "sampled frames in the clip (end_frame - start_frame)"),
    ("sample_stride", pa.int32(), False, "decoded frames between the clip's frames"),
    ("fps", pa.float64(), False, "frame rate of the sampled frames (file fps / sample_stride)"),
    ("duration_s", pa.float64(), False, "num_frames / fps"),
    ("crop_x", pa.int32(), False, "crop box left edge, source pixels"),
    ("crop_y", pa.int32(), False, "crop box top edge, source pixels"),
    ("crop_w", pa.int32(), False, "crop box width, source pixels"),
    ("crop_h", pa.int32(), False, "crop box height, source pixels"),
    ("output_width", pa.int32(), False, "training frame width the crop is resized to"),
    ("output_height", pa.int32(), False, "training frame height the crop is resized to"),
    ("person_count", pa.int16(), False, "most people counted in any frame of the clip"),
    ("mean_person_count", pa.float64(), False, "mean people counted per frame"),
    ("body_conf_mean", pa.float64(), False, "subject's body confidence (mean of 18 joint scores), mean over frames"),
    ("body_conf_min", pa.float64(), False, "... its minimum over frames"),
    ("hand_conf_mean", pa.float64(), False, "subject's hand confidence (mean of 42 hand point scores), mean over frames"),
    ("hand_conf_min", pa.float64(), False, "... its minimum over frames"),
    ("face_conf_mean", pa.float64(), False, "subject's face confidence (mean of 68 face point scores), mean over frames"),
    ("face_conf_min", pa.float64(), False, "... its minimum over frames"),
    ("both_hands_fraction", pa.float64(), False, "fraction of frames where every point of both hands scores above "
                                                  "the hand threshold"),
    ("motion_magnitude", pa.float64(), True, "subject's mean body-joint speed in crop heights per second"),
    ("body_coverage", pa.float64(), False, "fraction of the subject's visible points inside the crop (1 = whole body)"),
    ("subject_height", pa.float64(), False, "subject's mean box height / crop height"),
]

POSE_COLUMNS = [
    ("clip_id", pa.string(), False, "the clip (clips.clip_id)"),
    ("video_id", pa.string(), False, "the video (videos.video_id)"),
    ("frame", pa.int32(), False, "position in the clip, from 0"),
    ("source_frame", pa.int32(), False, "decoded-video frame index"),
    ("person", pa.int16(), False, "detection index within the frame, from 0 (detector order)"),
    ("is_subject", pa.bool_(), False, "whether this person is the clip's subject"),
    ("x", _KEYPOINTS, False, "134 x coordinates normalised by the source frame width (NaN: no location)"),
    ("y", _KEYPOINTS, False, "134 y coordinates normalised by the source frame height (NaN: no location)"),
    ("score", _KEYPOINTS, False, "134 detector scores (0 where no location)"),
]

TABLES = {"videos": VIDEO_COLUMNS, "clips": CLIP_COLUMNS, "poses": POSE_COLUMNS}
# The Parquet file each table's rows live in, inside every video's folder.
TABLE_FILES = {"videos": "video.parquet", "clips": "clips.parquet", "poses": "poses.parquet"}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of ``table`` (videos, clips or poses), tagged with the schema version."""
    fields = [pa.field(name, typ, nullable=nullable) for name, typ, nullable, _ in TABLES[table]]
    meta = json.dumps({"table": table, "schema_version": SCHEMA_VERSION}).encode()
    return pa.schema(fields, metadata={META_KEY: meta})


def column_names(table: str) -> list[str]:
    return [name for name, *_ in TABLES[table]]
