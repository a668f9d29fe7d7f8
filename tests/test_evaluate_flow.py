"""The Prefect `evaluate` flow on a tiny catalog and the tiny model: Parquet rows per clip and method, the
copy_reference baseline scored against exactly frames 1.. of the clip, blank_pose differing from the model,
LPIPS / FID-VID / FVD from tiny feature networks, the markdown summary and artifact; then resume without
re-rendering, the `evaluate` CLI (baseline only) and up-front errors."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

prefect_testing = pytest.importorskip("prefect.testing.utilities")

from mimicmotion.errors import ConfigError  # noqa: E402

FRAMES = 6  # the clip's frames: the reference plus 5 scored frames
W, H = 90, 160  # the dancer video (9:16): crop = the whole frame
RENDER = dict(resolution=64, tile_size=4, tile_overlap=2, steps=1, decode_chunk_size=8, seed=3)


@pytest.fixture(scope="module", autouse=True)
def harness():
    threads = torch.get_num_threads()
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield
    torch.set_num_threads(threads)


def dancer(path: Path, num_frames: int) -> None:
    """The procedural dancer video and its sidecar pose file (every frame), as tests/test_catalog.py makes it."""
    from mimicmotion.curation import sidecar_path
    from mimicmotion.pose.io import PoseSequence, save_poses
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    poses = [p.astype(np.float64) for p in dance_poses(num_frames, 24.0, W, H, seed=0)]
    for p in poses:
        p[..., 0] = 0.5 + (p[..., 0] - 0.5) * 0.5  # keep the hands inside the 9:16 frame
    write_video(path, [draw_figure(p, H, W, seed=0) for p in poses], fps=24.0)
    save_poses(sidecar_path(path), PoseSequence(frames=poses, width=W, height=H, fps=24.0,
                                                source_frames=list(range(num_frames)), sample_stride=1))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from catalog import curate_file, ensure_index, init_catalog
    from mimicmotion.curation import CurationSettings

    d = tmp_path_factory.mktemp("media")
    dancer(d / "dance.mp4", FRAMES)
    root = init_catalog(d / "cat")
    outcome = curate_file(d / "dance.mp4", root, CurationSettings(sample_stride=1, clip_length=FRAMES,
                                                                 min_clip_length=FRAMES), pose_source="sidecar")
    assert outcome.status == "ok" and len(outcome.clip_ids) == 1
    ensure_index(root)
    return dict(root=str(root), clip_id=outcome.clip_ids[0], video=str(d / "dance.mp4"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny model with a non-zero PoseNet projection (a fresh PoseNet outputs exactly zero, so the pose
    images would not matter and blank_pose would equal the model)."""
    from safetensors.torch import load_file, save_file

    from mimicmotion.tiny import save_tiny_model

    base, ckpt = save_tiny_model(tmp_path_factory.mktemp("model"))
    state = load_file(str(ckpt))
    g = torch.Generator().manual_seed(0)
    for key in ("pose_net.final_proj.weight", "pose_net.final_proj.bias"):
        state[key] = torch.randn(state[key].shape, generator=g) * 0.5
    save_file(state, str(ckpt))
    return dict(base_model=str(base), checkpoint=str(ckpt))


@pytest.fixture(scope="module")
def metric_weights(tmp_path_factory):
    """Tiny LPIPS (AlexNet layout), I3D and FID Inception weight files."""
    from safetensors.torch import save_file

    from mimicmotion import feature_nets as fn

    d = tmp_path_factory.mktemp("metric_weights")
    torch.manual_seed(0)
    files = {}
    for name, net in (("lpips", fn.LPIPSNet("alex", width=0.1)), ("i3d", fn.InceptionI3d(num_classes=6, width=1 / 16)),
                      ("inception", fn.FIDInceptionV3(width=1 / 16))):
        state = {k: v.detach().abs().contiguous() if name == "lpips" else v.detach().contiguous()
                 for k, v in net.state_dict().items()}
        files[name] = str(d / f"{name}.safetensors")
        save_file(state, files[name])
    return dict(lpips_weights=files["lpips"], fvd_weights=files["i3d"], fid_vid_weights=files["inception"],
                fvd_window=2, fid_vid_pooling="frames")


def expected_truth(video: str, size=(64, 64)) -> np.ndarray:
    """The clip's frames at the render size, computed here independently: the whole 90x160 frame (the
    crop) resized with area averaging to cover 64x64 (64x114), then the centre 64 rows."""
    import cv2

    from mimicmotion.video import read_frames

    h, w = size
    cover_h = math.ceil(w * H / W)
    top = int(round((cover_h - h) / 2))
    frames = read_frames(video, list(range(FRAMES)))
    return np.stack([cv2.resize(f, (w, cover_h), interpolation=cv2.INTER_AREA)[top:top + h] for f in frames])


def test_flow_scores_model_and_baselines(catalog, model, metric_weights, tmp_path):
    import pyarrow.parquet as pq
    from prefect.artifacts import Artifact

    from flows.evaluate import evaluate
    from mimicmotion.metrics import psnr, ssim

    out = tmp_path / "eval"
    result = evaluate(catalog=catalog["root"], out_dir=str(out), clip_ids=[catalog["clip_id"]],
                      baselines=["copy_reference", "blank_pose"], device="cpu", artifact_key="eval-test",
                      fvd_input_size=64, fid_input_size=96, **model, **RENDER, **metric_weights)

    rows = pq.read_table(out / "clips.parquet").to_pylist()
    assert [(r["clip_id"], r["method"], r["num_frames"]) for r in rows] == [
        (catalog["clip_id"], m, FRAMES - 1) for m in ("mimicmotion", "copy_reference", "blank_pose")]
    by_method = {r["method"]: r for r in rows}
    assert rows == result["clips"]

    # copy_reference: every frame is frame 0, scored against exactly frames 1..FRAMES-1 of the clip.
    truth = expected_truth(catalog["video"])
    copies = np.repeat(truth[:1], FRAMES - 1, axis=0)
    copy = by_method["copy_reference"]
    assert copy["psnr"] == pytest.approx(psnr(copies, truth[1:]), abs=1e-9)
    assert copy["ssim"] == pytest.approx(ssim(copies, truth[1:]), abs=1e-9)
    assert math.isfinite(copy["psnr"])  # frame 0 itself (identical: inf) is not scored

    # The model and the blank-pose baseline render for real and differ (the pose input matters).
    model_row, blank = by_method["mimicmotion"], by_method["blank_pose"]
    for r in (model_row, blank, copy):
        assert 0 < r["ssim"] <= 1 and math.isfinite(r["psnr"]) and r["lpips"] > 0
    assert model_row["ssim"] != blank["ssim"] and model_row["psnr"] != blank["psnr"]
    assert model_row["seconds"] > 0

    summary = {r["method"]: r for r in pq.read_table(out / "summary.parquet").to_pylist()}
    assert list(summary) == ["mimicmotion", "copy_reference", "blank_pose"]
    for method, s in summary.items():
        assert (s["clips"], s["frames"]) == (1, FRAMES - 1)
        assert s["ssim"] == pytest.approx(by_method[method]["ssim"]) and s["lpips"] == pytest.approx(
            by_method[method]["lpips"])
        assert s["fvd"] > 0 and s["fid_vid"] > 0  # 2 FVD windows of 2 frames, 5 FID-VID frame samples

    markdown = (out / "summary.md").read_text()
    assert markdown == result["markdown"]
    assert f"| copy_reference | 1 | {FRAMES - 1} | {copy['ssim']:.4f} | {copy['psnr']:.2f} |" in markdown
    assert "| mimicmotion | 1 |" in markdown and "| blank_pose | 1 |" in markdown
    artifact = Artifact.get("eval-test")
    assert artifact is not None and artifact.data == markdown
    meta = pq.read_schema(out / "clips.parquet").metadata[b"mimicmotion.evaluation"]
    assert b'"resolution": 64' in meta

    # A rerun reuses every finished (clip, method): nothing is rendered again, same rows.
    import mimicmotion.render
    from mimicmotion.evaluation import MetricWeights, evaluate as evaluate_library
    from mimicmotion.render import RenderSettings

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again instead of reusing the finished result")

    original = mimicmotion.render.generate
    mimicmotion.render.generate = no_render
    try:
        settings = RenderSettings(resolution=64, tile_size=4, tile_overlap=2, num_inference_steps=1,
                                  decode_chunk_size=8, seed=3)
        weights = MetricWeights(lpips=metric_weights["lpips_weights"], fvd=metric_weights["fvd_weights"],
                                fid_vid=metric_weights["fid_vid_weights"], fvd_window=2, fid_vid_pooling="frames",
                                fvd_input_size=64, fid_input_size=96)
        again = evaluate_library(catalog["root"], out, clip_ids=[catalog["clip_id"]], settings=settings,
                                 weights=weights, device="cpu", **model)
    finally:
        mimicmotion.render.generate = original
    assert again["clips"] == rows
    assert [s["fvd"] for s in again["summary"]] == [summary[m]["fvd"] for m in summary]


def test_cli_copy_reference_only(catalog, tmp_path, capsys):
    import pyarrow.parquet as pq

    from mimicmotion.evaluation import add_evaluate_command

    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["evaluate", "--catalog", catalog["root"], "--query", "training_clips",
                              "--param", f"min_frames={FRAMES}", "--out", str(out), "--baselines", "copy_reference",
                              "--no-model", "--resolution", "64", "--save-videos"])
    assert args.func(args) == 0
    rows = pq.read_table(out / "clips.parquet").to_pylist()
    assert [(r["clip_id"], r["method"]) for r in rows] == [(catalog["clip_id"], "copy_reference")]
    assert math.isnan(rows[0]["lpips"])
    from mimicmotion.video import probe

    video = probe(out / "videos" / f"{catalog['clip_id']}_copy_reference.mp4")
    assert (video.num_frames, video.width, video.height) == (FRAMES - 1, 64, 64)
    printed = capsys.readouterr().out
    assert "| copy_reference | 1 |" in printed and str(out / "summary.md") in printed


def test_bad_inputs_fail_before_any_work(catalog, model, tmp_path):
    from mimicmotion.evaluation import MetricWeights, plan_evaluation

    with pytest.raises(ConfigError, match="not in the catalog"):
        plan_evaluation(catalog["root"], tmp_path, clip_ids=["0000000000000000-0000"], **model)
    with pytest.raises(ConfigError, match="unknown baseline"):
        plan_evaluation(catalog["root"], tmp_path, clip_ids=[catalog["clip_id"]], baselines="copy_ref", **model)
    with pytest.raises(ConfigError, match="need the model"):
        plan_evaluation(catalog["root"], tmp_path, clip_ids=[catalog["clip_id"]])
    with pytest.raises(ConfigError, match="one way"):
        plan_evaluation(catalog["root"], tmp_path, clip_ids=[catalog["clip_id"]], query="training_clips", **model)
    with pytest.raises(ConfigError, match="FVD.*not found.*pytorch-i3d"):
        plan_evaluation(catalog["root"], tmp_path, clip_ids=[catalog["clip_id"]],
                        weights=MetricWeights(fvd=str(tmp_path / "i3d.pt")), **model)
    with pytest.raises(ConfigError, match="clip_id column"):
        plan_evaluation(catalog["root"], tmp_path, sql="SELECT video_id FROM videos", **model)
    sql = "SELECT clip_id FROM clips WHERE num_frames >= $n"
    plan = plan_evaluation(catalog["root"], tmp_path, sql=sql, params={"n": FRAMES}, **model)
    assert plan.clip_ids == [catalog["clip_id"]] and plan.methods == ["mimicmotion", "copy_reference", "blank_pose"]
    with pytest.raises(ConfigError, match="no clips selected"):
        plan_evaluation(catalog["root"], tmp_path, sql=sql, params={"n": FRAMES + 1}, **model)


def test_resume_key_changes_when_base_model_weights_are_replaced(catalog, model, tmp_path):
    """A VAE re-saved into the same base folder must not reuse renders made with the old one."""
    import os
    import shutil

    from mimicmotion.evaluation import plan_evaluation

    base = tmp_path / "base"
    shutil.copytree(model["base_model"], base)
    args = dict(clip_ids=[catalog["clip_id"]], base_model=str(base), checkpoint=model["checkpoint"])
    before = plan_evaluation(catalog["root"], tmp_path / "out", **args)
    again = plan_evaluation(catalog["root"], tmp_path / "out", **args)
    key = lambda plan, method: plan.work_key(catalog["clip_id"], method)
    assert key(before, "mimicmotion") == key(again, "mimicmotion")
    weights = next(p for p in (base / "vae").iterdir() if p.suffix == ".safetensors")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    after = plan_evaluation(catalog["root"], tmp_path / "out", **args)
    assert key(after, "mimicmotion") != key(before, "mimicmotion")
    assert key(after, "blank_pose") != key(before, "blank_pose")
    assert key(after, "copy_reference") == key(before, "copy_reference")  # needs no model


def test_vae_reconstruction_baseline_decodes_like_the_sampler(catalog, model):
    """The optional ceiling baseline: frames 1.. through the model's VAE, decoded in the sampler's chunks."""
    from mimicmotion.evaluation import BASELINES, clip_rows, load_eval_clip, parse_methods, predict
    from mimicmotion.loading import load_pipeline
    from mimicmotion.render import RenderSettings

    assert "vae_reconstruction" not in BASELINES  # only when asked
    assert parse_methods("vae_reconstruction") == ["mimicmotion", "vae_reconstruction"]
    clip_id = catalog["clip_id"]
    clip = load_eval_clip(catalog["root"], clip_id, clip_rows(catalog["root"], [clip_id])[clip_id], 64)
    with pytest.raises(ConfigError, match="needs the model"):
        predict("vae_reconstruction", clip)
    pipe = load_pipeline(model["base_model"], model["checkpoint"])
    got = predict("vae_reconstruction", clip, pipe, RenderSettings(resolution=64, decode_chunk_size=2))
    vae = pipe.vae
    x = torch.from_numpy(clip.frames[1:]).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = []
    with torch.no_grad():
        for i in range(0, len(x), 2):
            z = vae.encode(x[i:i + 2]).latent_dist.mode()
            want.append(vae.decode(z, num_frames=len(z)).sample)
    want = ((torch.cat(want) / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert got.shape == clip.frames[1:].shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_decoder_pairs_are_the_latents_the_evaluation_decodes(catalog, model, tmp_path, monkeypatch):
    """demo_model.decoder_pair samples exactly what the evaluation renders (same seed: its latents decode to the
    model's scored frames), and write_decoder_pairs keeps the pairs it wrote (a re-run loads no model)."""
    import mimicmotion.loading
    from mimicmotion import demo_model as dm
    from mimicmotion.evaluation import clip_rows, load_eval_clip, predict
    from mimicmotion.loading import load_pipeline
    from mimicmotion.pipeline import frames_to_uint8
    from mimicmotion.render import RenderSettings

    clip_id = catalog["clip_id"]
    clip = load_eval_clip(catalog["root"], clip_id, clip_rows(catalog["root"], [clip_id])[clip_id], 64, 6)
    pipe = load_pipeline(model["base_model"], model["checkpoint"])
    pair = dm.decoder_pair(pipe, clip, steps=2, guidance=2.0, seed=5, tile_size=4, tile_overlap=1)
    assert pair["latents"].shape == (7, 4, 8, 8) and pair["latents"].dtype == np.float32
    assert pair["frames"].shape == (7, 64, 64, 3)
    assert np.array_equal(pair["frames"][0], clip.frames[0]) and np.array_equal(pair["frames"][1:], clip.frames)
    settings = RenderSettings(resolution=64, tile_size=4, tile_overlap=1, num_inference_steps=2, seed=5)
    scored = predict("mimicmotion", clip, pipe, settings)
    decoded = frames_to_uint8(pipe.decode(torch.from_numpy(pair["latents"])[None])[0])
    assert np.array_equal(decoded[2:], scored)

    out = dm.write_decoder_pairs(catalog["root"], model["base_model"], model["checkpoint"], [clip_id],
                                 tmp_path / "pairs", steps=1, guidance=1.0, seed=0, max_frames=6, resolution=64)
    (loaded,) = dm.load_decoder_pairs(out)
    assert loaded["latents"].shape == (7, 4, 8, 8) and np.array_equal(loaded["frames"], pair["frames"])
    real_load = mimicmotion.loading.load_pipeline
    monkeypatch.setattr(mimicmotion.loading, "load_pipeline", lambda *a, **k: pytest.fail("pairs were resampled"))
    dm.write_decoder_pairs(catalog["root"], model["base_model"], model["checkpoint"], [clip_id], out, steps=1,
                           guidance=1.0, max_frames=6, resolution=64)
    manifest = json.loads((out / "pairs.json").read_text())
    assert manifest["seeds"] == {clip_id: 0} and manifest["clips"] == [clip_id] and manifest["identity"]["steps"] == 1

    # another sampler setting (as another checkpoint would): the old pairs are set aside, not reused or lost
    loads = []
    monkeypatch.setattr(mimicmotion.loading, "load_pipeline", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    messages = []
    dm.write_decoder_pairs(catalog["root"], model["base_model"], model["checkpoint"], [clip_id], out, steps=2,
                           guidance=1.0, max_frames=6, resolution=64, log=messages.append)
    stale = out / f"stale-{manifest['identity']['checkpoint'][:12]}-1"
    assert loads == [1] and "moved to" in messages[0]
    assert np.array_equal(np.load(stale / f"{clip_id}.npz")["latents"], loaded["latents"])
    assert json.loads((stale / "pairs.json").read_text()) == manifest
    assert json.loads((out / "pairs.json").read_text())["identity"]["steps"] == 2
    (resampled,) = dm.load_decoder_pairs(out)
    assert not np.array_equal(resampled["latents"], loaded["latents"])

    # a clip whose recorded seed is not the one its position now gives is sampled again
    dm.write_decoder_pairs(catalog["root"], model["base_model"], model["checkpoint"], [clip_id], out, steps=2,
                           guidance=1.0, seed=3, max_frames=6, resolution=64)
    assert loads == [1, 1] and json.loads((out / "pairs.json").read_text())["seeds"] == {clip_id: 3}
    assert not (out / "stale-unknown-1").exists()
    # the settings change again (same checkpoint): a second set-aside does not overwrite the first
    dm.write_decoder_pairs(catalog["root"], model["base_model"], model["checkpoint"], [clip_id], out, steps=1,
                           guidance=1.0, max_frames=6, resolution=64)
    assert loads == [1, 1, 1] and np.array_equal(np.load(stale / f"{clip_id}.npz")["latents"], loaded["latents"])
    second = stale.with_name(stale.name[:-1] + "2")
    assert (second / f"{clip_id}.npz").is_file()
    assert json.loads((second / "pairs.json").read_text())["identity"]["steps"] == 2


def test_region_benchmark_splits_each_method_by_what_moved(catalog, model):
    """benchmarks/region_ssim.py: each method's whole-frame SSIM and PSNR are the evaluation's metrics on its
    frames, its static / changed scores are region_ssim over changed_mask, and the reference through the VAE is
    frame 0's reconstruction repeated."""
    import sys
    from pathlib import Path

    from mimicmotion.evaluation import clip_rows, load_eval_clip, predict, vae_roundtrip
    from mimicmotion.loading import load_pipeline
    from mimicmotion.metrics import changed_mask, psnr, region_ssim, ssim
    from mimicmotion.render import RenderSettings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import region_ssim as bench

    clip_id = catalog["clip_id"]
    clip = load_eval_clip(catalog["root"], clip_id, clip_rows(catalog["root"], [clip_id])[clip_id], 64, 6)
    pipe = load_pipeline(model["base_model"], model["checkpoint"])
    settings = RenderSettings(resolution=64, tile_size=4, tile_overlap=1, num_inference_steps=1, seed=3,
                              decode_chunk_size=2)
    got = bench.clip_scores(pipe, clip, settings, threshold=12.0)
    assert set(got["scores"]) == set(bench.METHODS)
    truth, mask = clip.frames[1:], changed_mask(clip.frames[1:], clip.frames[0], 12.0)
    assert got["changed_share"] == pytest.approx(mask.mean())
    model_frames = predict("mimicmotion", clip, pipe, settings)
    changed, static = region_ssim(model_frames, truth, mask)
    assert got["scores"]["mimicmotion"] == pytest.approx((ssim(model_frames, truth), static, changed,
                                                          psnr(model_frames, truth)), nan_ok=True)
    through = np.repeat(vae_roundtrip(pipe, clip.frames[:1], 2), len(truth), axis=0)
    assert got["scores"]["reference_through_vae"][0] == pytest.approx(ssim(through, truth))
    assert got["scores"]["copy_reference"][0] == pytest.approx(ssim(np.repeat(clip.frames[:1], len(truth), 0),
                                                                    truth))
    # the finer split: pooled sums over region_labels, which add up to each method's whole-frame SSIM
    from mimicmotion.metrics import labelled_ssim_sums, region_labels

    labels = region_labels(truth, clip.frames[0], 12.0)
    sums, counts = got["regions"]["mimicmotion"]
    want_sums, want_counts = labelled_ssim_sums(model_frames, truth, labels)
    assert np.array_equal(counts, want_counts) and np.allclose(sums, want_sums)
    table = bench.region_table([got, got])
    assert sum(table["share"].values()) == pytest.approx(1.0)
    present = [name for name, count in zip(table["share"], counts) if count]
    for method in bench.METHODS:
        assert sum(table[method][n] * table["share"][n] for n in present) == pytest.approx(got["scores"][method][0])
    assert sum(table["model_minus_copy"].values()) == pytest.approx(
        got["scores"]["mimicmotion"][0] - got["scores"]["copy_reference"][0])
