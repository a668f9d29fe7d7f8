"""Curation library (mimicmotion.curation): settings, crops, clip splitting, subject tracking, statistics,
sidecar files, video discovery and pose detection over a video, with hand-computed expectations."""
import hashlib
import os

import numpy as np
import pytest

from mimicmotion.curation import (CurationSettings, VideoRejected, box_iou, clip_stats, contact_sheet, crop_box,
                                  detect_poses, file_sha256, find_videos, load_sidecar, motion_magnitude,
                                  output_size, overlay_pose, parse_aspect, person_box, person_runs, plan_clips,
                                  real_people, round_half_up, sidecar_path, split_run, to_crop_coordinates,
                                  track_subject)
from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.io import PoseSequence, save_poses
from mimicmotion.pose.layout import BODY, FACE, LEFT_HAND, NUM_POINTS, RIGHT_HAND


def person(x0, y0, x1, y1, score=0.9):
    """A (134, 3) person whose points span exactly the normalised box (x0, y0)-(x1, y1)."""
    p = np.empty((NUM_POINTS, 3))
    p[:, 0] = np.where(np.arange(NUM_POINTS) % 2 == 0, x0, x1)
    p[:, 1] = np.where(np.arange(NUM_POINTS) % 3 == 0, y0, y1)
    p[:, 2] = score
    return p


def frame(*people):
    return np.stack(people) if people else np.zeros((0, NUM_POINTS, 3))


# ---------------------------------------------------------------------------------------------- settings
def test_output_size_follows_spec_rule():
    assert output_size((9, 16), 576) == (576, 1024)
    assert output_size((16, 9), 576) == (1024, 576)
    assert output_size((1, 1), 512) == (512, 512)
    assert output_size((3, 4), 576) == (576, 768)
    assert output_size((2, 3), 500) == (500, 704)  # 750 rounded down to a multiple of 64


def test_parse_aspect():
    assert parse_aspect("9:16") == (9, 16)
    assert parse_aspect("3/4") == (3, 4)
    assert parse_aspect((16, 9)) == (16, 9)
    for bad in ("9x16", "0:16", "9:16:1", None, "-9:16"):
        with pytest.raises(ConfigError, match="WIDTH:HEIGHT"):
            parse_aspect(bad)


def test_settings_validation_names_the_setting():
    CurationSettings().validate()
    assert CurationSettings(clip_length=10).hop == 10 and CurationSettings(clip_stride=3).hop == 3
    assert CurationSettings().output_size == (576, 1024)
    cases = [(dict(min_clip_length=80), "min_clip_length"), (dict(clip_length=1), "clip_length"),
             (dict(sample_stride=0), "sample_stride"), (dict(aspect="wide"), "aspect"),
             (dict(min_crop_fraction=0.0), "min_crop_fraction"), (dict(crop_margin=-0.1), "crop_margin"),
             (dict(min_body_points=19), "min_body_points"), (dict(clip_stride=0), "clip_stride"),
             (dict(hand_threshold=1.5), "hand_threshold"), (dict(resolution=32), "resolution")]
    for kwargs, name in cases:
        with pytest.raises(ConfigError, match=name):
            CurationSettings(**kwargs).validate()


# ---------------------------------------------------------------------------------------------- crops
def test_round_half_up():
    assert [round_half_up(v) for v in (0.5, 1.5, 2.5, -0.5, 2.49)] == [1, 2, 3, 0, 2]


def test_crop_box_uses_the_largest_window_by_default():
    # Portrait 90x160: the largest 9:16 window is the whole frame.
    assert crop_box((30, 40, 50, 120), 90, 160) == (0, 0, 90, 160)
    # Landscape 320x180: 101x180 (180*9/16 = 101.25) centred on the body at x 220 -> 220 - 50.5 = 169.5 -> 170.
    assert crop_box((200, 20, 240, 170), 320, 180) == (170, 0, 101, 180)


def test_crop_box_moves_inside_the_frame():
    # Body centre 309: 258.5 -> 259 would overflow; clamped to 320 - 101.
    assert crop_box((300, 10, 318, 170), 320, 180) == (219, 0, 101, 180)
    assert crop_box((0, 10, 10, 170), 320, 180) == (0, 0, 101, 180)


def test_crop_box_zooms_in_down_to_min_fraction():
    # Body 20x40 px, margin 0.1 -> pad 4: need max(48, 28 * 16/9 = 49.78) -> 50 high, 28 wide (28.125).
    assert crop_box((100, 60, 120, 100), 320, 180, margin=0.1, min_fraction=0.25) == (96, 55, 28, 50)
    # min_fraction 0.5 raises the height to 90 (0.5 * 180): 51 wide (50.625), centred on (110, 80).
    assert crop_box((100, 60, 120, 100), 320, 180, margin=0.1, min_fraction=0.5) == (85, 35, 51, 90)


def test_crop_box_too_wide_body_keeps_its_centre():
    assert crop_box((50, 10, 250, 170), 320, 180) == (100, 0, 101, 180)  # 150 - 50.5 = 99.5 -> 100


def test_crop_box_other_aspects():
    # 16:9 crop in a 1920x1080 frame: the whole frame.
    assert crop_box((900, 100, 1000, 900), 1920, 1080, aspect=(16, 9)) == (0, 0, 1920, 1080)
    # 1:1 in 400x300: 300x300 centred on x 100 -> clamped to 0.
    assert crop_box((80, 50, 120, 250), 400, 300, aspect=(1, 1)) == (0, 0, 300, 300)


def test_to_crop_coordinates():
    pts = np.full((1, NUM_POINTS, 3), np.nan)
    pts[0, 0] = (0.5, 0.5, 0.9)
    pts[0, 1] = (0.1, 0.1, 0.4)
    pts[0, 2] = (np.nan, np.nan, 0.0)
    out = to_crop_coordinates(pts, (25, 50, 50, 100), 100, 200)
    np.testing.assert_allclose(out[0, 0], (0.5, 0.5, 0.9))
    np.testing.assert_allclose(out[0, 1], (-0.3, -0.3, 0.4))
    assert np.isnan(out[0, 2, :2]).all() and out[0, 2, 2] == 0.0
    assert pts[0, 0, 0] == 0.5  # input untouched


# ---------------------------------------------------------------------------------------------- splitting
def test_person_runs():
    flags = [False, True, True, False, True, False, False, True, True, True]
    assert person_runs(flags) == [(1, 3), (4, 5), (7, 10)]
    assert person_runs([]) == [] and person_runs([True] * 3) == [(0, 3)]


def test_split_run():
    assert split_run(0, 100, 72, 72, 16) == [(0, 72), (72, 100)]
    assert split_run(0, 100, 72, 36, 16) == [(0, 72), (36, 100)]  # nothing starts after the end was reached
    assert split_run(10, 30, 8, 8, 4) == [(10, 18), (18, 26), (26, 30)]
    assert split_run(0, 20, 8, 8, 5) == [(0, 8), (8, 16)]  # the 4-frame tail is too short
    assert split_run(0, 3, 8, 8, 4) == []


# ---------------------------------------------------------------------------------------------- people
def test_real_people_needs_visible_body_joints():
    weak = person(0.1, 0.1, 0.2, 0.2, score=0.3)  # not above 0.3
    few = person(0.1, 0.1, 0.2, 0.2)
    few[BODY.start + 3:BODY.stop, 2] = 0.1  # 3 visible body joints
    hidden = person(0.1, 0.1, 0.2, 0.2)
    hidden[BODY, 0] = np.nan  # no location
    assert real_people(frame(person(0, 0, 1, 1), weak, few, hidden), 4).tolist() == [True, False, False, False]
    assert real_people(frame(few), 3).tolist() == [True]
    assert real_people(frame(), 4).tolist() == []


def test_person_box_and_iou():
    assert person_box(person(0.1, 0.2, 0.3, 0.6), 100, 50) == pytest.approx((10, 10, 30, 30))
    assert person_box(person(0.1, 0.2, 0.3, 0.6, score=0.2), 100, 50) is None
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # no area: no overlap to speak of


def test_track_subject_follows_overlap_then_prominence():
    small = person(0.05, 0.2, 0.25, 0.6)
    big = person(0.6, 0.1, 0.95, 0.9)
    small_moved = person(0.07, 0.2, 0.27, 0.6)
    frames = [
        frame(small, big),  # most prominent: big (1)
        frame(big, small),  # order swapped: still big, now 0
        frame(person(0, 0, 1, 1, score=0.1)),  # nobody counts
        frame(small),  # after a gap: the only person
        frame(big, small_moved),  # small_moved overlaps the previous subject
        frame(big),  # no overlap with small_moved: most prominent
    ]
    assert track_subject(frames, 100, 100, min_body_points=4) == [1, 0, -1, 0, 1, 0]


# ---------------------------------------------------------------------------------------------- statistics
def test_motion_magnitude_in_crop_heights_per_second():
    a = person(0.1, 0.1, 0.3, 0.5)
    b = a.copy()
    b[:, 0] += 0.1  # 10 px at width 100
    c = b.copy()
    c[:, 1] += 0.05  # 10 px at height 200
    c[BODY.start, 2] = 0.0  # one joint vanishes: the others still count
    # 10 px per frame / crop height 100 * 10 fps = 1.0
    assert motion_magnitude([a, b, c], 100, 200, 100, 10.0) == pytest.approx(1.0)
    assert motion_magnitude([a], 100, 200, 100, 10.0) is None


def test_clip_stats_hand_computed():
    settings = CurationSettings(hand_threshold=0.6)
    p0 = person(0.2, 0.25, 0.4, 0.75)  # 100 x 200 frame: box 20..40 x 50..150 px
    p0[BODY, 2] = 0.8
    p0[LEFT_HAND, 2] = p0[RIGHT_HAND, 2] = 0.7
    p0[FACE, 2] = 0.6
    p1 = p0.copy()
    p1[LEFT_HAND.start, 2] = 0.5  # one hand point below the hand threshold
    p1[:, 0] += 0.5  # moved right by 50 px: outside the crop below
    other = person(0.8, 0.1, 0.9, 0.2, score=0.9)
    crop = (0, 0, 50, 100)
    stats = clip_stats([frame(p0, other), frame(p1)], [0, 0], crop, 100, 200, 10.0, settings)
    assert stats.person_count == 2 and stats.mean_person_count == 1.5
    assert stats.body_conf_mean == pytest.approx(0.8) and stats.body_conf_min == pytest.approx(0.8)
    hand1 = (41 * 0.7 + 0.5) / 42
    assert stats.hand_conf_mean == pytest.approx((0.7 + hand1) / 2) and stats.hand_conf_min == pytest.approx(hand1)
    assert stats.face_conf_mean == pytest.approx(0.6)
    assert stats.both_hands_fraction == 0.5
    # Frame 0: every visible point inside the crop x <= 50, y <= 100? y spans 50..150: the y = 150 rows are out.
    xs0, ys0 = p0[:, 0] * 100, p0[:, 1] * 200
    inside0 = int(((xs0 <= 50) & (ys0 <= 100)).sum())
    visible1 = NUM_POINTS  # all scores > 0.3 (0.5 included); all at x >= 70: outside
    assert stats.body_coverage == pytest.approx(inside0 / (NUM_POINTS + visible1))
    assert stats.subject_height == pytest.approx(100 / 100)
    assert stats.motion_magnitude == pytest.approx(50 / 100 * 10.0)


# ---------------------------------------------------------------------------------------------- planning
def _sequence(flags, width=90, height=160):
    frames = [frame(person(0.3, 0.2, 0.6, 0.9)) if f else frame(person(0.3, 0.2, 0.6, 0.9, score=0.05))
              for f in flags]
    return PoseSequence(frames=frames, width=width, height=height, fps=12.0, source="/data/x.mp4",
                        source_frames=list(range(0, 2 * len(flags), 2)), sample_stride=2)


def test_plan_clips_cuts_at_personless_frames():
    seq = _sequence([True] * 5 + [False] + [True] * 6)
    plan = plan_clips(seq, CurationSettings(clip_length=4, min_clip_length=3))
    assert [(c.start, c.stop) for c in plan.clips] == [(0, 4), (6, 10)]  # tails of 1 and 2 frames dropped
    assert plan.frames_with_person == 11
    assert [c.index for c in plan.clips] == [0, 1]
    assert all(c.subjects == (0, 0, 0, 0) for c in plan.clips)
    assert plan.clips[0].crop == (0, 0, 90, 160)
    assert plan.clips[0].stats.motion_magnitude == 0.0


def test_plan_clips_rejects_personless_and_short_videos():
    with pytest.raises(VideoRejected, match="no person found in any of its 4 sampled frames") as info:
        plan_clips(_sequence([False] * 4), CurationSettings())
    assert info.value.kind == "no_person"
    with pytest.raises(VideoRejected, match="longest stretch with a person is 3 sampled") as info:
        plan_clips(_sequence([True, True, True, False, True]), CurationSettings(clip_length=8, min_clip_length=4))
    assert info.value.kind == "too_short"
    with pytest.raises(VideoRejected) as info:
        plan_clips(_sequence([]), CurationSettings())
    assert info.value.kind == "no_person"


# ---------------------------------------------------------------------------------------------- files
def test_file_sha256_streams(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin", chunk_size=1024) == hashlib.sha256(data).hexdigest()


def test_sidecar_path():
    assert sidecar_path("/a/b/dance.mp4").as_posix() == "/a/b/dance.poses.parquet"
    assert sidecar_path("clip.v2.mov").name == "clip.v2.poses.parquet"


def test_find_videos(tmp_path):
    for name in ("a.mp4", "b.MOV", ".hidden.mp4", "notes.txt", "a.poses.parquet", "sub/c.webm", ".cache/d.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    extra = tmp_path / "elsewhere.bin"
    extra.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_videos([tmp_path, extra, tmp_path / "a.mp4"])]
    assert found == ["a.mp4", "b.MOV", "elsewhere.bin", "sub/c.webm"]
    assert [p.name for p in find_videos(str(tmp_path), recursive=False)] == ["a.mp4", "b.MOV"]
    os.utime(tmp_path / "a.mp4", (1000.0, 1000.0))
    settled = find_videos([tmp_path], settle_seconds=60, now=1070.0)  # only a.mp4 is older than a minute
    assert [p.name for p in settled] == ["a.mp4"]
    with pytest.raises(ConfigError, match="does not exist"):
        find_videos([tmp_path / "missing"])


def test_load_sidecar_checks_it_matches_the_video(tmp_path):
    video = tmp_path / "v.mp4"
    with pytest.raises(PoseError, match="expected .*v.poses.parquet"):
        load_sidecar(video, 90, 160, 10)
    seq = PoseSequence(frames=[frame(person(0.1, 0.1, 0.5, 0.5))] * 3, width=90, height=160, fps=12.0,
                       source_frames=[0, 2, 4], sample_stride=2)
    save_poses(sidecar_path(video), seq)
    loaded = load_sidecar(video, 90, 160, 10)
    assert loaded.source_frames == [0, 2, 4] and loaded.sample_stride == 2 and loaded.source == str(video)
    with pytest.raises(PoseError, match="describes 90x160 frames but .* is 160x90"):
        load_sidecar(video, 160, 90, 10)
    with pytest.raises(PoseError, match="outside 0..3"):
        load_sidecar(video, 90, 160, 4)


# ---------------------------------------------------------------------------------------------- detection
class BrightnessEstimator:
    """Returns one person whose x is the frame's mean brightness / 255; records the batch sizes."""

    def __init__(self):
        self.batches = []

    def estimate_batch(self, frames):
        self.batches.append(len(frames))
        out = []
        for f in frames:
            p = np.zeros((1, NUM_POINTS, 3))
            p[..., 0] = f.mean() / 255
            out.append(p)
        return out


class StreamingEstimator(BrightnessEstimator):
    def estimate_batches(self, batches):
        for b in batches:
            yield self.estimate_batch(b)


@pytest.mark.parametrize("estimator_cls", [BrightnessEstimator, StreamingEstimator])
def test_detect_poses_samples_like_the_release_and_keeps_order(tmp_path, estimator_cls):
    from mimicmotion.video import write_video

    frames = [np.full((112, 64, 3), 20 * i, np.uint8) for i in range(10)]
    write_video(tmp_path / "v.mp4", frames, fps=48)
    est = estimator_cls()
    seq = detect_poses(tmp_path / "v.mp4", est, sample_stride=1, batch_size=2)
    assert seq.source_frames == [0, 2, 4, 6, 8]  # stride 1 * int(48 / 24)
    assert seq.sample_stride == 2 and seq.fps == 24.0 and (seq.width, seq.height) == (64, 112)
    assert est.batches == [2, 2, 1]
    brightness = [f[0, 0, 0] * 255 for f in seq.frames]
    np.testing.assert_allclose(brightness, [0, 40, 80, 120, 160], atol=3)


# ---------------------------------------------------------------------------------------------- contact sheet
def test_contact_sheet_layout():
    tiles = [(np.full((8, 10, 3), v, np.uint8), f"t{v}") for v in (50, 100, 150)]
    sheet = contact_sheet(tiles, columns=2, label_height=6)
    assert sheet.shape == (2 * (8 + 6), 20, 3)
    assert (sheet[0:8, 0:10] == 50).all() and (sheet[0:8, 10:20] == 100).all() and (sheet[14:22, 0:10] == 150).all()
    assert (sheet[14:22, 10:20] == 24).all()  # empty cell keeps the background
    with pytest.raises(ValueError, match="tile 1"):
        contact_sheet([tiles[0], (np.zeros((5, 5, 3), np.uint8), "x")])


def test_overlay_pose_draws_over_a_dimmed_image():
    image = np.full((64, 36, 3), 200, np.uint8)
    out = overlay_pose(image, frame(person(0.2, 0.2, 0.8, 0.8)))
    assert out.shape == image.shape
    unlit = (out == 120).all(axis=-1)  # 200 * 0.6
    assert unlit.any() and not unlit.all()
    assert (overlay_pose(image, frame()) == 120).all()


def test_sample_sidecar_thins_every_frame_sidecars_like_the_release():
    from mimicmotion.curation import sample_sidecar

    frames = [np.full((1, NUM_POINTS, 3), float(i)) for i in range(10)]
    seq = PoseSequence(frames=frames, width=8, height=8, fps=48.0, source="v.mp4", source_frames=list(range(10)),
                       sample_stride=1)
    # 48 fps with sample_stride 2: stride 2 * int(48 / 24) = 4 -> frames 0, 4, 8 at 12 fps.
    out = sample_sidecar(seq, 48.0, 2)
    assert out.source_frames == [0, 4, 8] and out.sample_stride == 4 and out.fps == 12.0
    assert [f[0, 0, 0] for f in out.frames] == [0.0, 4.0, 8.0]
    assert sample_sidecar(seq, 24.0, 1) is seq  # already every frame
    sparse = PoseSequence(frames=frames[::2], width=8, height=8, fps=12.0, source_frames=list(range(0, 10, 2)),
                          sample_stride=2)
    assert sample_sidecar(sparse, 24.0, 2) is sparse  # already at the curation stride
    with pytest.raises(PoseError, match="one frame in 2 but curation samples one in 3"):
        sample_sidecar(sparse, 24.0, 3)
