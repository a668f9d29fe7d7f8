"""The Prefect `render` flow on the tiny model: outputs (mp4 with audio, side-by-side preview, thumbnail
strip, artifacts), Ray actors, up-front validation, resume after a killed run; and the preview helpers."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.preview import side_by_side_frames, strip_indices, thumbnail_strip
from mimicmotion.render import RenderSettings

ray = pytest.importorskip("ray")
prefect_testing = pytest.importorskip("prefect.testing.utilities")

from tasks.ray_render import ModelSpec  # noqa: E402
from tasks.render import (RenderRequest, artifact_key, check_request, outputs_markdown, prepare_inputs,  # noqa: E402
                          sample_frames)

FLOW_PARAMS = dict(resolution=64, tile_size=4, tile_overlap=2, steps=2, max_frames=8, seed=3, decode_chunk_size=4)
SETTINGS = RenderSettings(resolution=64, tile_size=4, tile_overlap=2, num_inference_steps=2, max_frames=8, seed=3,
                          decode_chunk_size=4)


@pytest.fixture(scope="module", autouse=True)
def harness():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: same float noise as the local render
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield
    if ray.is_initialized():
        ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from mimicmotion.demo import write_sample

    ref, driving, poses, ref_pose = write_sample(tmp_path_factory.mktemp("sample"), num_frames=12)
    return dict(ref=str(ref), driving=str(driving), poses=str(poses), ref_pose=str(ref_pose))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from mimicmotion.tiny import save_tiny_model

    base, ckpt = save_tiny_model(tmp_path_factory.mktemp("model"))
    return ModelSpec(str(base), str(ckpt))


@pytest.fixture(scope="module")
def pipe(model):
    from mimicmotion.loading import load_pipeline

    p = load_pipeline(model.base_model, model.checkpoint, dtype=torch.float32, device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def written_frames(monkeypatch):
    """The uint8 frames each flow run hands to the encoder, by output folder name. (Compared before
    encoding: libx264 output was seen to differ between two encodes of identical frames here.)"""
    import tasks.render as render_tasks

    captured = {}
    original = render_tasks.write_outputs

    def capture(name, out_dir, inputs, frames, settings, **kwargs):
        captured[Path(out_dir).name] = frames.copy()
        return original(name, out_dir, inputs, frames, settings, **kwargs)

    monkeypatch.setattr(render_tasks.write_outputs_task, "fn", capture)
    return captured


def request(sample, name="clip"):
    return RenderRequest(reference=sample["ref"], poses=sample["poses"], ref_pose=sample["ref_pose"], name=name)


# ---------------------------------------------------------------------------------------------- preview helpers
def test_strip_indices_spread_evenly():
    assert strip_indices(10, 4) == [0, 3, 6, 9]
    assert strip_indices(3, 8) == [0, 1, 2]
    assert strip_indices(9, 1) == [0]
    assert strip_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        strip_indices(0, 3)


def test_side_by_side_places_panels():
    ref = np.full((2, 3, 3), 10, np.uint8)
    pose = np.stack([np.full((2, 3, 3), 20 + k, np.uint8) for k in range(2)])
    out = np.stack([np.full((2, 3, 3), 30 + k, np.uint8) for k in range(2)])
    frames = list(side_by_side_frames(ref, pose, out))
    assert len(frames) == 2 and frames[1].shape == (2, 9, 3)
    assert (frames[1][:, :3] == 10).all() and (frames[1][:, 3:6] == 21).all() and (frames[1][:, 6:] == 31).all()
    with pytest.raises(ConfigError, match="pose images"):
        list(side_by_side_frames(ref, np.concatenate([pose, pose]), out))


def test_thumbnail_strip_size_and_order():
    frames = np.stack([np.full((4, 8, 3), 10 * k, np.uint8) for k in range(5)])
    strip = thumbnail_strip(frames, count=3, height=2)
    assert strip.shape == (2, 12, 3)  # three 4-pixel-wide thumbnails of frames 0, 2, 4
    assert (strip[:, :4] == 0).all() and (strip[:, 4:8] == 20).all() and (strip[:, 8:] == 40).all()


def test_artifact_key_is_valid():
    assert artifact_key("My Clip_01") == "render-my-clip-01"
    assert artifact_key("__") == "render-output"


# ---------------------------------------------------------------------------------------------- validation
def test_bad_parameters_fail_before_any_work(sample, model, tmp_path):
    good = request(sample)
    check_request(good, SETTINGS, model)
    cases = [
        (RenderSettings(resolution=100), "multiple of 64"),
        (RenderSettings(tile_size=8, tile_overlap=8), "tile_overlap"),
        (RenderSettings(num_inference_steps=0), "steps"),
        (RenderSettings(min_guidance_scale=0.5), "guidance"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_request(good, settings, model)
    with pytest.raises(ConfigError, match="nope.png"):
        check_request(RenderRequest(**{**good.__dict__, "reference": str(tmp_path / "nope.png")}), SETTINGS, model)
    with pytest.raises(ConfigError, match="exactly one driving source"):
        check_request(RenderRequest(**{**good.__dict__, "driving": sample["driving"]}), SETTINGS, model)
    no_ref_pose = RenderRequest(**{**good.__dict__, "ref_pose": None})
    with pytest.raises(ConfigError, match="dwpose_dir"):  # DWPose asked for, its files not there
        check_request(no_ref_pose, SETTINGS, model, dwpose_dir=str(tmp_path), pose_estimator="dwpose")
    check_request(no_ref_pose, SETTINGS, model, pose_estimator="mediapipe")  # the bundled one needs no files
    with pytest.raises(ConfigError, match="pose estimator must be one of"):
        check_request(no_ref_pose, SETTINGS, model, pose_estimator="openpose")
    with pytest.raises(ModelFileError, match="nobase"):
        check_request(good, SETTINGS, ModelSpec(str(tmp_path / "nobase"), model.checkpoint))
    with pytest.raises(ConfigError, match="actors"):
        check_request(good, SETTINGS, model, actors=-1)


def test_unknown_clip_id_is_a_clear_error(sample, model):
    bad = RenderRequest(reference=sample["ref"], clip_id="no-such-clip", ref_pose=sample["ref_pose"])
    with pytest.raises(ConfigError, match="no-such-clip|catalog"):
        check_request(bad, SETTINGS, model)


# ---------------------------------------------------------------------------------------------- sampling
def test_sample_frames_equals_generate(sample, pipe):
    from mimicmotion.render import generate

    inputs = prepare_inputs(request(sample), SETTINGS)
    assert len(inputs.pose_images) == 9  # reference pose + 8 driving frames
    ours = sample_frames(pipe, inputs, SETTINGS, device="cpu")
    theirs = generate(pipe, inputs.reference, inputs.pose_images, SETTINGS, device="cpu")
    assert ours.shape == (8, 64, 64, 3)
    assert np.array_equal(ours, theirs)


# ---------------------------------------------------------------------------------------------- the flow
def test_render_flow_with_two_actors(sample, model, pipe, tmp_path, written_frames):
    from prefect.artifacts import Artifact

    from flows.render import render
    from mimicmotion.video import probe

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = render(reference=sample["ref"], poses=sample["poses"], ref_pose=sample["ref_pose"],
                 base_model=model.base_model, checkpoint=model.checkpoint, out_dir=str(tmp_path), name="clip",
                 actors=2, device="cpu", **FLOW_PARAMS)
    video, preview = probe(out["video"]), probe(out["preview"])
    assert out["frames"] == video.num_frames == preview.num_frames == 8
    assert (video.width, video.height) == (64, 64) and (preview.width, preview.height) == (192, 64)
    assert video.has_audio and preview.has_audio and out["audio"]
    assert not (tmp_path / ".checkpoints").exists()  # cleared after success
    from PIL import Image

    assert Image.open(out["thumbnails"]).size == (8 * 64, 64)

    # Same frames as the local render.
    local = sample_frames(pipe, prepare_inputs(request(sample), SETTINGS), SETTINGS, device="cpu")
    assert np.array_equal(written_frames[tmp_path.name], local)

    table = Artifact.get("render-clip")
    assert table is not None and "clip.mp4" in table.data and "clip_preview.mp4" in table.data
    assert Artifact.get("render-clip-thumbs") is not None


KILLED_FLOW = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import mimicmotion.checkpointing as ck

    original = ck.save_latent_checkpoint

    def save_then_die(folder, step, *args, **kwargs):
        path = original(folder, step, *args, **kwargs)
        if step == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # the flow process dies after its first step
        return path

    ck.save_latent_checkpoint = save_then_die
    from flows.render import render
    ref, poses, ref_pose, base, ckpt, out = sys.argv[1:7]
    render(reference=ref, poses=poses, ref_pose=ref_pose, base_model=base, checkpoint=ckpt, out_dir=out,
           name="resumed", device="cpu", resolution=64, tile_size=4, tile_overlap=2, steps=2, max_frames=8,
           seed=3, decode_chunk_size=4)
""")


def test_killed_flow_resumes_with_same_frames(sample, model, tmp_path, monkeypatch, written_frames):
    import mimicmotion.checkpointing as ck
    from prefect.settings import PREFECT_API_URL

    from flows.render import render

    script = tmp_path / "killed_flow.py"
    script.write_text(KILLED_FLOW)
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, str(script), sample["ref"], sample["poses"], sample["ref_pose"],
                            model.base_model, model.checkpoint, str(out_dir)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert ck.load_latent_checkpoint(out_dir / ".checkpoints" / "resumed").step == 0
    assert not (out_dir / "resumed.mp4").exists()

    resumed_from = []
    original = ck.restore_state
    monkeypatch.setattr(ck, "restore_state", lambda *a, **k: resumed_from.append(original(*a, **k)) or resumed_from[-1])
    params = dict(reference=sample["ref"], poses=sample["poses"], ref_pose=sample["ref_pose"],
                  base_model=model.base_model, checkpoint=model.checkpoint, device="cpu", **FLOW_PARAMS)
    render(out_dir=str(out_dir), name="resumed", **params)
    assert resumed_from == [1]  # continued at step 1, not from scratch
    render(out_dir=str(tmp_path / "fresh"), name="resumed", **params)
    assert resumed_from == [1]  # the uninterrupted run had no checkpoint to resume
    assert (out_dir / "resumed.mp4").is_file() and not (out_dir / ".checkpoints" / "resumed").exists()
    assert np.array_equal(written_frames["out"], written_frames["fresh"])


def test_outputs_markdown_links_files(tmp_path):
    from tasks.render import RenderOutputs

    o = RenderOutputs(name="a", video=tmp_path / "a.mp4", preview=tmp_path / "a_preview.mp4",
                      thumbnails=tmp_path / "a_thumbs.png", num_frames=5, fps=12.0, has_audio=True)
    md = outputs_markdown([o])
    assert md.splitlines()[2].startswith("| a | 5 | 12 | yes | [a.mp4](file://")
    assert "![a](file://" in md


def test_cli_render_with_two_actors_equals_local(sample, model, tmp_path, capsys, monkeypatch):
    import mimicmotion.video as video
    from mimicmotion.cli import main
    from mimicmotion.video import probe

    encoded = {}
    original = video.write_video

    def capture(path, frames, *args, **kwargs):
        encoded[Path(path).name] = np.array(frames)
        return original(path, frames, *args, **kwargs)

    monkeypatch.setattr(video, "write_video", capture)

    args = ["render", "--ref", sample["ref"], "--poses", sample["poses"], "--ref-pose", sample["ref_pose"],
            "--base-model", model.base_model, "--checkpoint", model.checkpoint, "--resolution", "64", "--steps", "2",
            "--tile-size", "4", "--tile-overlap", "2", "--max-frames", "8", "--seed", "3", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ray.mp4"), "--actors", "2"]) == 0, capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "local.mp4")]) == 0, capsys.readouterr().err
    info = probe(tmp_path / "ray.mp4")
    assert info.num_frames == 8 and info.has_audio
    assert encoded["ray.mp4"].shape == (8, 64, 64, 3)
    assert np.array_equal(encoded["ray.mp4"], encoded["local.mp4"])
    assert main([*args, "--out", str(tmp_path / "x.mp4"), "--actors", "-1"]) == 1
    assert "--actors" in capsys.readouterr().err


def test_render_batch_one_resident_pipeline(sample, model, tmp_path, written_frames, monkeypatch):
    import tasks.render as render_tasks
    from flows.render import render_batch

    loads = []
    original = render_tasks.load_driver_pipeline
    monkeypatch.setattr(render_tasks.load_pipeline_task, "fn", lambda *a, **k: loads.append(1) or original(*a, **k))
    pair = dict(reference=sample["ref"], poses=sample["poses"], ref_pose=sample["ref_pose"])
    params = dict(base_model=model.base_model, checkpoint=model.checkpoint, device="cpu", **FLOW_PARAMS)
    out = render_batch(pairs=[{**pair, "name": "one"}, {**pair, "name": "two"}], out_dir=str(tmp_path), **params)
    assert [o["name"] for o in out] == ["one", "two"] and loads == [1]
    assert (tmp_path / "one.mp4").is_file() and (tmp_path / "two_preview.mp4").is_file()
    # A bad pair fails the whole batch before any model is loaded.
    with pytest.raises(ConfigError, match="nope.png"):
        render_batch(pairs=[{**pair, "name": "ok"}, {**pair, "reference": str(tmp_path / "nope.png")}],
                     out_dir=str(tmp_path / "bad"), **params)
    assert loads == [1] and not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="unique"):
        render_batch(pairs=[{**pair, "name": "x"}, {**pair, "name": "x"}], out_dir=str(tmp_path), **params)


def test_deployments_serve_both_flows():
    from deployments.render import build_deployments

    deployments = build_deployments("adhoc")
    assert [(d.flow_name, d.name) for d in deployments] == [("render", "adhoc"), ("render_batch", "adhoc")]
