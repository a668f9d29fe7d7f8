"""The `mimicmotion` command line as a user runs it: real work on tiny models, and bad inputs that must
end with one clear message and exit code 1 (never a traceback)."""
import numpy as np
import pytest

from mimicmotion.cli import main
from mimicmotion.pose.io import PoseSequence, load_poses, save_poses
from mimicmotion.video import probe, write_video

from tiny_dwpose import empty_head, plant_anchor, write_model_dir

RENDER_ARGS = ["--resolution", "64", "--steps", "2", "--tile-size", "16", "--tile-overlap", "4", "--seed", "1"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from mimicmotion.demo import write_sample

    folder = tmp_path_factory.mktemp("sample")
    ref, driving, poses, ref_pose = write_sample(folder, num_frames=24)
    return dict(ref=ref, driving=driving, poses=poses, ref_pose=ref_pose, dir=folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from mimicmotion.tiny import save_tiny_model

    base, ckpt = save_tiny_model(tmp_path_factory.mktemp("model"))
    return base, ckpt


@pytest.fixture(scope="module")
def dwpose_dir(tmp_path_factory):
    """Tiny DWPose models: one person box planted by the detector; the pose model puts every keypoint on
    the crop's reddest pixel with a per-keypoint score."""
    head = empty_head()
    plant_anchor(head, stride=32, gx=10, gy=10, offset_xy=(0.0, 0.0), size_wh=(200.0, 400.0), objectness=1.0,
                 class_scores={0: 0.9})
    return write_model_dir(tmp_path_factory.mktemp("dwpose"), head)


@pytest.fixture(scope="module")
def no_person_dwpose_dir(tmp_path_factory):
    """A pose model whose every score is negative: nobody is found."""
    return write_model_dir(tmp_path_factory.mktemp("dwpose_none"), empty_head(),
                           keypoint_bias=np.full(133, -10.0, np.float32))


def fail(capsys, argv, *expected):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_render_from_pose_files_keeps_frames_and_audio(sample, model, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
               str(sample["ref_pose"]), "--base-model", str(model[0]), "--checkpoint", str(model[1]),
               "--out", str(out), "--sample-stride", "2", *RENDER_ARGS])
    assert rc == 0, capsys.readouterr().err
    info = probe(out)
    # The pose file holds all 24 frames of the driving clip: one output frame per driving pose frame.
    assert info.num_frames == len(load_poses(sample["poses"])) == 24
    assert (info.width, info.height) == (64, 64)
    assert info.has_audio
    assert info.duration == pytest.approx(probe(sample["driving"]).duration, abs=0.05)
    # The side-by-side preview (reference | pose | output) is written next to it by default, with the audio.
    preview = probe(tmp_path / "out_preview.mp4")
    assert (preview.num_frames, preview.width, preview.height, preview.has_audio) == (24, 192, 64, True)
    printed = capsys.readouterr().out
    assert "24 frames" in printed and "out_preview.mp4" in printed


def test_render_a_catalog_clip(sample, model, tmp_path, capsys):
    import shutil

    from catalog import Catalog, curate_file, init_catalog
    from mimicmotion.curation import CurationSettings, sidecar_path

    video = tmp_path / "dance.mp4"
    shutil.copy(sample["driving"], video)
    shutil.copy(sample["poses"], sidecar_path(video))
    root = init_catalog(tmp_path / "cat")
    outcome = curate_file(video, root, CurationSettings(sample_stride=1, clip_length=16, min_clip_length=8,
                                                        resolution=64).validate(), pose_source="sidecar")
    assert outcome.status == "ok", outcome.reason
    cat = Catalog(root)
    cat.rebuild()
    clip_id, frames = cat.query("SELECT clip_id, num_frames FROM clips ORDER BY clip_id LIMIT 1").to_pylist()[0].values()
    out = tmp_path / "clip.mp4"
    common = ["--ref", str(sample["ref"]), "--ref-pose", str(sample["ref_pose"]), "--base-model", str(model[0]),
              "--checkpoint", str(model[1]), "--catalog", str(root), "--no-preview", *RENDER_ARGS]
    assert main(["render", "--clip-id", clip_id, "--out", str(out), *common]) == 0, capsys.readouterr().err
    assert probe(out).num_frames == frames == 16
    capsys.readouterr()
    assert not (tmp_path / "clip_preview.mp4").exists()
    fail(capsys, ["render", "--clip-id", "0000000000000000-0009", "--out", str(out), *common],
         "0000000000000000-0009", "not in the catalog")
    fail(capsys, ["render", "--clip-id", clip_id, "--poses", str(sample["poses"]), "--out", str(out), *common],
         "exactly one driving source")


def test_render_detecting_driving_poses(sample, model, dwpose_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", "--ref", str(sample["ref"]), "--driving", str(sample["driving"]), "--ref-pose",
               str(sample["ref_pose"]), "--dwpose-dir", str(dwpose_dir), "--base-model", str(model[0]),
               "--checkpoint", str(model[1]), "--out", str(out), *RENDER_ARGS])
    assert rc == 0, capsys.readouterr().err
    info = probe(out)
    assert info.num_frames == 12  # 24 frames at 24 fps, sample stride 2
    assert info.fps == pytest.approx(12.0)
    assert info.has_audio


def test_pose_command_writes_poses_and_pose_video(sample, dwpose_dir, tmp_path, capsys):
    out, video = tmp_path / "p.parquet", tmp_path / "p.mp4"
    rc = main(["pose", str(sample["driving"]), "--dwpose-dir", str(dwpose_dir), "--out", str(out),
               "--pose-video", str(video), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    seq = load_poses(out)
    assert len(seq) == 12 and seq.source_frames == list(range(0, 24, 2))
    assert (seq.width, seq.height) == (288, 512) and seq.fps == pytest.approx(12.0)
    assert all(f.shape == (1, 134, 3) for f in seq.frames)
    assert probe(video).num_frames == 12
    assert "12 frames" in capsys.readouterr().out


def test_pose_command_on_an_image(sample, dwpose_dir, tmp_path, capsys):
    out = tmp_path / "ref.parquet"
    assert main(["pose", str(sample["ref"]), "--dwpose-dir", str(dwpose_dir), "--out", str(out), "--quiet"]) == 0
    seq = load_poses(out)
    assert len(seq) == 1 and (seq.width, seq.height) == (704, 1216)


@pytest.mark.parametrize("kind", ["text", "empty", "audio_only", "directory"])
def test_pose_bad_videos(kind, dwpose_dir, tmp_path, capsys):
    path = tmp_path / f"{kind}.mp4"
    if kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    else:
        from mimicmotion.demo import _write_tone

        path = tmp_path / "audio_only.m4a"
        _write_tone(path, 0.5)
    fail(capsys, ["pose", str(path), "--dwpose-dir", str(dwpose_dir), "--out", str(tmp_path / "x.parquet")],
         path.name)
    assert not (tmp_path / "x.parquet").exists()


def test_missing_onnx_file(sample, tmp_path, capsys):
    line = fail(capsys, ["pose", str(sample["driving"]), "--dwpose-dir", str(tmp_path), "--out",
                         str(tmp_path / "x.parquet")], "yolox_l.onnx", str(tmp_path))
    assert "yzd-v/DWPose" in line


def test_reference_without_person(sample, model, no_person_dwpose_dir, tmp_path, capsys):
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--dwpose-dir",
                  str(no_person_dwpose_dir), "--base-model", str(model[0]), "--checkpoint", str(model[1]),
                  "--out", str(tmp_path / "o.mp4"), *RENDER_ARGS], "reference")
    assert not (tmp_path / "o.mp4").exists()


def test_reference_pose_file_with_nobody(sample, model, tmp_path, capsys):
    empty = tmp_path / "empty_ref.parquet"
    save_poses(empty, PoseSequence(frames=[np.zeros((0, 134, 3), np.float32)], width=704, height=1216))
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose", str(empty),
                  "--base-model", str(model[0]), "--checkpoint", str(model[1]), "--out", str(tmp_path / "o.mp4"),
                  *RENDER_ARGS], "reference")


def test_render_missing_files(sample, model, tmp_path, capsys):
    base = ["--ref-pose", str(sample["ref_pose"]), "--out", str(tmp_path / "o.mp4"), *RENDER_ARGS]
    fail(capsys, ["render", "--ref", str(tmp_path / "nope.png"), "--poses", str(sample["poses"]), "--base-model",
                  str(model[0]), "--checkpoint", str(model[1]), *base], "nope.png")
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(tmp_path / "nope.parquet"),
                  "--base-model", str(model[0]), "--checkpoint", str(model[1]), *base], "nope.parquet")
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--base-model",
                  str(model[0]), "--checkpoint", str(tmp_path / "nope.pth"), *base], "nope.pth")
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--base-model",
                  str(tmp_path / "nobase"), "--checkpoint", str(model[1]), *base], "nobase")


def test_render_bad_parameters(sample, model, tmp_path, capsys):
    args = ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
            str(sample["ref_pose"]), "--base-model", str(model[0]), "--checkpoint", str(model[1]), "--out",
            str(tmp_path / "o.mp4"), "--resolution", "64", "--steps", "1"]
    fail(capsys, [*args, "--tile-size", "8", "--tile-overlap", "8"], "tile_overlap")
    fail(capsys, [*args, "--guidance", "0.5"], "guidance")


def test_export_checkpoint(model, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "exported.safetensors"
    assert main(["export-checkpoint", str(model[1]), "--out", str(out)]) == 0
    a, b = load_file(model[1]), load_file(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


SHARED_ASSETS = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@pytest.mark.skipif(not (SHARED_ASSETS / "dance.mp4").is_file(), reason="../shared/assets is absent")
def test_render_a_real_video_with_the_bundled_estimator(model, tmp_path, capsys, monkeypatch):
    """No DWPose anywhere: the reference photo's pose and the driving poses come from the bundled models."""
    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tmp_path / "no-dwpose"))
    out = tmp_path / "out.mp4"
    rc = main(["render", "--ref", str(SHARED_ASSETS / "ref.png"), "--driving", str(SHARED_ASSETS / "dance.mp4"),
               "--base-model", str(model[0]), "--checkpoint", str(model[1]), "--out", str(out), "--max-frames", "6",
               *RENDER_ARGS, "--resolution", "256"])  # the reference must stay large enough to find her
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "pose estimator: mediapipe (auto" in captured.out
    info = probe(out)
    assert info.num_frames == 6 and info.has_audio


def test_reference_photo_without_a_person_with_the_bundled_estimator(sample, model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIMICMOTION_DWPOSE_DIR", str(tmp_path / "no-dwpose"))
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (128, 192), (90, 120, 160)).save(blank)
    fail(capsys, ["render", "--ref", str(blank), "--poses", str(sample["poses"]), "--base-model", str(model[0]),
                  "--checkpoint", str(model[1]), "--out", str(tmp_path / "o.mp4"), *RENDER_ARGS],
         "no person was found in the reference image")


def test_bad_output_paths_fail_before_any_model_loads(sample, model, tmp_path, capsys, monkeypatch):
    import mimicmotion.loading

    def no_load(*a, **k):
        raise AssertionError("the pipeline was loaded before the output path was checked")

    monkeypatch.setattr(mimicmotion.loading, "load_pipeline", no_load)
    base = ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
            str(sample["ref_pose"]), "--base-model", str(model[0]), "--checkpoint", str(model[1]), *RENDER_ARGS]
    folder = tmp_path / "existing"
    folder.mkdir()
    fail(capsys, [*base, "--out", str(folder)], "is a directory")
    fail(capsys, [*base, "--out", str(tmp_path / "out.txt")], "must end in .mp4")
    gray = tmp_path / "gray.png"
    gray.write_bytes(b"png")
    fail(capsys, [*base, "--out", str(gray / "x.mp4")], "is a file, not a folder")
    fail(capsys, [*base, "--out", str(tmp_path / "o.mp4"), "--preview", str(folder)], "--preview", "is a directory")


@pytest.mark.parametrize("device, message", [("banana", "device must be cpu, cuda or cuda:N"),
                                             ("cuda:x", "device must be cpu, cuda or cuda:N")])
def test_bad_devices_are_one_clear_line(sample, model, tmp_path, capsys, device, message):
    base = ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
            str(sample["ref_pose"]), "--base-model", str(model[0]), "--checkpoint", str(model[1]), "--out",
            str(tmp_path / "o.mp4"), *RENDER_ARGS]
    fail(capsys, [*base, "--device", device], message)
    fail(capsys, [*base, "--vae-device", device], message)


def test_cuda_on_a_machine_without_it_is_one_clear_line(sample, model, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fail(capsys, ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
                  str(sample["ref_pose"]), "--base-model", str(model[0]), "--checkpoint", str(model[1]), "--out",
                  str(tmp_path / "o.mp4"), "--device", "cuda", *RENDER_ARGS], "finds no CUDA GPU", "--device cpu")


def test_empty_ref_pose_means_detect_it(sample, model, dwpose_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose", "",
               "--dwpose-dir", str(dwpose_dir), "--base-model", str(model[0]), "--checkpoint", str(model[1]),
               "--out", str(out), *RENDER_ARGS])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()


def test_render_on_two_ray_actors_equals_the_local_render(sample, tmp_path, capsys):
    """Issue 39, item 5: the demo model at --resolution 128 --steps 2 --tile-size 8 --tile-overlap 2."""
    ray = pytest.importorskip("ray")
    from pathlib import Path

    from mimicmotion.video import read_frames

    demo = Path(__file__).resolve().parents[1] / "mimicmotion" / "assets" / "demo_model"
    args = ["render", "--ref", str(sample["ref"]), "--poses", str(sample["poses"]), "--ref-pose",
            str(sample["ref_pose"]), "--base-model", str(demo / "base"), "--checkpoint",
            str(demo / "mimicmotion-demo.safetensors"), "--resolution", "128", "--steps", "2", "--tile-size", "8",
            "--tile-overlap", "2", "--max-frames", "12", "--no-preview"]
    try:
        assert main([*args, "--out", str(tmp_path / "local.mp4"), "--actors", "0"]) == 0
        assert main([*args, "--out", str(tmp_path / "ray.mp4"), "--actors", "2"]) == 0, capsys.readouterr().err
    finally:
        if ray.is_initialized():
            ray.shutdown()
    local, remote = read_frames(tmp_path / "local.mp4"), read_frames(tmp_path / "ray.mp4")
    assert local.shape == remote.shape and np.array_equal(local, remote)
