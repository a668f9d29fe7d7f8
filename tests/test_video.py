import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest

from media_fixtures import (AAC_FRAME_SAMPLES, SAMPLE_RATE, coded_frames, decoded_rms, make_audio_only,
                            make_video, stream_seconds)
from mimicmotion.errors import ConfigError, VideoError
from mimicmotion.video import (VideoInfo, as_frame_rate, effective_stride, has_audio, iter_frames, mux_audio,
                               probe, read_frames, sample_indices, write_video)

AAC_FRAME_S = AAC_FRAME_SAMPLES / SAMPLE_RATE
CODEC_TOL = 6.0  # mean absolute error of a flat-colour frame after H.264 at crf <= 18


def nearest_source(frame, sources):
    errors = np.abs(sources.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
    return int(errors.argmin()), float(errors.min())


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    files = {
        "plain": d / "plain.mp4",           # 30 frames 32x24 @ 24 fps, no audio
        "sound": d / "sound.mp4",           # 24 frames @ 24 fps (1 s) with 3 s of AAC sine
        "rot_ccw90": d / "rot_ccw90.mp4",   # display matrix +90 (counter-clockwise)
        "rot_cw90": d / "rot_cw90.mp4",     # display matrix -90: what portrait phone clips carry
        "audio_only": d / "voice.m4a",
        "wav": d / "tone.wav",
    }
    sources = make_video(files["plain"], num_frames=30)
    make_video(files["sound"], num_frames=24, audio_seconds=3.0)
    make_video(files["rot_ccw90"], num_frames=6, rotation_ccw=90)
    make_video(files["rot_cw90"], num_frames=6, rotation_ccw=-90)
    make_audio_only(files["audio_only"], seconds=1.0)
    make_audio_only(files["wav"], seconds=3.0)
    return files, sources


# --- sampling rule (SPEC section 4) ------------------------------------------------------------------

@pytest.mark.parametrize("fps, sample_stride, expected", [
    (24, 2, 2), (60, 2, 4), (23.976, 2, 2), (25, 1, 1), (47.9, 1, 1), (48, 1, 2), (59.94, 1, 2),
    (120, 3, 15), (12, 1, 1), (30, 1, 1),
])
def test_effective_stride(fps, sample_stride, expected):
    assert effective_stride(fps, sample_stride) == expected


@pytest.mark.parametrize("fps, sample_stride", [(24, 0), (24, -1), (24, 1.5), (24, True), (0, 2), (-24, 2),
                                                (float("nan"), 2)])
def test_effective_stride_rejects_bad_values(fps, sample_stride):
    with pytest.raises(ConfigError):
        effective_stride(fps, sample_stride)


@pytest.mark.parametrize("num_frames, fps, sample_stride, expected", [
    (10, 24, 2, [0, 2, 4, 6, 8]),
    (9, 60, 2, [0, 4, 8]),
    (5, 23.976, 1, [0, 1, 2, 3, 4]),
    (1, 24, 3, [0]),
    (0, 24, 2, []),
])
def test_sample_indices(num_frames, fps, sample_stride, expected):
    assert sample_indices(num_frames, fps, sample_stride) == expected


def test_sample_indices_rejects_negative_count():
    with pytest.raises(ConfigError):
        sample_indices(-1, 24, 2)


@pytest.mark.parametrize("fps, expected", [
    (24, Fraction(24)), (24.0, Fraction(24)), (23.976, Fraction(24000, 1001)), (29.97, Fraction(30000, 1001)),
    (11.988, Fraction(12000, 1001)), (12.5, Fraction(25, 2)), (7, Fraction(7)),
    (Fraction(30000, 1001), Fraction(30000, 1001)),
])
def test_as_frame_rate(fps, expected):
    assert as_frame_rate(fps) == expected


@pytest.mark.parametrize("fps", [0, -1, float("inf"), Fraction(0)])
def test_as_frame_rate_rejects_non_positive(fps):
    with pytest.raises(ConfigError):
        as_frame_rate(fps)


# --- probing -----------------------------------------------------------------------------------------

def test_probe_plain(media):
    files, _ = media
    assert probe(files["plain"]) == VideoInfo(
        path=str(files["plain"]), fps=24.0, num_frames=30, width=32, height=24, rotation=0, duration=1.25,
        has_audio=False, video_codec="h264", audio_codec=None)


def test_probe_with_audio(media):
    files, _ = media
    info = probe(files["sound"])
    assert (info.num_frames, info.fps, info.duration) == (24, 24.0, 1.0)
    assert info.has_audio is True and info.audio_codec == "aac"
    assert has_audio(files["sound"]) is True
    assert has_audio(files["plain"]) is False


def test_probe_counts_frames_without_container_count(tmp_path):
    # Matroska stores no frame count: probe counts packets instead.
    path = tmp_path / "clip.mkv"
    make_video(path, num_frames=7)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0
    assert probe(path).num_frames == 7


# --- decoding ----------------------------------------------------------------------------------------

def test_read_frames_returns_exactly_the_requested_frames(media):
    files, sources = media
    indices = [0, 7, 3, 29, 7, 12]  # unsorted, with a repeat
    frames = read_frames(files["plain"], indices)
    assert frames.shape == (6, 24, 32, 3) and frames.dtype == np.uint8
    for got, want in zip(frames, indices):
        index, error = nearest_source(got, sources)
        assert index == want and error < CODEC_TOL


def test_read_frames_all_and_none(media):
    files, sources = media
    frames = read_frames(files["plain"])
    assert frames.shape == (30, 24, 32, 3)
    assert [nearest_source(f, sources)[0] for f in frames] == list(range(30))
    assert read_frames(files["plain"], []).shape == (0, 24, 32, 3)


def test_iter_frames_streams_batches(media):
    files, _ = media
    indices = sample_indices(30, 24, 3)  # 10 frames
    batches = list(iter_frames(files["plain"], indices, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (24, 32, 3) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), read_frames(files["plain"], indices))


def test_read_frames_rejects_out_of_range_index(media):
    files, _ = media
    with pytest.raises(VideoError, match=r"plain\.mp4 has 30 frames.*frame 30"):
        read_frames(files["plain"], [0, 30])
    with pytest.raises(VideoError, match="frame -1"):
        iter_frames(files["plain"], [-1])


def test_iter_frames_rejects_bad_batch_size(media):
    files, _ = media
    with pytest.raises(ConfigError):
        iter_frames(files["plain"], [0], batch_size=0)


def _ffmpeg_display_frames(path, width, height):
    """Reference decode by the ffmpeg CLI, which applies the display matrix (autorotate)."""
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path),
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("name, rotation, quarter_turns_ccw", [("rot_cw90", 90, -1), ("rot_ccw90", 270, 1)])
def test_rotated_video_is_read_upright(media, name, rotation, quarter_turns_ccw):
    files, _ = media
    info = probe(files[name])
    assert (info.rotation, info.width, info.height, info.num_frames) == (rotation, 24, 32, 6)
    frames = read_frames(files[name], [4, 1])
    assert frames.shape == (2, 32, 24, 3)
    reference = _ffmpeg_display_frames(files[name], 24, 32)
    assert np.abs(frames.astype(int) - reference[[4, 1]].astype(int)).mean() < 1.0
    upright = np.rot90(coded_frames(6), quarter_turns_ccw, axes=(1, 2))
    for got, want in zip(frames, [4, 1]):
        index, error = nearest_source(got, upright)
        assert index == want and error < CODEC_TOL
    batches = list(iter_frames(files[name], [5, 0, 2], batch_size=2))  # backwards jump restarts decoding
    assert [nearest_source(f, upright)[0] for b in batches for f in b] == [5, 0, 2]


# --- encoding ----------------------------------------------------------------------------------------

def test_write_video_round_trip(tmp_path):
    frames = coded_frames(12)
    out = write_video(tmp_path / "out.mp4", frames, fps=24)
    assert out == tmp_path / "out.mp4"
    info = probe(out)
    assert (info.num_frames, info.fps, info.width, info.height, info.video_codec, info.has_audio) == \
        (12, 24.0, 32, 24, "h264", False)
    assert info.duration == pytest.approx(0.5)
    back = read_frames(out)
    assert [nearest_source(f, frames)[0] for f in back] == list(range(12))
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < CODEC_TOL
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.pix_fmt == "yuv420p"
        assert s.codec_context.colorspace == 6  # tagged BT.601 (SMPTE 170M), matching the conversion


def test_write_video_from_generator_into_new_folder(tmp_path):
    out = tmp_path / "a" / "b" / "gen.mp4"
    write_video(out, (f for f in coded_frames(5)), fps=10)
    info = probe(out)
    assert (info.num_frames, info.fps) == (5, 10.0)


def test_write_video_pads_odd_size_by_repeating_edges(tmp_path):
    # Grey levels only, so 4:2:0 chroma subsampling cannot smear colours across the edge.
    frames = np.full((3, 23, 31, 3), 40, np.uint8)
    frames[:, :, -1] = 230  # bright last column
    frames[:, -1, :] = 230  # bright last row
    out = write_video(tmp_path / "odd.mp4", frames, fps=24, crf=0)
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (32, 24, 3)
    back = read_frames(out).astype(int)
    assert np.abs(back[:, :23, :31] - frames).mean() < 2.0
    assert np.abs(back[:, :, 31] - 230).max() <= 3  # the added column repeats the bright last column
    assert np.abs(back[:, 23, :] - 230).max() <= 3  # the added row repeats the bright last row


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), 23.976])
def test_write_video_fractional_fps(tmp_path, fps):
    out = write_video(tmp_path / "ntsc.mp4", coded_frames(10), fps=fps)
    rate = as_frame_rate(fps)
    info = probe(out)
    assert info.fps == pytest.approx(float(rate), abs=1e-9)
    assert info.duration == pytest.approx(float(10 / rate), abs=1e-6)
    assert info.num_frames == 10


def test_write_video_is_atomic(tmp_path):
    out = tmp_path / "keep.mp4"
    write_video(out, coded_frames(2), fps=24)
    before = out.read_bytes()

    def failing_frames():
        yield from coded_frames(3)
        raise RuntimeError("generation crashed")

    with pytest.raises(RuntimeError, match="generation crashed"):
        write_video(out, failing_frames(), fps=24)
    assert out.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]  # no temporary left behind


@pytest.mark.parametrize("frames, message", [
    (np.zeros((0, 24, 32, 3), np.uint8), "no frames"),
    (np.zeros((2, 24, 32, 3), np.float32), "uint8"),
    ([np.zeros((24, 32, 3), np.uint8), np.zeros((24, 30, 3), np.uint8)], "same size"),
])
def test_write_video_rejects_bad_frames(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / "bad.mp4", frames, fps=24)
    assert list(tmp_path.iterdir()) == []


def test_write_video_rejects_bad_crf(tmp_path):
    with pytest.raises(ConfigError):
        write_video(tmp_path / "x.mp4", coded_frames(1), fps=24, crf=60)


# --- audio -------------------------------------------------------------------------------------------

def _assert_audio_trimmed_to_video(path, video_seconds):
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert c.streams.audio[0].codec_context.name == "aac"
    audio = stream_seconds(path, "audio")
    assert video_seconds - AAC_FRAME_S <= audio <= video_seconds + AAC_FRAME_S
    assert decoded_rms(path) > 0.1  # the sine (RMS 0.35) really is there


def test_mux_audio_trims_to_video_duration(media, tmp_path):
    files, _ = media
    video = write_video(tmp_path / "silent.mp4", coded_frames(12), fps=24)  # 0.5 s
    out = mux_audio(video, files["sound"], tmp_path / "with_sound.mp4")  # source audio: 3 s AAC (copied)
    _assert_audio_trimmed_to_video(out, 0.5)
    assert probe(out).num_frames == 12
    np.testing.assert_array_equal(read_frames(out), read_frames(video))  # video stream copied untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.mp4", "with_sound.mp4"]


def test_mux_audio_encodes_pcm_to_aac(media, tmp_path):
    files, _ = media
    video = write_video(tmp_path / "v.mp4", coded_frames(12), fps=24)
    out = mux_audio(video, files["wav"], tmp_path / "pcm.mp4")
    _assert_audio_trimmed_to_video(out, 0.5)


def test_write_video_with_audio_from(media, tmp_path):
    files, _ = media
    out = write_video(tmp_path / "final.mp4", coded_frames(18), fps=Fraction(24), audio_from=files["sound"])
    _assert_audio_trimmed_to_video(out, 0.75)
    assert probe(out).num_frames == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.mp4"]


def test_write_video_with_silent_audio_source_writes_video_only(media, tmp_path):
    files, _ = media
    out = write_video(tmp_path / "quiet.mp4", coded_frames(4), fps=24, audio_from=files["plain"])
    info = probe(out)
    assert (info.has_audio, info.num_frames) == (False, 4)


def test_mux_audio_without_audio_track_raises(media, tmp_path):
    files, _ = media
    with pytest.raises(VideoError, match=r"plain\.mp4 has no audio track"):
        mux_audio(files["plain"], files["plain"], tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_mux_audio_reports_ffmpeg_failure(media, tmp_path):
    files, _ = media
    # An output extension ffmpeg has no muxer for makes ffmpeg itself fail: that must surface as a
    # VideoError carrying ffmpeg's own message, and leave no temporary file behind.
    with pytest.raises(VideoError, match=r"(?s)ffmpeg exit code.*output format"):
        mux_audio(files["plain"], files["sound"], tmp_path / "out.notaformat")
    assert list(tmp_path.iterdir()) == []


# --- bad inputs --------------------------------------------------------------------------------------

def _bad_input(kind, tmp_path, media):
    files, _ = media
    if kind == "missing":
        return tmp_path / "missing.mp4", "does not exist"
    if kind == "empty":
        p = tmp_path / "empty.mp4"
        p.write_bytes(b"")
        return p, "empty"
    if kind == "text":
        p = tmp_path / "notes.mp4"
        p.write_text("this is a shopping list, not a video\n")
        return p, "not a readable media file"
    if kind == "truncated":
        p = tmp_path / "truncated.mp4"
        p.write_bytes(files["plain"].read_bytes()[:600])
        return p, "not a readable media file"
    if kind == "audio_only":
        return files["audio_only"], "no video stream"
    if kind == "directory":
        p = tmp_path / "folder.mp4"
        p.mkdir()
        return p, "is a directory"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "empty", "text", "truncated", "audio_only", "directory"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("reader", [probe, read_frames, lambda p: iter_frames(p, [0])])
def test_bad_inputs_raise_video_error_naming_the_file(kind, reader, tmp_path, media):
    path, what = _bad_input(kind, tmp_path, media)
    with pytest.raises(VideoError) as err:
        reader(path)
    assert path.name in str(err.value) and what in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory"])
def test_bad_audio_source_raises_before_encoding(kind, tmp_path, media):
    path, _ = _bad_input(kind, tmp_path, media)
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match=path.name):
        write_video(out, coded_frames(2), fps=24, audio_from=path)
    assert not out.exists()


# --- the real sample ---------------------------------------------------------------------------------

def test_real_sample(shared_assets, tmp_path):
    import decord

    dance = shared_assets / "dance.mp4"
    info = probe(dance)
    assert (info.width, info.height, info.fps, info.num_frames, info.rotation) == (1080, 1920, 24.0, 288, 0)
    assert info.has_audio and info.audio_codec == "aac" and info.video_codec == "h264"
    assert info.duration == pytest.approx(12.0)
    # decord (the decoder) and PyAV (the container) agree on count, rate and orientation.
    reader = decord.VideoReader(str(dance))
    assert (len(reader), reader.get_avg_fps(), reader[0].shape) == (288, 24.0, (1920, 1080, 3))
    indices = sample_indices(info.num_frames, info.fps, 2)
    assert len(indices) == 144 and indices[:3] == [0, 2, 4] and indices[-1] == 286
    frames = read_frames(dance, [0, 143, 287])
    assert frames.shape == (3, 1920, 1080, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # real picture content, not a blank decode
    # Its audio muxed onto a 0.5 s clip is trimmed to 0.5 s.
    out = write_video(tmp_path / "clip.mp4", coded_frames(12), fps=24, audio_from=dance)
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
    assert 0.5 - AAC_FRAME_S <= stream_seconds(out, "audio") <= 0.5 + AAC_FRAME_S


def test_widths_decord_cannot_copy_are_decoded_with_pyav(tmp_path):
    # decord 0.6 fails on some frame widths (48 px here) although the file is fine
    from mimicmotion.video import read_frames, write_video

    frames = np.zeros((6, 64, 48, 3), np.uint8)
    frames[:, :32] = (200, 40, 40)
    path = write_video(tmp_path / "w48.mp4", frames, fps=24)
    got = read_frames(path, [0, 5])
    assert got.shape == (2, 64, 48, 3)
    assert np.abs(got.astype(int) - frames[:2].astype(int)).mean() < 6


def test_frames_over_the_size_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from mimicmotion.video import MAX_FRAME_PIXELS_ENV, iter_frames, write_video

    path = write_video(tmp_path / "big.mp4", np.zeros((3, 64, 64, 3), np.uint8), fps=24)
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "1000")
    with pytest.raises(VideoError, match=r"64x64 .* over the limit .*MIMICMOTION_MAX_FRAME_PIXELS"):
        iter_frames(path)
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="whole number"):
        iter_frames(path)
    monkeypatch.delenv(MAX_FRAME_PIXELS_ENV)
    assert next(iter_frames(path)).shape == (3, 64, 64, 3)
