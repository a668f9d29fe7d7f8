"""Choosing the pose estimator: auto picks DWPose when its files are present and the bundled one otherwise;
DWPose stays the same code path (identical output) whenever it is chosen; the CLI says which it used."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.pose.estimators import POSE_ESTIMATORS, choose_pose_estimator, make_pose_estimator
from tiny_dwpose import empty_head, write_model_dir


@pytest.fixture()
def no_dwpose(monkeypatch, tmp_path):
    """No DWPose files where DWPose would look ($MIMICMOTION_DWPOSE_DIR points at an empty folder)."""
    empty = tmp_path / "no-dwpose"
    empty.mkdir()
    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(empty))
    return empty


@pytest.fixture(scope="module")
def tiny_dwpose_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("dwpose"), empty_head())


def test_auto_uses_the_bundled_estimator_without_dwpose_files(no_dwpose):
    choice = choose_pose_estimator("auto")
    assert choice.name == "mediapipe"
    assert str(no_dwpose) in choice.reason and "--dwpose-dir" in choice.reason
    assert choose_pose_estimator(None).name == "mediapipe"  # auto is the default


def test_auto_uses_dwpose_when_its_files_are_found(monkeypatch, tiny_dwpose_dir):
    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tiny_dwpose_dir))
    choice = choose_pose_estimator("auto")
    assert choice.name == "dwpose" and str(tiny_dwpose_dir) in choice.reason


def test_an_explicit_dwpose_dir_or_name_means_dwpose(no_dwpose, tmp_path):
    assert choose_pose_estimator("auto", dwpose_dir=str(tmp_path)).name == "dwpose"
    assert choose_pose_estimator("dwpose").name == "dwpose"
    assert choose_pose_estimator("MediaPipe").name == "mediapipe"
    with pytest.raises(ModelFileError, match="yolox_l.onnx"):  # asked for, files missing: DWPose's own message
        make_pose_estimator("dwpose")


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ConfigError, match="one of auto, dwpose, mediapipe.*'openpose'"):
        choose_pose_estimator("openpose")
    assert POSE_ESTIMATORS == ("auto", "dwpose", "mediapipe")


def test_dwpose_is_unchanged_when_chosen(tiny_dwpose_dir):
    from mimicmotion.pose.dwpose import DWPoseEstimator

    frame = np.full((90, 160, 3), 60, np.uint8)
    frame[40:47, 20:27] = (200, 30, 30)
    chosen = make_pose_estimator("auto", str(tiny_dwpose_dir))
    assert type(chosen) is DWPoseEstimator and chosen.name == "dwpose"
    direct = DWPoseEstimator(str(tiny_dwpose_dir))(frame)
    assert chosen(frame).tobytes() == direct.tobytes()


def test_bundled_estimator_identity(no_dwpose):
    est = make_pose_estimator("auto")
    assert est.name == "mediapipe" and est.version == "mediapipe-holistic-0.10.21"


def test_cli_pose_says_which_estimator_it_used(no_dwpose, tmp_path, capsys):
    from mimicmotion.cli import main
    from mimicmotion.pose.io import load_poses
    from mimicmotion.video import write_video

    video = tmp_path / "black.mp4"
    write_video(video, np.zeros((6, 64, 64, 3), np.uint8), fps=24)
    assert main(["pose", str(video), "--out", str(tmp_path / "p.parquet"), "--sample-stride", "1", "--quiet",
                 "--pose-video", str(tmp_path / "p.mp4")]) == 0
    captured = capsys.readouterr()
    assert "pose estimator: mediapipe (auto: no DWPose files" in captured.out
    assert "6 frames without a person" in captured.out
    seq = load_poses(tmp_path / "p.parquet")
    assert len(seq) == 6 and all(f.shape == (0, 134, 3) for f in seq.frames)
    assert (tmp_path / "p.mp4").is_file()
    assert main(["pose", str(video), "--out", str(tmp_path / "q.parquet"), "--pose-estimator", "dwpose"]) == 1
    assert "yolox_l.onnx" in capsys.readouterr().err


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "ref.png").is_file(),
                    reason="../shared/assets is absent")
def test_cli_pose_on_a_real_photo_without_any_download(no_dwpose, tmp_path, capsys):
    from mimicmotion.cli import main
    from mimicmotion.pose.io import load_poses

    ref = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "ref.png"
    assert main(["pose", str(ref), "--out", str(tmp_path / "ref.parquet")]) == 0
    seq = load_poses(tmp_path / "ref.parquet")
    assert seq.frames[0].shape == (1, 134, 3) and (seq.frames[0][0, :18, 2] > 0.3).sum() >= 14
