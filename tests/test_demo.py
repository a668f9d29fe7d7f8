"""`mimicmotion demo`, the README's first command: generated sample -> curate flow -> render flow on the
demo model over Ray actors. CI runs the shortened (--quick) demo on the shipped model."""
from __future__ import annotations

import numpy as np
import pytest

from mimicmotion.cli import main
from mimicmotion.demo_model import demo_model_paths
from mimicmotion.video import probe, read_frames


@pytest.fixture(scope="module")
def random_demo_model(tmp_path_factory):
    """The demo architecture, randomly initialised: for runs that test the plumbing, not the pixels."""
    from mimicmotion.demo_model import demo_components, save_demo_model

    folder = tmp_path_factory.mktemp("demo-model")
    save_demo_model(folder, demo_components(seed=5))
    return folder


def test_shipped_demo_model_is_installed():
    base, checkpoint = demo_model_paths()
    assert (base / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert checkpoint.suffix == ".safetensors"
    total = sum(p.stat().st_size for p in base.parent.rglob("*") if p.is_file())
    assert total < 30 * 2 ** 20, f"the shipped demo model is {total / 2 ** 20:.1f} MB (limit 30 MB)"
    assert (base.parent / "MODEL_CARD.md").is_file()


def test_quick_demo_through_the_cli(tmp_path, capsys):
    """What CI runs: the shipped model, 2 Ray actors, the whole flow chain; outputs a user can open."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--actors", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in ("render", "preview", "catalog", "driving video", "time"):
        assert name in printed
    render, preview = probe(out / "render.mp4"), probe(out / "render_preview.mp4")
    assert render.num_frames == 12 and render.fps == pytest.approx(12.0)
    assert render.has_audio  # the driving clip's melody is carried over
    assert (render.width, render.height) == (128, 192)
    assert preview.num_frames == 12 and preview.width == 3 * 128
    assert (out / "render_thumbs.png").is_file()
    frames = read_frames(out / "render.mp4", list(range(12)))
    assert frames.std() > 5  # a picture, not a flat frame


def test_demo_api_rerun_reuses_the_catalog(tmp_path, random_demo_model):
    from mimicmotion.demo import run_demo

    first = run_demo(tmp_path / "d", model_dir=random_demo_model, actors=0, steps=1, frames=16, progress=False)
    lines = []
    second = run_demo(tmp_path / "d", model_dir=random_demo_model, actors=0, steps=1, frames=16, log=lines.append)
    assert first.clip_id == second.clip_id
    assert [line[:5] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert second.num_frames == 8 and second.has_audio
    a, b = (read_frames(o.render, list(range(8))) for o in (first, second))
    assert np.array_equal(a, b)  # same seed, same sample, same model: same video


def test_demo_sample_is_deterministic_and_unseen(tmp_path):
    from mimicmotion.demo import DEMO_DATASET_SEED, demo_video_seed, write_demo_sample
    from mimicmotion.pose.io import load_poses

    a = write_demo_sample(tmp_path / "a", num_frames=8)
    b = write_demo_sample(tmp_path / "b", num_frames=8)
    assert DEMO_DATASET_SEED != 0  # the demo model trains on `synth --seed 0` datasets
    assert a.video_seed == b.video_seed == demo_video_seed()
    pa, pb = load_poses(a.driving_poses), load_poses(b.driving_poses)
    assert np.array_equal(np.nan_to_num(np.stack(pa.frames)), np.nan_to_num(np.stack(pb.frames)))
    assert np.array_equal(read_frames(a.driving_video, list(range(8))), read_frames(b.driving_video, list(range(8))))
    assert probe(a.driving_video).has_audio


@pytest.mark.parametrize("argv, message", [
    (["--frames", "3"], "frames must be an integer >= 8"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--actors", "-1"], "actors must be an integer >= 0"),
])
def test_bad_demo_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["demo", "--out", str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_missing_model_dir_is_one_line_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--model-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "no demo model in" in err and "Traceback" not in err
