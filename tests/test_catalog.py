"""The catalog: schema and README, atomic per-video commits, DuckDB views and read-only queries with bound
parameters, named training queries, statistics, clip poses, the `catalog` CLI, and curating single files
(sidecar poses) into it without Prefect."""
import argparse
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from catalog import Catalog, KnownVideos, clip_poses, curate_file, init_catalog, rebuild_index
from catalog.cli import add_catalog_commands, format_table, parse_params
from catalog.index import connect, index_is_current, run_query
from catalog.ingest import clip_id_of
from catalog.queries import NAMED_QUERIES, ad_hoc_params, convert
from catalog.schema import SCHEMA_VERSION, TABLES, arrow_schema, column_names
from catalog.store import (CATALOG_ENV, STAGING_DIR, catalog_root, clean_staging, commit_part, committed_video_ids,
                           default_catalog_dir, is_committed, read_table)
from mimicmotion.curation import CurationSettings, sidecar_path
from mimicmotion.errors import ConfigError, MimicMotionError
from mimicmotion.pose.io import PoseSequence, save_poses

README = Path(__file__).resolve().parents[1] / "catalog" / "README.md"
W, H, FPS = 90, 160, 24.0


def dancer(path: Path, num_frames: int = 30, seed: int = 0, width: int = W, height: int = H,
           squeeze: float = 0.5) -> list:
    """A video of the procedural dancer and its sidecar pose file (every frame); returns the poses. The
    dancer is narrowed by ``squeeze`` around the frame's centre line so that its hands stay in a 9:16 frame."""
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    poses = [p.astype(np.float64) for p in dance_poses(num_frames, FPS, width, height, seed=seed)]
    for p in poses:
        p[..., 0] = 0.5 + (p[..., 0] - 0.5) * squeeze
    write_video(path, [draw_figure(p, height, width, seed=seed) for p in poses], fps=FPS)
    save_poses(sidecar_path(path), PoseSequence(frames=poses, width=width, height=height, fps=FPS,
                                                source_frames=list(range(num_frames)), sample_stride=1))
    return poses


SETTINGS = CurationSettings(sample_stride=1, clip_length=12, min_clip_length=6)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    poses = dancer(d / "dance.mp4", num_frames=30)
    return d, poses


@pytest.fixture
def root(tmp_path):
    return init_catalog(tmp_path / "cat")


# ---------------------------------------------------------------------------------------------- rows for tests
def video_row(video_id: str, status: str = "ok", **overrides) -> dict:
    row = {name: None for name in column_names("videos")}
    row.update(video_id=video_id, content_hash=video_id * 4, source_path=f"/data/{video_id}.mp4",
               file_name=f"{video_id}.mp4", size_bytes=10, source_mtime_ns=1, status=status, num_clips=0,
               settings="{}", schema_version=SCHEMA_VERSION, hash_s=0.0, total_s=0.0, duration_s=2.0,
               curated_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    if status == "failed":
        row.update(error_kind="no_person", error="no person")
    row.update(overrides)
    return row


def clip_row(video_id: str, index: int, **overrides) -> dict:
    row = dict(clip_id=clip_id_of(video_id, index), video_id=video_id, clip_index=index, start_frame=0, end_frame=20,
               source_start_frame=0, source_end_frame=40, num_frames=20, sample_stride=2, fps=12.0, duration_s=20 / 12,
               crop_x=0, crop_y=0, crop_w=90, crop_h=160, output_width=576, output_height=1024, person_count=1,
               mean_person_count=1.0, body_conf_mean=0.9, body_conf_min=0.8, hand_conf_mean=0.7, hand_conf_min=0.6,
               face_conf_mean=0.8, face_conf_min=0.7, both_hands_fraction=0.9, motion_magnitude=0.1,
               body_coverage=1.0, subject_height=0.8)
    row.update(overrides)
    return row


def commit_rows(root, video_id, clips=(), status="ok", **video_overrides) -> bool:
    tables = {"videos": pa.Table.from_pylist([video_row(video_id, status, num_clips=len(clips), **video_overrides)],
                                             schema=arrow_schema("videos")),
              "clips": pa.Table.from_pylist(list(clips), schema=arrow_schema("clips")),
              "poses": arrow_schema("poses").empty_table()}
    return commit_part(root, video_id, tables)


# ---------------------------------------------------------------------------------------------- schema
def test_readme_documents_every_column_and_the_version():
    text = README.read_text()
    assert f"Schema version: {SCHEMA_VERSION}" in text
    for table, columns in TABLES.items():
        section = text.split(f"### `{table}`")[1].split("###")[0]
        documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
        assert documented == [name for name, *_ in columns], table


def test_arrow_schemas_carry_the_version():
    for table in TABLES:
        meta = json.loads(arrow_schema(table).metadata[b"mimicmotion.catalog"])
        assert meta == {"table": table, "schema_version": SCHEMA_VERSION}
    assert arrow_schema("poses").field("x").type == pa.list_(pa.float64(), 134)


# ---------------------------------------------------------------------------------------------- store
def test_catalog_root_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path / "env-cat"))
    assert default_catalog_dir() == tmp_path / "env-cat"
    monkeypatch.delenv(CATALOG_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_catalog_dir() == tmp_path / "xdg" / "mimicmotion" / "catalog"
    for bad in ("cat[1]", "cat*", "c?t"):
        with pytest.raises(ConfigError, match="without"):
            catalog_root(tmp_path / bad)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        catalog_root(tmp_path / "file")


def test_commit_is_all_or_nothing_and_first_writer_wins(root):
    assert not is_committed(root, "aaaa")
    assert commit_rows(root, "aaaa", [clip_row("aaaa", 0)])
    assert sorted(p.name for p in (root / "parts" / "aaaa").iterdir()) == ["clips.parquet", "poses.parquet",
                                                                          "video.parquet"]
    assert not commit_rows(root, "aaaa", [clip_row("aaaa", 0), clip_row("aaaa", 1)])  # already there: untouched
    assert read_table(root, "clips").num_rows == 1
    assert list((root / STAGING_DIR).iterdir()) == []
    bad = {"videos": pa.table({"video_id": ["bbbb"]}), "clips": arrow_schema("clips").empty_table(),
           "poses": arrow_schema("poses").empty_table()}
    with pytest.raises(ValueError, match="catalog schema"):
        commit_part(root, "bbbb", bad)
    assert not is_committed(root, "bbbb") and list((root / STAGING_DIR).iterdir()) == []
    assert committed_video_ids(root) == ["aaaa"]


def test_clean_staging_removes_only_dead_writers_of_this_host(root):
    host = socket.gethostname()
    dead_pid = 2 ** 22 + 12345  # above the usual pid_max: no such process
    leftovers = [f"aaaa.{host}.{dead_pid}.1a2b", f"bbbb.{host}.{dead_pid}.3c4d.old",
                 f"cccc.{host}.{os.getpid()}.5e6f", f"dddd.other-host.{dead_pid}.7a8b"]
    for name in leftovers:
        (root / STAGING_DIR / name).mkdir()
        (root / STAGING_DIR / name / "clips.parquet").write_bytes(b"partial")
    assert clean_staging(root) == sorted(leftovers[:2])
    assert sorted(p.name for p in (root / STAGING_DIR).iterdir()) == sorted(leftovers[2:])


def test_read_table_of_empty_catalog_has_the_schema(root):
    table = read_table(root, "videos", columns=["video_id", "status"])
    assert table.num_rows == 0 and table.column_names == ["video_id", "status"]


# ---------------------------------------------------------------------------------------------- index and queries
def test_views_work_on_an_empty_catalog_and_see_later_commits(root):
    rebuild_index(root)
    assert index_is_current(root)
    cat = Catalog(root)
    # one literal query per view (a table name is an identifier, not a bindable value)
    whole_views = {"videos": "SELECT * FROM videos", "clips": "SELECT * FROM clips", "poses": "SELECT * FROM poses"}
    assert set(whole_views) == set(TABLES)
    for table, sql in whole_views.items():
        result = cat.query(sql)
        assert result.num_rows == 0 and result.column_names == column_names(table)
    commit_rows(root, "aaaa", [clip_row("aaaa", 0)])  # after the rebuild: visible without re-indexing
    assert cat.query("SELECT clip_id FROM clips").column("clip_id").to_pylist() == ["aaaa-0000"]


def test_query_binds_parameters_and_is_read_only(root):
    commit_rows(root, "aaaa", [clip_row("aaaa", 0, num_frames=20), clip_row("aaaa", 1, num_frames=8)])
    rebuild_index(root)
    cat = Catalog(root)
    assert cat.query("SELECT clip_id FROM clips WHERE num_frames >= $n", {"n": 10}).num_rows == 1
    # A value is data, never SQL: the classic injection matches nothing.
    assert cat.query("SELECT * FROM clips WHERE clip_id = $id", {"id": "x' OR '1'='1"}).num_rows == 0
    for statement in ("CREATE TABLE t (a INT)", "DROP VIEW clips", "INSERT INTO catalog_info VALUES ('a', 'b')"):
        with pytest.raises(ConfigError, match="read-only"):
            cat.query(statement)
    with pytest.raises(ConfigError, match="query failed"):
        cat.query("SELECT nonsense FROM clips")


def test_catalog_path_with_a_quote(tmp_path):
    root = init_catalog(tmp_path / "it's a catalog")
    commit_rows(root, "aaaa", [clip_row("aaaa", 0)])
    rebuild_index(root)
    assert Catalog(root).query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 1}]


def test_connect_explains_missing_and_moved_databases(root, tmp_path):
    with pytest.raises(ConfigError, match="catalog rebuild"):
        connect(root)
    commit_rows(root, "aaaa", [clip_row("aaaa", 0)])
    rebuild_index(root)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert not index_is_current(moved)
    with pytest.raises(ConfigError, match="was built for .* run `mimicmotion catalog rebuild"):
        connect(moved)
    rebuild_index(moved)  # the database is rebuilt from the Parquet files alone
    assert Catalog(moved).query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 1}]


def test_named_queries_select_training_clips(root):
    commit_rows(root, "aaaa", [
        clip_row("aaaa", 0),  # passes the defaults
        clip_row("aaaa", 1, num_frames=10),  # too short
        clip_row("aaaa", 2, person_count=2, mean_person_count=1.5),  # two people
        clip_row("aaaa", 3, hand_conf_mean=0.2, both_hands_fraction=0.1),  # weak hands
        clip_row("aaaa", 4, body_coverage=0.9),  # body cut by the crop
    ])
    commit_rows(root, "ffff", status="failed")
    rebuild_index(root)
    cat = Catalog(root)
    ids = lambda t: [c[-1] for c in t.column("clip_id").to_pylist()]  # noqa: E731
    assert ids(cat.training_clips()) == ["0", "3"]
    assert ids(cat.named("training_clips", min_hand_conf=0.5)) == ["0"]
    assert ids(cat.named("training_clips", min_frames="8", min_coverage=0.8)) == ["0", "1", "3", "4"]
    assert ids(cat.named("training_clips", max_people=2)) == ["0", "2", "3"]
    assert ids(cat.named("single_person_clips")) == ["0", "3", "4"]
    assert ids(cat.named("reliable_hand_clips", min_fraction=0.5)) == ["0", "2", "4"]
    failed = cat.named("failed_videos").to_pylist()
    assert [(r["video_id"], r["error_kind"]) for r in failed] == [("ffff", "no_person")]
    with pytest.raises(ConfigError, match="has no parameter min_legs"):
        cat.named("training_clips", min_legs=2)
    with pytest.raises(ConfigError, match="needs --param clip_id"):
        cat.named("clip_poses")
    with pytest.raises(ConfigError, match="no named query"):
        cat.named("best_clips")
    with pytest.raises(ConfigError, match="must be of type int"):
        cat.named("training_clips", min_frames="many")


def test_parameter_conversion():
    assert convert("12", int, "p") == 12 and convert("0.5", float, "p") == 0.5 and convert("yes", bool, "p") is True
    with pytest.raises(ConfigError):
        convert(1.5, int, "p")
    with pytest.raises(ConfigError):
        convert("maybe", bool, "p")
    assert ad_hoc_params({"a": "007", "b:int": "3", "c:float": "0.25", "d:bool": "true"}) == {
        "a": "007", "b": 3, "c": 0.25, "d": True}
    assert parse_params(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_params(["novalue"])


def test_stats(root):
    commit_rows(root, "aaaa", [clip_row("aaaa", 0, num_frames=20, duration_s=2.0),
                               clip_row("aaaa", 1, num_frames=10, person_count=2, duration_s=1.0)])
    commit_rows(root, "bbbb", status="failed")
    commit_rows(root, "cccc", status="failed", error_kind="video", error="corrupt")
    rebuild_index(root)
    stats = Catalog(root).stats()
    assert stats["videos"] == [{"status": "failed", "videos": 2, "seconds": 4.0},
                               {"status": "ok", "videos": 1, "seconds": 2.0}]
    assert stats["failures"] == [{"error_kind": "no_person", "videos": 1}, {"error_kind": "video", "videos": 1}]
    clips = stats["clips"]
    assert (clips["clips"], clips["frames"], clips["seconds"], clips["single_person_clips"]) == (2, 30, 3.0, 1)
    assert clips["mean_people"] == 1.5 and stats["poses"] == {"rows": 0, "subject_rows": 0}
    assert stats["bytes"] > 0


# ---------------------------------------------------------------------------------------------- curating files
def test_curate_file_with_sidecar_then_skip(root, media):
    d, poses = media
    outcome = curate_file(d / "dance.mp4", root, SETTINGS, pose_source="sidecar")
    assert outcome.status == "ok" and outcome.num_clips == 3  # 30 frames -> 12 + 12 + 6
    assert outcome.clip_ids == [clip_id_of(outcome.video_id, k) for k in range(3)]
    rebuild_index(root)
    cat = Catalog(root)
    video = cat.videos().to_pylist()[0]
    assert (video["status"], video["pose_source"], video["width"], video["height"], video["num_frames"]) == \
        ("ok", "sidecar", W, H, 30)
    assert video["frames_with_person"] == 30 and video["num_clips"] == 3
    assert json.loads(video["settings"])["clip_length"] == 12
    clips = cat.clips().to_pylist()
    assert [(c["start_frame"], c["end_frame"], c["source_start_frame"], c["source_end_frame"]) for c in clips] == \
        [(0, 12, 0, 12), (12, 24, 12, 24), (24, 30, 24, 30)]
    assert all((c["crop_x"], c["crop_y"], c["crop_w"], c["crop_h"]) == (0, 0, W, H) for c in clips)  # 9:16 frame
    assert all(c["person_count"] == 1 and c["body_coverage"] == 1.0 for c in clips)
    assert clips[0]["body_conf_mean"] == pytest.approx(np.float32(0.92))  # the dancer's body score

    # Exactly what the sidecar said, in frame coordinates, one row per frame (one person each).
    rows = cat.query("SELECT frame, source_frame, is_subject, x, y, score FROM poses WHERE clip_id = $c "
                     "ORDER BY frame", {"c": outcome.clip_ids[1]}).to_pylist()
    assert [r["source_frame"] for r in rows] == list(range(12, 24)) and all(r["is_subject"] for r in rows)
    got = np.stack([np.stack([r["x"], r["y"], r["score"]], -1) for r in rows])
    np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(np.concatenate(poses[12:24]), nan=-1))

    again = curate_file(d / "dance.mp4", root, SETTINGS, pose_source="sidecar")
    assert again.status == "skipped" and again.video_id == outcome.video_id
    copy = d / "copy.mp4"
    shutil.copy(d / "dance.mp4", copy)
    duplicate = curate_file(copy, root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root))
    assert duplicate.status == "skipped" and duplicate.reason == "same content already in the catalog"
    assert read_table(root, "videos").num_rows == 1


def test_known_file_is_skipped_without_hashing(root, media, monkeypatch):
    d, _ = media
    first = curate_file(d / "dance.mp4", root, SETTINGS, pose_source="sidecar")
    import catalog.ingest as ingest

    monkeypatch.setattr(ingest, "file_sha256", lambda *a: pytest.fail("a known file must not be hashed again"))
    again = curate_file(d / "dance.mp4", root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root))
    assert again.status == "skipped" and again.video_id == first.video_id


def test_clip_poses_in_crop_and_frame_space(tmp_path, media):
    d, _ = media
    root = init_catalog(tmp_path / "cat")
    landscape = tmp_path / "wide.mp4"
    poses = dancer(landscape, num_frames=14, seed=3, width=320, height=180)
    outcome = curate_file(landscape, root, SETTINGS, pose_source="sidecar")
    clip = read_table(root, "clips").to_pylist()[0]
    x, y, w, h = clip["crop_x"], clip["crop_y"], clip["crop_w"], clip["crop_h"]
    assert (w, h) == (101, 180) and 0 < x < 320 - 101
    seq = clip_poses(outcome.clip_ids[0], root)
    assert (seq.width, seq.height, len(seq), seq.fps) == (101, 180, 12, FPS)
    assert seq.source_frames == list(range(12)) and seq.source == str(landscape.resolve())
    expected = poses[5].copy()
    expected[..., 0] = (expected[..., 0] * 320 - x) / w
    expected[..., 1] = (expected[..., 1] * 180 - y) / h
    np.testing.assert_allclose(seq.frames[5], expected, rtol=0, atol=1e-12)
    frame_space = Catalog(root).clip_poses(outcome.clip_ids[0], space="frame", subject_only=True)
    assert (frame_space.width, frame_space.height) == (320, 180)
    np.testing.assert_array_equal(np.nan_to_num(frame_space.frames[5], nan=-1), np.nan_to_num(poses[5], nan=-1))
    with pytest.raises(KeyError):
        clip_poses("0000000000000000-0000", root)
    with pytest.raises(KeyError):
        clip_poses(outcome.video_id + "-0042", root)
    with pytest.raises(ConfigError, match="space"):
        clip_poses(outcome.clip_ids[0], root, space="latent")


def test_failures_are_rows_and_internal_errors_are_retried(root, tmp_path, media):
    d, _ = media
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    failed = curate_file(text, root, SETTINGS, pose_source="sidecar")
    assert failed.status == "failed" and failed.error_kind == "video" and "not a readable media file" in failed.reason
    assert curate_file(text, root, SETTINGS, pose_source="sidecar").status == "skipped"  # failures are final
    retried = curate_file(text, root, SETTINGS, pose_source="sidecar", retry_failed=True)
    assert retried.status == "failed" and read_table(root, "videos").num_rows == 1  # replaced, not duplicated

    class Crashing:
        def estimate_batch(self, frames):
            raise RuntimeError("worker crashed")

    video = tmp_path / "dance.mp4"
    shutil.copy(d / "dance.mp4", video)
    crashed = curate_file(video, root, SETTINGS, pose_source="dwpose", estimator=Crashing())
    assert (crashed.status, crashed.error_kind, crashed.reason) == ("failed", "internal", "RuntimeError: worker crashed")
    shutil.copy(sidecar_path(d / "dance.mp4"), sidecar_path(video))
    redone = curate_file(video, root, SETTINGS, pose_source="auto", known=KnownVideos.load(root))
    assert redone.status == "ok" and redone.video_id == crashed.video_id
    rows = read_table(root, "videos").to_pylist()
    assert sorted((r["file_name"], r["status"]) for r in rows) == [("dance.mp4", "ok"), ("notes.mp4", "failed")]


def test_missing_estimator_is_a_configuration_error(root, media):
    d, _ = media
    with pytest.raises(ConfigError, match="needs pose detection"):
        curate_file(d / "dance.mp4", root, SETTINGS, pose_source="dwpose")
    assert read_table(root, "videos").num_rows == 0


# ---------------------------------------------------------------------------------------------- CLI
def run_cli(argv, capsys):
    """What mimicmotion.cli.main does with these handlers: exit code, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="mimicmotion")
    add_catalog_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except MimicMotionError as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        code = 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_query_formats_and_named(root, capsys):
    commit_rows(root, "aaaa", [clip_row("aaaa", 0), clip_row("aaaa", 1, num_frames=8, motion_magnitude=None)])
    code, out, _ = run_cli(["catalog", "rebuild", "--catalog", str(root)], capsys)
    assert code == 0 and "1 video folder(s)" in out
    sql = "SELECT clip_id, num_frames, motion_magnitude FROM clips WHERE num_frames >= $n ORDER BY clip_id"
    code, out, _ = run_cli(["catalog", "query", sql, "--param", "n=1", "--format", "csv", "--catalog", str(root)], capsys)
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["clip_id", "num_frames", "motion_magnitude"],
                                                  ["aaaa-0000", "20", "0.1"], ["aaaa-0001", "8", ""]]
    code, out, _ = run_cli(["catalog", "query", sql, "--param", "n=10", "--format", "json", "--catalog", str(root)],
                           capsys)
    assert json.loads(out) == [{"clip_id": "aaaa-0000", "num_frames": 20, "motion_magnitude": 0.1}]
    code, out, _ = run_cli(["catalog", "query", "--named", "training_clips", "--param", "min_frames=5",
                            "--catalog", str(root)], capsys)
    assert code == 0 and "aaaa-0000" in out and "aaaa-0001" in out and out.rstrip().endswith("(2 rows)")
    code, out, _ = run_cli(["catalog", "query", "--list"], capsys)
    assert all(name in out for name in NAMED_QUERIES)
    code, _, err = run_cli(["catalog", "query", "DROP VIEW clips", "--catalog", str(root)], capsys)
    assert code == 1 and "read-only" in err
    code, _, err = run_cli(["catalog", "query", "--catalog", str(root)], capsys)
    assert code == 1 and "pass SQL" in err


def test_cli_stats_text_and_json(root, capsys):
    commit_rows(root, "aaaa", [clip_row("aaaa", 0)])
    commit_rows(root, "bbbb", status="failed")
    code, _, err = run_cli(["catalog", "stats", "--catalog", str(root)], capsys)
    assert code == 1 and "catalog rebuild" in err  # no database yet
    rebuild_index(root)
    code, out, _ = run_cli(["catalog", "stats", "--catalog", str(root)], capsys)
    assert code == 0 and "videos: 2 (1 ok, 1 failed)" in out and "failed (no_person): 1" in out
    assert "clips: 1 (20 frames, 1.7 s); 1 with one person" in out
    code, out, _ = run_cli(["catalog", "stats", "--format", "json", "--catalog", str(root)], capsys)
    assert json.loads(out)["clips"]["clips"] == 1


def test_format_table_shortens_lists_and_rows():
    table = pa.table({"a": [1, 2, 3], "v": [[0.0] * 134] * 3, "s": ["x" * 60, None, "y"]})
    text = format_table(table, max_rows=2)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "v", "s"] and "[134 values]" in lines[2] and "..." in lines[2]
    assert "NULL" in lines[3] and lines[-1] == "(3 rows, 1 not shown: use --format csv or json for all)"


def test_truncated_video_with_a_full_sidecar_is_failed_not_ok(tmp_path):
    """Half of the file decodes: the sidecar's later frames must not become clips (issue 39, item 1)."""
    video = tmp_path / "half.mp4"
    dancer(video, num_frames=48)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    root = init_catalog(tmp_path / "cat")
    outcome = curate_file(video, root, SETTINGS, pose_source="sidecar")
    assert (outcome.status, outcome.error_kind, outcome.num_clips) == ("failed", "video", 0)
    assert "half.mp4" in outcome.reason and "decod" in outcome.reason
    again = curate_file(video, root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root))
    assert again.status == "skipped"  # the failure is recorded (retry with --retry-failed once fixed)


def test_frames_over_the_size_limit_make_a_failed_row_before_decoding(tmp_path, monkeypatch):
    video = tmp_path / "big.mp4"
    dancer(video, num_frames=8)
    monkeypatch.setenv("MIMICMOTION_MAX_FRAME_PIXELS", "1000")
    outcome = curate_file(video, init_catalog(tmp_path / "cat"), SETTINGS, pose_source="sidecar")
    assert (outcome.status, outcome.error_kind) == ("failed", "video") and "over the limit" in outcome.reason


def test_contact_sheet_skips_a_clip_whose_video_no_longer_decodes(tmp_path):
    from catalog.api import Catalog
    from catalog.contact_sheet import write_contact_sheet

    root = init_catalog(tmp_path / "cat")
    good, bad = tmp_path / "good.mp4", tmp_path / "bad.mp4"
    dancer(good, num_frames=24)
    dancer(bad, num_frames=24, seed=1)
    clips = []
    for path in (good, bad):
        outcome = curate_file(path, root, SETTINGS, pose_source="sidecar")
        assert outcome.status == "ok"
        clips.append(outcome.clip_ids[0])
    from catalog.index import rebuild_index

    rebuild_index(root)
    bad.write_bytes(b"")  # gone bad after curation
    out = write_contact_sheet(Catalog(root), clips, tmp_path / "sheet.png")
    assert out.is_file()
    bad.unlink()
    good.unlink()
    with pytest.raises(ValueError, match="none of the 2 clips"):
        write_contact_sheet(Catalog(root), clips, tmp_path / "sheet2.png")


def test_queries_read_the_catalog_and_nothing_else(root, tmp_path, capsys):
    """COPY, ATTACH, SET and file functions outside the catalog are refused (issue 39, item 3)."""
    commit_rows(root, "aaaa", [clip_row("aaaa", 0, num_frames=20), clip_row("aaaa", 1, num_frames=8)])
    rebuild_index(root)
    cat = Catalog(root)
    part = next(root.glob("parts/*/clips.parquet"))
    before = part.read_bytes()
    outside = tmp_path / "x.csv"
    refused = {
        f"COPY (SELECT 42) TO '{outside}'": "read-only",
        f"COPY (SELECT 42 AS clip_id) TO '{part}' (FORMAT parquet)": "read-only",
        f"ATTACH '{tmp_path / 'x.duckdb'}' (READ_WRITE)": "read-only",
        "SET enable_external_access = true": "read-only",
        "INSTALL httpfs": "read-only",
        "SELECT * FROM read_text('/etc/passwd')": "Permission|disabled",
        "SELECT * FROM read_csv('/etc/hostname')": "Permission|disabled",
        "SELECT * FROM glob('/root/*')": "Permission|disabled",
        f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')": "Permission|disabled",
    }
    for sql, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            cat.query(sql)
    assert not outside.exists() and part.read_bytes() == before
    assert cat.query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 2}]
    assert cat.query("DESCRIBE clips").num_rows > 0 and cat.query("EXPLAIN SELECT * FROM clips").num_rows > 0
    code, out, err = run_cli(["catalog", "query", f"COPY (SELECT 1) TO '{outside}'", "--catalog", str(root)], capsys)
    assert code == 1 and "read-only" in err and not outside.exists()


def test_ad_hoc_parameters_are_text_unless_typed(root, capsys):
    commit_rows(root, "aaaa", [clip_row("aaaa", 0, num_frames=20)])
    rebuild_index(root)
    code, out, _ = run_cli(["catalog", "query", "SELECT $code AS code, $n AS n", "--param", "code=007",
                            "--param", "n:int=7", "--format", "json", "--catalog", str(root)], capsys)
    assert code == 0 and json.loads(out) == [{"code": "007", "n": 7}]
    code, out, _ = run_cli(["catalog", "query", "SELECT count(*) AS n FROM clips WHERE num_frames >= $m",
                            "--param", "m=16", "--format", "json", "--catalog", str(root)], capsys)
    assert code == 0 and json.loads(out) == [{"n": 1}]  # DuckDB casts the text where a number is compared
    code, _, err = run_cli(["catalog", "query", "SELECT $x", "--param", "x:date=1", "--catalog", str(root)], capsys)
    assert code == 1 and "unknown type 'date'" in err


def test_broken_links_in_an_inbox_are_reported_as_failed(tmp_path):
    from mimicmotion.curation import find_videos

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    dancer(inbox / "real.mp4", num_frames=24)
    (inbox / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (inbox / "loop_a.mp4").symlink_to(inbox / "loop_b.mp4")
    (inbox / "loop_b.mp4").symlink_to(inbox / "loop_a.mp4")
    found = find_videos([inbox])
    assert sorted(p.name for p in found) == ["gone.mp4", "loop_a.mp4", "loop_b.mp4", "real.mp4"]
    root = init_catalog(tmp_path / "cat")
    outcomes = {p.name: curate_file(p, root, SETTINGS, pose_source="sidecar") for p in found}
    assert outcomes["real.mp4"].status == "ok"
    assert outcomes["gone.mp4"].status == "failed" and "broken symbolic link" in outcomes["gone.mp4"].reason
    assert outcomes["loop_a.mp4"].status == "failed" and "loop" in outcomes["loop_a.mp4"].reason


def test_a_killed_index_rebuild_leaves_nothing_behind(tmp_path):
    root = init_catalog(tmp_path / "cat")
    stale = root / ".catalog.duckdb.999999999-abcd1234.tmp"
    stale.write_bytes(b"half a database")
    (root / ".catalog.duckdb.999999999-abcd1234.tmp.wal").write_bytes(b"")
    mine = root / f".catalog.duckdb.{os.getpid()}-abcd1234.tmp"  # a live writer's: kept
    mine.write_bytes(b"")
    removed = clean_staging(root)
    assert ".catalog.duckdb.999999999-abcd1234.tmp" in removed and not stale.exists() and mine.exists()


def test_the_cli_leaves_files_still_being_written_for_later(capsys):
    parser = argparse.ArgumentParser(prog="mimicmotion")
    add_catalog_commands(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["curate", "x"]).settle_seconds == 10.0


def test_a_fixed_sidecar_counts_as_a_change(tmp_path):
    """A video failed for its sidecar is curated again once the sidecar is fixed (no --retry-failed)."""
    from mimicmotion.curation import sidecar_path

    video = tmp_path / "d.mp4"
    dancer(video, num_frames=24)
    good = sidecar_path(video).read_bytes()
    sidecar_path(video).write_bytes(b"not parquet")
    root = init_catalog(tmp_path / "cat")
    first = curate_file(video, root, SETTINGS, pose_source="sidecar")
    assert first.status == "failed"
    assert curate_file(video, root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root)).status == "skipped"
    sidecar_path(video).write_bytes(good)
    os.utime(sidecar_path(video), ns=(1, 2_000_000_000_000_000_000))
    again = curate_file(video, root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root))
    assert again.status == "ok" and again.num_clips >= 1 and again.video_id == first.video_id
    rows = [r for r in read_table(root, "videos").to_pylist() if r["video_id"] == first.video_id]
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["sidecar_mtime_ns"] == 2_000_000_000_000_000_000
    # unchanged since: skipped again; with DWPose detection the sidecar is not an input
    assert curate_file(video, root, SETTINGS, pose_source="sidecar", known=KnownVideos.load(root)).status == "skipped"


HOSTILE_NAMES = ["with space.mp4", "ünïcødé 舞.mp4", "quo'te\"s.mp4", "semi;colon.mp4", "$(touch pwned).mp4",
                 "-dash.mp4", "back`tick`.mp4"]


def test_hostile_file_names_are_curated_and_queried_as_data(tmp_path, capsys):
    inbox = tmp_path / "in box"
    inbox.mkdir()
    for k, name in enumerate(HOSTILE_NAMES):
        dancer(inbox / name, num_frames=24, seed=k)
    root = init_catalog(tmp_path / "cat's")
    outcomes = [curate_file(p, root, SETTINGS, pose_source="sidecar") for p in sorted(inbox.glob("*.mp4"))]
    assert [o.status for o in outcomes] == ["ok"] * len(HOSTILE_NAMES)
    rebuild_index(root)
    for name in HOSTILE_NAMES:
        code, out, err = run_cli(["catalog", "query", "SELECT count(*) AS n FROM videos WHERE file_name = $f",
                                  "--param", f"f={name}", "--format", "json", "--catalog", str(root)], capsys)
        assert code == 0 and json.loads(out) == [{"n": 1}], (name, err)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
