"""The Prefect `curate` flow end to end on small generated videos: sidecar poses in-process (rows, crops,
statistics, views, artifacts, contact sheet), idempotent re-runs, a run killed with SIGKILL and resumed, a
fault corpus with DWPose (tiny ONNX models) in-process and on 2 Ray actors (same rows), the `curate` CLI,
and the scheduled deployment."""
import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
prefect_testing = pytest.importorskip("prefect.testing.utilities")

from catalog import Catalog  # noqa: E402
from catalog.store import STAGING_DIR, committed_video_ids  # noqa: E402
from media_fixtures import make_audio_only  # noqa: E402
from mimicmotion.errors import ConfigError, MimicMotionError  # noqa: E402
from test_catalog import dancer  # noqa: E402
from tiny_dwpose import empty_head, write_model_dir  # noqa: E402

FLOW = dict(sample_stride=1, clip_length=12, min_clip_length=6, contact_sheet_tiles=4)
TIMING_COLUMNS = ("curated_at", "hash_s", "probe_s", "pose_s", "plan_s", "total_s")


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def dancers(tmp_path_factory):
    """Three dancer videos with sidecar poses (30, 30 and 20 frames)."""
    d = tmp_path_factory.mktemp("dancers")
    for k, n in enumerate((30, 30, 20)):
        dancer(d / f"dance{k}.mp4", num_frames=n, seed=k)
    return d


def dot_video(path: Path, num_frames: int, start=(20, 40), red: int = 200, size=(160, 90)):
    """A grey video with a red square moving one pixel right and down per frame. The tiny pose model puts
    every keypoint on the reddest pixel with score (red - 123.675) / 58.395 (1.31 for 200); without red
    (red=0) every score is negative: no person."""
    from mimicmotion.video import write_video

    h, w = size
    frames = []
    for i in range(num_frames):
        f = np.full((h, w, 3), 60, np.uint8)
        x, y = start[0] + i, start[1] + i
        if red:
            f[y - 3:y + 4, x - 3:x + 4] = (red, 30, 30)
        frames.append(f)
    write_video(path, frames, fps=24)


@pytest.fixture(scope="module")
def fault_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    dot_video(d / "dot0.mp4", 20)
    dot_video(d / "dot1.mp4", 16, start=(30, 60))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video, just text with a video's name\n" * 10)
    make_audio_only(d / "audio.mp4", seconds=0.5)
    dot_video(d / "blank.mp4", 12, red=0)
    dot_video(d / "single.mp4", 1)
    return d


@pytest.fixture(scope="module")
def dwpose_dir(tmp_path_factory):
    return str(write_model_dir(tmp_path_factory.mktemp("dwpose"), empty_head()))


# every view in a fixed order, as literal SQL (table names are identifiers, not bindable values)
ORDERED_VIEWS = {"videos": "SELECT * FROM videos ORDER BY video_id",
                 "clips": "SELECT * FROM clips ORDER BY clip_id",
                 "poses": "SELECT * FROM poses ORDER BY clip_id, frame, person"}


def rows(root, table: str) -> list:
    """All rows of a view without run-dependent columns, as JSON text (NaN-safe comparison)."""
    result = Catalog(root).query(ORDERED_VIEWS[table])
    if table == "videos":
        result = result.drop_columns(list(TIMING_COLUMNS))
    return [json.dumps(r, default=str, sort_keys=True) for r in result.to_pylist()]


def all_rows(root) -> dict:
    return {table: rows(root, table) for table in ORDERED_VIEWS}


# ---------------------------------------------------------------------------------------------- sidecar, in-process
def test_flow_with_sidecars_fills_the_catalog_once(dancers, tmp_path):
    from prefect.artifacts import Artifact

    from flows.curate import curate

    root = tmp_path / "cat"
    summary = curate(inputs=[str(dancers)], catalog=str(root), pose_source="sidecar", **FLOW)
    assert (summary["videos"], summary["ok"], summary["skipped"], summary["failed"]) == (3, 3, 0, 0)
    assert summary["clips"] == 3 + 3 + 2  # 30 -> 12+12+6, 20 -> 12+8
    assert summary["video_seconds"] == pytest.approx((30 + 30 + 20) / 24, abs=0.01)
    assert summary["catalog_counts"] == {"videos": {"ok": 3}, "clips": 8}

    cat = Catalog(root)
    clips = cat.clips().to_pylist()
    assert sorted(c["num_frames"] for c in clips) == [6, 6, 8, 12, 12, 12, 12, 12]
    for c in clips:
        assert (c["crop_x"], c["crop_y"], c["crop_w"], c["crop_h"]) == (0, 0, 90, 160)
        assert (c["output_width"], c["output_height"], c["person_count"]) == (576, 1024, 1)
        assert c["body_coverage"] == 1.0 and c["sample_stride"] == 1 and c["fps"] == 24.0
        assert c["body_conf_min"] == pytest.approx(np.float32(0.92)) and c["face_conf_mean"] == pytest.approx(
            np.float32(0.85))
        assert 0 < c["motion_magnitude"] < 2 and 0.5 < c["subject_height"] < 1
    poses = cat.query("SELECT count(*) AS n, count(*) FILTER (WHERE is_subject) AS s FROM poses").to_pylist()[0]
    assert poses == {"n": 80, "s": 80}  # every clip frame, one dancer each
    assert len(cat.named("training_clips", min_frames=6)) == 8

    table = Artifact.get("curate-summary")
    assert table is not None and "3 ok, 0 skipped, 0 failed" in table.data and "dance2.mp4" in table.data
    sheet_artifact = Artifact.get("curate-contact-sheet")
    assert sheet_artifact is not None and Path(summary["contact_sheet"]).as_uri() in sheet_artifact.data
    import cv2

    sheet = cv2.imread(summary["contact_sheet"])
    assert sheet.shape == (256 + 18, 4 * 144, 3)  # 4 tiles of 144x256 (9:16) in one row, labels under them

    before = all_rows(root)
    again = curate(inputs=[str(dancers)], catalog=str(root), pose_source="sidecar", **FLOW)
    assert (again["ok"], again["skipped"], again["failed"], again["clips"]) == (0, 3, 0, 0)
    assert again["contact_sheet"] is None
    assert all_rows(root) == before


# ---------------------------------------------------------------------------------------------- SIGKILL
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.parquet as pq

    original = pq.write_table
    videos_written = []

    def write_then_die(table, where, *args, **kwargs):
        original(table, where, *args, **kwargs)
        name = os.path.basename(str(where))
        if "staging" in str(where) and name == "video.parquet":
            videos_written.append(where)
        if len(videos_written) == 2 and name == "clips.parquet":
            os.kill(os.getpid(), signal.SIGKILL)  # the second video is half written

    pq.write_table = write_then_die
    from flows.curate import curate
    curate(inputs=[sys.argv[1]], catalog=sys.argv[2], pose_source="sidecar", sample_stride=1, clip_length=12,
           min_clip_length=6, contact_sheet_tiles=0)
""")


def test_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(dancers, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.curate import curate

    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    root = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PREFECT_API_URL": PREFECT_API_URL.value()}
    child = subprocess.run([sys.executable, str(script), str(dancers), str(root)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert len(committed_video_ids(root)) == 1  # the first video; the second died in staging
    assert len(list((root / STAGING_DIR).iterdir())) == 1

    resumed = curate(inputs=[str(dancers)], catalog=str(root), pose_source="sidecar", **FLOW)
    assert (resumed["ok"], resumed["skipped"], resumed["failed"]) == (2, 1, 0)
    assert list((root / STAGING_DIR).iterdir()) == []  # the killed run's leftover is gone
    fresh = tmp_path / "fresh"
    curate(inputs=[str(dancers)], catalog=str(fresh), pose_source="sidecar", **FLOW)
    assert all_rows(root) == all_rows(fresh)


# ---------------------------------------------------------------------------------------------- faults, DWPose, Ray
EXPECTED_FAILURES = {
    "empty.mp4": ("video", "empty (0 bytes)"),
    "notes.mp4": ("video", "not a readable media file"),
    "audio.mp4": ("video", "no video stream (audio-only file?)"),
    "blank.mp4": ("no_person", "no person found in any of its 12 sampled frames"),
    "single.mp4": ("too_short", "longest stretch with a person is 1 sampled frame(s)"),
}


def check_fault_corpus_rows(root):
    videos = {r["file_name"]: r for r in Catalog(root).videos().to_pylist()}
    assert sorted(videos) == sorted(["dot0.mp4", "dot1.mp4", *EXPECTED_FAILURES])
    assert videos["dot0.mp4"]["status"] == videos["dot1.mp4"]["status"] == "ok"
    assert videos["dot0.mp4"]["pose_source"] == "dwpose" and videos["dot0.mp4"]["sampled_frames"] == 20
    for name, (kind, text) in EXPECTED_FAILURES.items():
        row = videos[name]
        assert (row["status"], row["error_kind"]) == ("failed", kind), (name, row["error"])
        assert text in row["error"] and name in row["error"]
    clips = Catalog(root).query("SELECT v.file_name, c.num_frames, c.crop_x, c.crop_y, c.crop_w, c.crop_h, "
                                "c.body_conf_mean FROM clips c JOIN videos v USING (video_id) "
                                "ORDER BY c.clip_id").to_pylist()
    # dot0: 20 frames -> 12 + 8; dot1: 16 frames -> 12 (+ 4, below the minimum of 6)
    assert sorted((c["file_name"], c["num_frames"]) for c in clips) == [("dot0.mp4", 8), ("dot0.mp4", 12),
                                                                       ("dot1.mp4", 12)]
    for c in clips:
        assert (c["crop_x"], c["crop_y"], c["crop_w"], c["crop_h"]) == (0, 0, 90, 160)
        assert c["body_conf_mean"] == pytest.approx((200 - 123.675) / 58.395, abs=0.1)


def test_fault_corpus_with_dwpose_in_process_and_on_two_ray_actors(fault_corpus, dwpose_dir, tmp_path):
    from flows.curate import curate

    local = tmp_path / "local"
    summary = curate(inputs=[str(fault_corpus)], catalog=str(local), dwpose_dir=dwpose_dir, **FLOW)
    assert (summary["videos"], summary["ok"], summary["skipped"], summary["failed"]) == (7, 2, 0, 5)
    assert {Path(f["path"]).name: f["kind"] for f in summary["failures"]} == {
        name: kind for name, (kind, _) in EXPECTED_FAILURES.items()}
    check_fault_corpus_rows(local)

    # The subject's keypoints sit on the red square, centred at (20 + i, 40 + i) in frame i: within its
    # half-width (3 px) plus one pose-model input pixel (the whole-frame box, padded to 150 x 200, seen at the
    # tiny model's 48 x 64 input: 3.125 px).
    [first] = Catalog(local).query("SELECT clip_id FROM clips JOIN videos USING (video_id) WHERE file_name = $f "
                                   "AND clip_index = 0", {"f": "dot0.mp4"}).column("clip_id").to_pylist()
    poses = Catalog(local).clip_poses(first, space="frame")
    assert poses.source_frames == list(range(12))
    for c, start, size in ((0, 20, 90), (1, 40, 160)):
        located = np.array([f[0, :, c] * size for f in poses.frames])  # (12 frames, 134 points)
        assert np.all(np.abs(located - (start + np.arange(12))[:, None]) <= 3 + 3.125), c

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    distributed = tmp_path / "ray"
    summary = curate(inputs=[str(fault_corpus)], catalog=str(distributed), dwpose_dir=dwpose_dir, use_ray=True,
                     actors=2, batch_size=4, **FLOW)
    assert (summary["ok"], summary["failed"]) == (2, 5)
    assert ray.is_initialized()  # the flow leaves a Ray it did not start running
    assert all_rows(distributed) == all_rows(local)


def test_ray_pose_pool_keeps_batch_order(dwpose_dir):
    from mimicmotion.pose.dwpose import DWPoseEstimator
    from tasks.ray_pose import RayPoseEstimator, actor_gpus

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    frames = []
    for i in range(10):
        f = np.full((64, 48, 3), 40, np.uint8)
        f[5 + i, 3 + 2 * i] = (250, 0, 0)
        frames.append(f)
    batches = [frames[k:k + 3] for k in range(0, 10, 3)]
    local = DWPoseEstimator(dwpose_dir)
    with RayPoseEstimator(dwpose_dir, num_actors=2, cpus_per_actor=0.5, max_in_flight=2) as pool:
        assert pool.providers == [["CPUExecutionProvider"]] * 2 and pool.gpus_per_actor == 0
        streamed = [p for result in pool.estimate_batches(batches) for p in result]
        single = pool(frames[4])
    expected = local.estimate_batch(frames)
    assert len(streamed) == 10
    for got, want in zip(streamed, expected):
        np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1))
    np.testing.assert_array_equal(single, expected[4])
    assert actor_gpus(2, 1.0, None) == 0.5 and actor_gpus(1, 4.0, None) == 1.0 and actor_gpus(3, 0.0, None) == 0.0
    with pytest.raises(ConfigError, match="no GPU"):
        actor_gpus(2, 0.0, True)


# ---------------------------------------------------------------------------------------------- options, CLI, deployment
def test_bad_options_fail_before_any_work(dancers, tmp_path):
    from flows.curate import check_run_options, curate

    with pytest.raises(ConfigError, match="min_clip_length"):
        curate(inputs=[str(dancers)], catalog=str(tmp_path / "a"), min_clip_length=100, clip_length=10)
    with pytest.raises(ConfigError, match="pose_source"):
        curate(inputs=[str(dancers)], catalog=str(tmp_path / "a"), pose_source="guess")
    with pytest.raises(ConfigError, match="does not exist"):
        curate(inputs=[str(tmp_path / "nowhere")], catalog=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(MimicMotionError, match="dw-ll_ucoco_384.onnx|yolox_l.onnx"):
        curate(inputs=[str(dancers)], catalog=str(tmp_path / "b"), dwpose_dir=str(tmp_path))  # no model files
    assert committed_video_ids(tmp_path / "b") == []
    assert check_run_options("auto", True, 3, None, 8, 0) == 3 and check_run_options("dwpose", False, 2, None, 8, 1) == 1
    for bad in (dict(workers=0), dict(actors=0), dict(batch_size=0), dict(contact_sheet_tiles=-1)):
        kwargs = dict(pose_source="dwpose", use_ray=False, actors=2, workers=None, batch_size=8, contact_sheet_tiles=0)
        kwargs.update(bad)
        with pytest.raises(ConfigError, match=next(iter(bad))):
            check_run_options(**kwargs)


def test_curate_cli(dancers, tmp_path, capsys):
    from catalog.cli import add_catalog_commands

    parser = argparse.ArgumentParser(prog="mimicmotion")
    add_catalog_commands(parser.add_subparsers(dest="command", required=True))
    root = tmp_path / "cat"
    args = parser.parse_args(["curate", str(dancers / "dance2.mp4"), "--catalog", str(root), "--pose-source",
                              "sidecar", "--sample-stride", "1", "--clip-length", "12", "--min-clip-length", "6",
                              "--contact-sheet-tiles", "0"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1 video(s): 1 ok, 0 skipped, 0 failed; 2 clip(s)" in out and f"catalog: {root}" in out
    args = parser.parse_args(["catalog", "query", "SELECT num_frames FROM clips ORDER BY clip_id", "--format", "json",
                              "--catalog", str(root)])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == [{"num_frames": 12}, {"num_frames": 8}]


def test_scheduled_deployment(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deployments.curate import build_deployment

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    deployment = build_deployment(str(inbox), str(tmp_path / "cat"), cron="*/15 * * * *", timezone="Europe/Paris",
                                  parameters={"use_ray": True, "actors": 4})
    assert deployment.name == "inbox" and deployment.flow_name == "curate"
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("*/15 * * * *", "Europe/Paris")
    assert deployment.parameters == {"inputs": [str(inbox)], "settle_seconds": 120.0, "catalog": str(tmp_path / "cat"),
                                     "use_ray": True, "actors": 4}
    assert deployment.concurrency_limit == 1
    with pytest.raises(ConfigError, match="inbox folder"):
        build_deployment(str(tmp_path / "missing"))


# ------------------------------------------------------------------------- the bundled pose estimator
SHARED_DANCE = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "dance.mp4"


@pytest.fixture(scope="module")
def bundled_corpus(tmp_path_factory):
    """A generated dancer with no sidecar (detected by the bundled estimator), black frames, a 1x1 video."""
    import av

    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip
    from mimicmotion.video import write_video

    d = tmp_path_factory.mktemp("bundled")
    appearance, motion = sample_clip(0)
    clip = render_clip_detailed(appearance, motion, 0, width=288, height=512, num_frames=16, fps=12)
    write_video(d / "synth.mp4", clip.frames, fps=12)
    write_video(d / "black.mp4", np.zeros((8, 64, 64, 3), np.uint8), fps=12)
    with av.open(str(d / "pixel.avi"), "w") as container:  # H.264 cannot encode 1x1; MPEG-4 part 2 can
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 1, 1, "yuv420p"
        for _ in range(8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((1, 1, 3), 128, np.uint8), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return d


def test_curate_with_the_bundled_estimator_records_it(bundled_corpus, tmp_path, monkeypatch):
    from flows.curate import curate

    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tmp_path / "no-dwpose"))  # auto must pick the bundled one
    root = tmp_path / "cat"
    summary = curate(inputs=[str(bundled_corpus)], catalog=str(root), **FLOW)
    assert (summary["ok"], summary["failed"]) == (1, 2)
    cat = Catalog(root)
    videos = {r["file_name"]: r for r in cat.query("SELECT * FROM videos").to_pylist()}
    synth = videos["synth.mp4"]
    assert synth["status"] == "ok" and synth["num_clips"] >= 1
    assert (synth["pose_source"], synth["pose_estimator"]) == ("mediapipe", "mediapipe")
    assert synth["pose_estimator_version"] == "mediapipe-holistic-0.10.21"
    for name in ("black.mp4", "pixel.avi"):
        assert videos[name]["status"] == "failed" and videos[name]["error_kind"] == "no_person", videos[name]
        assert videos[name]["error"]
    selected = cat.named("clips_by_estimator", estimator="mediapipe", min_frames=1).to_pylist()
    assert selected and {r["pose_estimator_version"] for r in selected} == {"mediapipe-holistic-0.10.21"}
    assert cat.named("clips_by_estimator", estimator="dwpose", min_frames=1).num_rows == 0
    poses = cat.query("SELECT score FROM poses WHERE is_subject").to_pylist()
    body = np.array([r["score"][:18] for r in poses])
    assert (body > 0.3).mean() > 0.5  # real confidences, not placeholders


def test_bundled_estimator_on_two_ray_actors_matches_in_process(bundled_corpus):
    from mimicmotion.pose.holistic import HolisticEstimator
    from mimicmotion.video import iter_frames
    from tasks.ray_pose import RayPoseEstimator, ensure_ray

    frames = [f for batch in iter_frames(bundled_corpus / "synth.mp4", list(range(8)), batch_size=4) for f in batch]
    local = HolisticEstimator(num_threads=1).estimate_batch(frames)
    ensure_ray(num_cpus=2)
    pool = RayPoseEstimator(None, num_actors=2, estimator="mediapipe", cpus_per_actor=1)
    try:
        assert (pool.name, pool.version) == ("mediapipe", "mediapipe-holistic-0.10.21")
        remote = [p for batch in pool.estimate_batches([frames[:4], frames[4:]]) for p in batch]
    finally:
        pool.close()
    assert len(remote) == len(local)
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a, b)


def test_pose_source_dwpose_and_the_bundled_estimator_conflict(dancers, tmp_path):
    from flows.curate import curate, detection_estimator

    assert detection_estimator("dwpose", "auto") == "dwpose"
    assert detection_estimator("detect", "mediapipe") == "mediapipe"
    with pytest.raises(ConfigError, match="pose_estimator"):
        curate(inputs=[str(dancers)], catalog=str(tmp_path / "a"), pose_source="dwpose", pose_estimator="mediapipe")
    with pytest.raises(ConfigError, match="pose estimator must be one of"):
        curate(inputs=[str(dancers)], catalog=str(tmp_path / "a"), pose_estimator="openpose")


@pytest.mark.skipif(not SHARED_DANCE.is_file(), reason="../shared/assets is absent")
def test_curate_cli_on_the_real_dance_video_with_no_model_download(tmp_path, capsys, monkeypatch):
    from catalog.cli import add_catalog_commands

    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tmp_path / "no-dwpose"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "dance.mp4").symlink_to(SHARED_DANCE)
    parser = argparse.ArgumentParser(prog="mimicmotion")
    add_catalog_commands(parser.add_subparsers(dest="command", required=True))
    root = tmp_path / "cat"
    args = parser.parse_args(["curate", str(inbox), "--catalog", str(root), "--contact-sheet-tiles", "0"])
    assert args.func(args) == 0
    assert "1 ok, 0 skipped, 0 failed" in capsys.readouterr().out
    cat = Catalog(root)
    [video] = cat.query("SELECT pose_estimator, num_clips FROM videos").to_pylist()
    assert video["pose_estimator"] == "mediapipe" and video["num_clips"] >= 1
    scores = np.array([r["score"] for r in cat.query("SELECT score FROM poses WHERE is_subject ORDER BY clip_id, "
                                                      "frame").to_pylist()])
    hands = scores[:, 92:134].max(axis=1)
    assert hands.std() > 0.01 and (hands > 0).mean() > 0.5  # hand confidences vary over the clip
    assert (scores[:, :18] > 0.3).sum(axis=1).min() >= 12


def test_two_overlapping_curate_runs_give_the_rows_of_one(dancers, tmp_path):
    """Issue 37, item 2: an overlapping cron or an ad hoc run during the scheduled one, plus queries while
    they write: no crash, no duplicate, no corrupt index, the rows of a single run."""
    import time

    from prefect.settings import PREFECT_API_URL

    from flows.curate import curate

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    root = tmp_path / "cat"
    cmd = [sys.executable, "-m", "mimicmotion.cli", "curate", str(dancers), "--catalog", str(root), "--pose-source",
           "sidecar", "--sample-stride", "1", "--clip-length", "12", "--min-clip-length", "6",
           "--contact-sheet-tiles", "0", "--settle-seconds", "0"]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = []
    while any(r.poll() is None for r in runs):  # read while they write
        try:
            Catalog(root).query("SELECT count(*) FROM clips")
        except ConfigError as exc:
            if "no catalog database" not in str(exc) and "cannot open" not in str(exc):
                errors.append(str(exc))
        time.sleep(0.2)
    outputs = [r.communicate() for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert not errors, errors[:3]
    single = tmp_path / "single"
    curate(inputs=[str(dancers)], catalog=str(single), pose_source="sidecar", **{**FLOW, "contact_sheet_tiles": 0})
    assert all_rows(root) == all_rows(single)
    ids = [r["video_id"] for r in Catalog(root).query("SELECT video_id FROM videos").to_pylist()]
    assert len(ids) == len(set(ids)) == 3
    assert not list((root / STAGING_DIR).iterdir()) and not list(root.glob(".*.tmp*"))


def test_sigkill_at_ten_moments_then_rerun_loses_nothing(dancers, tmp_path):
    """Issue 37, item 1: a curate CLI run SIGKILLed at 10 moments spread over its run (start-up, decode,
    commits, index), each rerun to the end: the same rows as an uninterrupted run, no duplicate, no temporary
    file, an index that opens."""
    import time

    from prefect.settings import PREFECT_API_URL

    from flows.curate import curate

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    options = ["--pose-source", "sidecar", "--sample-stride", "1", "--clip-length", "12", "--min-clip-length", "6",
               "--contact-sheet-tiles", "4", "--settle-seconds", "0"]

    def cli(root):
        return subprocess.Popen([sys.executable, "-m", "mimicmotion.cli", "curate", str(dancers), "--catalog",
                                 str(root), *options], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    reference = tmp_path / "reference"
    start = time.monotonic()
    full = cli(reference)
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    duration = time.monotonic() - start
    expected = all_rows(reference)
    killed_with_work_done = 0
    for k in range(10):
        root = tmp_path / f"killed{k}"
        run = cli(root)
        time.sleep(duration * (0.15 + 0.8 * k / 9))
        run.kill()
        run.wait(timeout=60)
        killed_with_work_done += bool(committed_video_ids(root)) and run.returncode == -signal.SIGKILL
        curate(inputs=[str(dancers)], catalog=str(root), pose_source="sidecar",
               **{**FLOW, "contact_sheet_tiles": 4})
        assert all_rows(root) == expected, k
        ids = [r["video_id"] for r in Catalog(root).query("SELECT video_id FROM videos").to_pylist()]
        assert len(ids) == len(set(ids)) == 3
        assert not list((root / STAGING_DIR).iterdir()) and not list(root.glob(".*.tmp*"))
        assert not [p for p in root.rglob("*") if p.name.startswith(".") and p.is_file()], k
    assert killed_with_work_done >= 2  # some kills landed after commits had begun
