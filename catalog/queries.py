"""Named queries for choosing training data, and the catalog statistics.

Each named query is fixed SQL over the views with typed ``$parameters``; callers pass values, which are
converted to the declared type and bound, never formatted into the SQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mimicmotion.errors import ConfigError


@dataclass(frozen=True)
class Param:
    type: type
    default: object
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    params: dict = field(default_factory=dict)

    def bind(self, values: dict) -> dict:
        """Declared parameters with ``values`` converted to their types; unknown names are an error."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise ConfigError(f"query {self.name!r} has no parameter {', '.join(unknown)}; its parameters: "
                              f"{', '.join(self.params) or 'none'}")
        bound = {}
        for name, param in self.params.items():
            value = values.get(name, param.default)
            if value is None:
                raise ConfigError(f"query {self.name!r} needs --param {name}=VALUE ({param.help})")
            bound[name] = convert(value, param.type, f"{self.name}.{name}")
        return bound


def convert(value, typ: type, name: str):
    """``value`` (often a command-line string) as ``typ`` (int, float, str or bool)."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be of type {typ.__name__}, got {value!r}") from None


PARAM_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "text": str}


def ad_hoc_params(params: dict) -> dict:
    """Command-line parameters of ad hoc SQL: text as given (``007`` stays ``'007'``; DuckDB casts text where
    a comparison or LIMIT needs a number, ``$n::INT`` elsewhere), or the type a ``KEY:TYPE`` names (int,
    float, bool, str)."""
    out = {}
    for key, value in params.items():
        name, sep, type_name = key.partition(":")
        if sep and type_name not in PARAM_TYPES:
            raise ConfigError(f"--param {key}: unknown type {type_name!r}; use {', '.join(PARAM_TYPES)}")
        out[name] = convert(value, PARAM_TYPES[type_name], name) if sep else value
    return out


_CLIP_COLUMNS = ("c.clip_id, c.video_id, v.source_path, c.source_start_frame, c.source_end_frame, c.num_frames, "
                 "c.fps, c.crop_x, c.crop_y, c.crop_w, c.crop_h, c.output_width, c.output_height, c.person_count, "
                 "c.body_conf_mean, c.hand_conf_mean, c.face_conf_mean, c.both_hands_fraction, c.motion_magnitude, "
                 "c.body_coverage")

NAMED_QUERIES = {q.name: q for q in [
    NamedQuery(
        "training_clips",
        "clips fit for training: long enough, few people, confident body and hands, whole body in the crop",
        f"""SELECT {_CLIP_COLUMNS}
            FROM clips c JOIN videos v USING (video_id)
            WHERE v.status = 'ok' AND c.num_frames >= $min_frames AND c.person_count <= $max_people
              AND c.body_conf_mean >= $min_body_conf AND c.hand_conf_mean >= $min_hand_conf
              AND c.body_coverage >= $min_coverage
            ORDER BY c.clip_id""",
        {"min_frames": Param(int, 16, "minimum sampled frames"),
         "max_people": Param(int, 1, "most people in any frame"),
         "min_body_conf": Param(float, 0.5, "minimum mean body confidence"),
         "min_hand_conf": Param(float, 0.0, "minimum mean hand confidence"),
         "min_coverage": Param(float, 1.0, "minimum fraction of the body inside the crop")},
    ),
    NamedQuery(
        "single_person_clips",
        "clips where exactly one person appears in every frame",
        f"""SELECT {_CLIP_COLUMNS}
            FROM clips c JOIN videos v USING (video_id)
            WHERE c.person_count = 1 AND c.mean_person_count = 1 AND c.num_frames >= $min_frames
            ORDER BY c.clip_id""",
        {"min_frames": Param(int, 16, "minimum sampled frames")},
    ),
    NamedQuery(
        "reliable_hand_clips",
        "clips where both hands are reliable in most frames (for the hand-region loss)",
        f"""SELECT {_CLIP_COLUMNS}
            FROM clips c JOIN videos v USING (video_id)
            WHERE c.both_hands_fraction >= $min_fraction AND c.num_frames >= $min_frames
            ORDER BY c.both_hands_fraction DESC, c.clip_id""",
        {"min_fraction": Param(float, 0.8, "minimum fraction of frames with both hands reliable"),
         "min_frames": Param(int, 16, "minimum sampled frames")},
    ),
    NamedQuery(
        "clips_by_estimator",
        "clips of ok videos whose poses came from one estimator (dwpose, mediapipe or sidecar), with its version",
        f"""SELECT {_CLIP_COLUMNS}, v.pose_source, v.pose_estimator_version
            FROM clips c JOIN videos v USING (video_id)
            WHERE v.status = 'ok' AND v.pose_source = $estimator AND c.num_frames >= $min_frames
            ORDER BY c.clip_id""",
        {"estimator": Param(str, "mediapipe", "dwpose, mediapipe or sidecar"),
         "min_frames": Param(int, 16, "minimum sampled frames")},
    ),
    NamedQuery(
        "failed_videos",
        "videos that gave no clip, with the reason",
        """SELECT video_id, file_name, source_path, error_kind, error FROM videos
           WHERE status = 'failed' ORDER BY error_kind, file_name""",
    ),
    NamedQuery(
        "clip_poses",
        "pose rows of one clip (all people; is_subject marks the subject)",
        """SELECT clip_id, frame, source_frame, person, is_subject, x, y, score FROM poses
           WHERE clip_id = $clip_id ORDER BY frame, person""",
        {"clip_id": Param(str, None, "the clip id, e.g. 0123456789abcdef-0000")},
    ),
]}


def named_query(name: str) -> NamedQuery:
    try:
        return NAMED_QUERIES[name]
    except KeyError:
        raise ConfigError(f"no named query {name!r}; available: {', '.join(sorted(NAMED_QUERIES))}") from None


STATS_SQL = {
    "videos": "SELECT status, count(*) AS videos, sum(duration_s) AS seconds FROM videos GROUP BY status ORDER BY status",
    "failures": "SELECT error_kind, count(*) AS videos FROM videos WHERE status = 'failed' GROUP BY error_kind "
                "ORDER BY error_kind",
    "clips": """SELECT count(*) AS clips, coalesce(sum(num_frames), 0)::BIGINT AS frames, coalesce(sum(duration_s), 0) AS seconds,
                       avg(num_frames) AS mean_frames, avg(person_count) AS mean_people,
                       avg(body_conf_mean) AS body_conf, avg(hand_conf_mean) AS hand_conf,
                       avg(face_conf_mean) AS face_conf, avg(both_hands_fraction) AS both_hands,
                       avg(motion_magnitude) AS motion, avg(body_coverage) AS coverage,
                       count(*) FILTER (WHERE person_count = 1) AS single_person_clips
                FROM clips""",
    "poses": "SELECT count(*) AS rows, count(*) FILTER (WHERE is_subject) AS subject_rows FROM poses",
}
