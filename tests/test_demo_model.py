"""The demo model's recipe pieces: architecture, VAE pre-training, files, split selection, shipping."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mimicmotion import demo_model as dm
from mimicmotion.errors import ConfigError, ModelFileError


def _frames(n=6, h=64, w=64, seed=0):
    """Flat-coloured blocks: easy for a small autoencoder to start learning."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = rng.integers(0, 255, 3)
        y, x = rng.integers(0, h // 2, 2)
        frames[i, y:y + h // 2, x:x + w // 2] = rng.integers(0, 255, 3)
    return frames


def test_components_are_seeded_and_shaped():
    a, b = dm.demo_components(seed=3), dm.demo_components(seed=3)
    for name in ("unet", "vae", "image_encoder", "pose_net"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert a["unet"].config.block_out_channels == (64, 128) or list(a["unet"].config.block_out_channels) == [64, 128]
    assert a["unet"].config.num_frames == dm.DEMO_TILE_SIZE
    # PoseNet's output width is the UNet's first block (its features are added to conv_in's output).
    assert a["pose_net"].final_proj.out_channels == a["unet"].config.block_out_channels[0]
    # 8x spatial down-sampling, as SVD: latents of a 192x128 frame are 24x16.
    with torch.no_grad():
        z = a["vae"].encode(torch.zeros(1, 3, dm.DEMO_HEIGHT, dm.DEMO_WIDTH)).latent_dist.mode()
    assert z.shape == (1, dm.DEMO_LATENT_CHANNELS, dm.DEMO_HEIGHT // 8, dm.DEMO_WIDTH // 8)
    # the UNet denoises those latents next to the reference latent
    assert a["unet"].config.in_channels == 2 * dm.DEMO_LATENT_CHANNELS
    assert a["unet"].config.out_channels == dm.DEMO_LATENT_CHANNELS


def test_frames_to_tensor_range_and_errors():
    t = dm.frames_to_tensor(np.array([[[[0, 255, 127]]]], np.uint8))
    assert t.shape == (1, 3, 1, 1)
    assert t[0, 0, 0, 0] == -1 and t[0, 1, 0, 0] == 1
    with pytest.raises(ConfigError, match="uint8"):
        dm.frames_to_tensor(np.zeros((1, 4, 4, 3), np.float32))


def test_psnr_of():
    x = torch.zeros(1, 3, 4, 4)
    assert dm.psnr_of(x, x) == math.inf
    # error 0.2 everywhere on a range of 2: 10 log10(4 / 0.04) = 20 dB
    assert dm.psnr_of(x + 0.2, x) == pytest.approx(20.0)


def test_random_crops_on_latent_grid():
    images = torch.arange(2 * 3 * 32 * 48, dtype=torch.float32).reshape(2, 3, 32, 48)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        crop = dm.random_crops(images, 16, g)
        assert crop.shape == (2, 3, 16, 16)
        y, x = divmod(int(crop[0, 0, 0, 0]), 48)
        assert y % 8 == 0 and x % 8 == 0
        assert torch.equal(crop, images[..., y:y + 16, x:x + 16])
    assert dm.random_crops(images, None, g) is images


def test_posterior_made_deterministic_stays_so_under_training():
    vae = _tiny_vae()
    dm.make_posterior_deterministic(vae)
    images = dm.frames_to_tensor(_frames(2))
    posterior = vae.encode(images).latent_dist
    assert torch.allclose(posterior.logvar, torch.full_like(posterior.logvar, -20.0))
    # a training step leaves the log-variance half of quant_conv untouched
    opt = torch.optim.SGD(vae.parameters(), lr=0.1)
    recon, posterior = dm.vae_reconstruct(vae, images)
    (recon ** 2).mean().add(posterior.logvar.mean()).backward()
    opt.step()
    assert torch.allclose(vae.encode(images).latent_dist.logvar, torch.full_like(posterior.logvar, -20.0))


def _tiny_vae():
    """The demo VAE's blocks at two levels (64 channels: with 32, GroupNorm's 32 groups act as instance
    norm and colours are hard to learn)."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    return AutoencoderKLTemporalDecoder(**dict(dm.DEMO_VAE_CONFIG, block_out_channels=(64, 64),
                                               down_block_types=("DownEncoderBlock2D",) * 2))


def test_pretrain_vae_learns_and_sets_scale():
    frames = _frames(8, 32, 32)
    vae = _tiny_vae()
    before = dm.evaluate_vae(vae, frames)["psnr"]
    logged = []
    metrics = dm.pretrain_vae(vae, frames, steps=60, batch_size=4, lr=3e-3, crop=16, warmup_steps=5, log_every=20,
                              log=logged.append)
    assert [m["step"] for m in logged] == [20, 40, 60]
    assert logged[-1]["lr"] == 0.0  # cosine to zero
    assert logged[-1]["rec"] < logged[0]["rec"]
    assert metrics["psnr"] > before + 1.5, (before, metrics["psnr"])  # 10.2 -> 12.6 dB when written
    assert metrics["latent_std"] > 0
    factor = dm.set_scaling_factor(vae, metrics["latent_std"])
    assert vae.config.scaling_factor == factor == pytest.approx(1 / metrics["latent_std"], rel=1e-3)
    with pytest.raises(ConfigError):
        dm.set_scaling_factor(vae, 0.0)


def test_pretrain_vae_rejects_bad_settings():
    vae = _tiny_vae()
    with pytest.raises(ConfigError, match="crop"):
        dm.pretrain_vae(vae, _frames(2), steps=1, crop=60)
    with pytest.raises(ConfigError, match="steps"):
        dm.pretrain_vae(vae, _frames(2), steps=0)
    with pytest.raises(ConfigError, match="multiple of the clip length 3"):
        dm.pretrain_vae(vae, _frames(6).reshape(2, 3, 64, 64, 3), steps=1, batch_size=4)
    with pytest.raises(ConfigError, match="uint8"):
        dm.pretrain_vae(vae, _frames(2).astype(np.float32), steps=1)


def _decode(vae, latents, num_frames):
    with torch.no_grad():
        return vae.decode(latents, num_frames=num_frames).sample


def test_random_temporal_taps_mix_frames_and_held_taps_do_not():
    """The sampler decodes 8 frames at once: a decoder trained on single frames only must not mix them."""
    vae = _tiny_vae().eval()
    with torch.no_grad():
        for m in vae.decoder.modules():  # a trained-looking decoder: outer taps as large as the centre
            if isinstance(m, torch.nn.Conv3d):
                m.weight.normal_(0, 0.2)
    g = torch.Generator().manual_seed(0)
    # four similar frames, as in a video
    latents = torch.randn(1, dm.DEMO_LATENT_CHANNELS, 8, 8, generator=g) + 0.1 * torch.randn(
        4, dm.DEMO_LATENT_CHANNELS, 8, 8, generator=g)
    mixed = (_decode(vae, latents, 4) - _decode(vae, latents, 1)).abs().max()
    assert dm.hold_decoder_framewise(vae) == sum(isinstance(m, torch.nn.Conv3d) for m in vae.decoder.modules())
    held = (_decode(vae, latents, 4) - _decode(vae, latents, 1)).abs().max()
    # what remains is GroupNorm pooling its statistics over the chunk's frames
    assert held < 0.1 * mixed, (held, mixed)
    # and the taps stay at zero through training
    opt = torch.optim.SGD(vae.parameters(), lr=0.5)
    vae.decode(latents, num_frames=4).sample.square().mean().backward()
    opt.step()
    for m in vae.decoder.modules():
        if isinstance(m, torch.nn.Conv3d):
            assert torch.count_nonzero(m.weight[:, :, 0]) == 0 and torch.count_nonzero(m.weight[:, :, 2]) == 0
            assert torch.count_nonzero(m.weight[:, :, 1]) > 0


def test_pretrain_vae_on_clips_trains_the_temporal_decoder():
    clips = _frames(8, 32, 32).reshape(4, 2, 32, 32, 3)
    vae = _tiny_vae()
    before = dm.evaluate_vae(vae, clips)
    metrics = dm.pretrain_vae(vae, clips, steps=40, batch_size=4, lr=3e-3, crop=16, warmup_steps=5, log_every=20)
    assert metrics["psnr"] > before["psnr"] + 1.0, (before, metrics)
    outer = [m.weight[:, :, 0] for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert any(torch.count_nonzero(w) for w in outer)  # clips train the time-neighbour weights
    assert 0 < metrics["ssim"] <= 1


def test_collect_clips_cuts_runs_per_video(tmp_path):
    from mimicmotion.video import write_video

    frames = np.zeros((10, 64, 64, 3), np.uint8)
    frames[:, :, :] = (np.arange(10) * 20)[:, None, None, None]
    write_video(tmp_path / "a.mp4", frames, fps=10)
    clips = dm.collect_clips([tmp_path / "a.mp4"], clip_length=2, every=3)  # frames 0 3 6 9 -> 2 clips
    assert clips.shape == (2, 2, 64, 64, 3)
    assert np.abs(clips[:, :, 32, 32, 0].astype(int) - np.array([[0, 60], [120, 180]])).max() <= 6
    assert dm.collect_frames([tmp_path / "a.mp4"], every=5).shape == (2, 64, 64, 3)
    with pytest.raises(ConfigError, match="shorter than one clip"):
        dm.collect_clips([tmp_path / "a.mp4"], clip_length=20, every=1)


def test_saved_model_loads_into_the_pipeline(tmp_path):
    from mimicmotion.loading import load_pipeline

    comps = dm.demo_components(seed=1)
    base, checkpoint = dm.save_demo_model(tmp_path / "m", comps, card={"steps": 0})
    assert (tmp_path / "m" / "training.json").is_file()
    assert dm.demo_model_paths(tmp_path / "m") == (base, checkpoint)
    pipe = load_pipeline(base, checkpoint)
    for name in ("unet", "pose_net", "vae"):
        want, got = comps[name].state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), name


def test_missing_demo_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no demo model in .*reinstall"):
        dm.demo_model_paths(tmp_path / "nothing")


def test_ship_model_replaces_atomically(tmp_path):
    comps = dm.demo_components()
    base, checkpoint = dm.save_demo_model(tmp_path / "trained", comps)
    target = tmp_path / "assets" / "demo_model"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    record = tmp_path / "metrics.csv"
    record.write_text("step,loss\n1,0.5\n")
    dm.ship_model(base, checkpoint, "# card\n", target=target, extra_files=[record])
    assert (target / "metrics.csv").read_text() == record.read_text()
    assert not (target / "stale.txt").exists()
    assert (target / "MODEL_CARD.md").read_text() == "# card\n"
    assert dm.demo_model_paths(target) == (target / "base", target / dm.SHIPPED_CHECKPOINT)
    assert sorted(p.name for p in tmp_path.joinpath("assets").iterdir()) == ["demo_model"]


def test_split_sql_selects_the_split(tmp_path):
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE videos (video_id VARCHAR, status VARCHAR, source_path VARCHAR)")
    con.execute("CREATE TABLE clips (clip_id VARCHAR, video_id VARCHAR, clip_index INTEGER)")
    con.execute("INSERT INTO videos VALUES ('a', 'ok', '/d/train/a.mp4'), ('b', 'ok', '/d/test/b.mp4'), "
                "('c', 'failed', '/d/test/c.mp4'), ('d', 'ok', '/d/test/d.mp4')")
    con.execute("INSERT INTO clips VALUES ('a-0', 'a', 0), ('b-0', 'b', 0), ('b-1', 'b', 1), ('c-0', 'c', 0), "
                "('d-0', 'd', 0), ('d-1', 'd', 1)")

    def ids(*args, **kwargs):
        sql, params = dm.split_sql(*args, **kwargs)
        return [r[0] for r in con.execute(sql, params).fetchall()]

    assert ids("train") == ["a-0"]
    assert ids("test") == ["b-0", "b-1", "d-0", "d-1"]
    assert ids("test", first_clip_only=True) == ["b-0", "d-0"]
    assert ids("test", first_clip_only=True, limit=1) == ["b-0"]
    assert ids("test", first_clip_only=True, limit=1, offset=1) == ["d-0"]  # the validation clips
    assert ids("test", offset=3) == ["d-1"]
    with pytest.raises(ConfigError, match="offset"):
        dm.split_sql("test", offset=-1)
    with pytest.raises(ConfigError, match="split"):
        dm.split_sql("val")
    with pytest.raises(ConfigError, match="limit"):
        dm.split_sql("test", limit=0)


def test_model_card_states_recipe_and_results():
    card = dm.model_card({"vae": {"frames": 10, "psnr": 25.0, "scaling_factor": 0.5, "seconds": 3},
                          "train": {"step": 7, "workers": 2, "clips": 5, "train_seconds": 9},
                          "evaluation": [{"method": "mimicmotion", "psnr": 21.0, "ssim": 0.5},
                                         {"method": "copy_reference", "psnr": 22.0, "ssim": 0.4},
                                         {"method": "vae_reconstruction", "psnr": 25.0, "ssim": 0.9}]})
    assert card.startswith("# MimicMotion demo model")
    assert '"psnr": 25.0' in card and '"step": 7' in card and '"method": "mimicmotion"' in card
    assert "against copy_reference: the model beats it on ssim (SSIM 0.500 vs 0.400, PSNR 21.00 vs 22.00 dB)" in card
    assert "ceiling: the test frames through the VAE score SSIM 0.900, PSNR 25.00 dB" in card
    assert "against vae_reconstruction" not in card
    assert f"- Config: {json.dumps(dm.DEMO_TRAIN_CONFIG)}" in card  # a summary without the run's config
    assert "- VAE (8x downsampling: latents 24 x 16)" in card  # a summary from before the 4x VAE
    assert "- VAE (4x downsampling: latents 48 x 32)" in dm.model_card({"vae": {"downscale": 4}})
    card = dm.model_card({"train": {"step": 7, "config": dict(dm.DEMO_TRAIN_CONFIG, decay_steps=7, seed=2)}})
    assert '"decay_steps": 7' in card and '"seed": 2' in card
    first = {"step": 900, "ssim": 0.821, "ssim_weight": 0.5}
    decoder = {"step": 3000, "ssim": 0.85, "ssim_weight": 2.0, "continued_from": first}
    card = dm.model_card({"vae": {"decoder": decoder}})
    assert ("(L1 + MSE + 2.0 x (1 - SSIM)): {\"step\": 3000, \"ssim\": 0.85}, after an earlier decoder stage of 900 "
            "steps (SSIM weight 0.5, held-out SSIM 0.821)") in card


def test_training_record_sums_step_time(tmp_path):
    path = tmp_path / "metrics.csv"
    lines = ["step,loss,step_time_s,data_time_s"] + [f"{i},{1.0 if i <= 100 else 0.5},0.5,0.25" for i in range(1, 151)]
    path.write_text("\n".join(lines) + "\n")
    record = dm.training_record(path)
    assert record == dict(steps_logged=150, train_seconds=112.5, first_loss=1.0, last_loss=0.75)
    (tmp_path / "empty.csv").write_text("step,loss,step_time_s\n")
    with pytest.raises(ConfigError, match="no steps"):
        dm.training_record(tmp_path / "empty.csv")

    # a run that trained on from an earlier model adds that model's totals (which may themselves be totals)
    first = dict(step=1000, train_seconds=3000.0)
    record = dm.training_record(path, prior=first)
    assert record["continued_from"] == dict(steps=1000, train_seconds=3000.0)
    assert (record["total_steps"], record["total_train_seconds"]) == (1150, 3112.5)
    again = dm.training_record(path, prior=dict(record, step=150))
    assert (again["total_steps"], again["total_train_seconds"]) == (1300, 3225.0)
    card = dm.model_card({"train": dict(record, step=150)})
    assert "Continued from an earlier demo model trained 1000 steps (3000 s): 1150 steps, 3112 s" in card
    assert "- Stage:" not in card
    # stage lines of the start model (e.g. one trained on a GPU outside the flow) go on into the next record
    staged = dm.training_record(path, prior=dict(first, stages=["1000 steps on a GPU"]))
    assert staged["stages"] == ["1000 steps on a GPU"]
    card = dm.model_card({"train": dict(staged, step=150)})
    assert "- Stage: 1000 steps on a GPU" in card and "It was trained in stages, not all of them necessarily" in card
    assert "It was trained in stages" not in dm.model_card({"train": dict(record, step=150)})
    # a start model made by the flow: its own run (its card's "UNet + PoseNet" line) becomes a Stage line after
    # its stages, so a second continuation still tells the first
    flow_run = dict(staged, steps_logged=150, backend="ray", workers=2, clips=64, first_loss=1.0, last_loss=0.75,
                    config=dict(batch_size=1, lr=1e-4, decay_steps=50, seed=6))
    chained = dm.training_record(path, prior=flow_run)
    assert chained["stages"] == [
        "1000 steps on a GPU",
        "150 steps through the train flow (Ray Train, 2 workers x batch 1, 64 clips, lr 0.0001, decaying to 0 over "
        "the last 50, train seed 6; 112 s of training; loss 1.0 -> 0.75, first and last 100 steps): the model this "
        "run continued"]
    assert "- Stage: 150 steps through the train flow" in dm.model_card({"train": dict(chained, step=150)})
    assert "decaying" not in dm.flow_run_stage(dict(flow_run, config=dict(lr=1e-4, seed=1)))


def test_copy_demo_model_keeps_an_existing_start(tmp_path):
    base, checkpoint = dm.save_demo_model(tmp_path / "shipped", dm.demo_components())
    summary = {"vae": {"psnr": 22.0}, "train": {"step": 1000, "train_seconds": 3000.0}}
    (tmp_path / "shipped" / "summary.json").write_text(json.dumps(summary))
    weights = checkpoint.read_bytes()
    start = dm.copy_demo_model(tmp_path / "shipped", tmp_path / "work" / "start")
    assert dm.demo_model_paths(start) == (start / "base", start / dm.SHIPPED_CHECKPOINT)
    assert (start / dm.SHIPPED_CHECKPOINT).read_bytes() == weights
    assert dm.prior_training(start) == summary
    # shipping a new model over the source must not change the start of a resumed run
    (tmp_path / "shipped" / dm.SHIPPED_CHECKPOINT).write_bytes(b"new")
    dm.copy_demo_model(tmp_path / "shipped", start)
    assert (start / dm.SHIPPED_CHECKPOINT).read_bytes() == weights
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["start"]
    assert dm.prior_training(tmp_path / "shipped" / "base") == {"vae": {}, "train": {}}
    (start / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json is not a readable JSON summary"):
        dm.prior_training(start)
    with pytest.raises(ModelFileError, match="no demo model"):
        dm.copy_demo_model(tmp_path / "nothing", tmp_path / "other")


def test_base_with_vae_swaps_only_the_vae(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    base, _ = dm.save_demo_model(tmp_path / "model", dm.demo_components())
    vae = AutoencoderKLTemporalDecoder.from_pretrained(base / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.5
    vae.save_pretrained(tmp_path / "vae-decoder")
    (tmp_path / "vae-decoder" / "metrics.json").write_text("{}")
    got = dm.base_with_vae(base, tmp_path / "vae-decoder", tmp_path / "work" / "base")
    assert got == tmp_path / "work" / "base"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in base.iterdir())
    assert sorted(p.name for p in (got / "vae").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (got / "unet" / "config.json").read_bytes() == (base / "unet" / "config.json").read_bytes()
    swapped = AutoencoderKLTemporalDecoder.from_pretrained(got / "vae")
    assert torch.equal(swapped.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["base"]  # no staging folder left
    # a re-run with the same VAE keeps what the first run made (its metrics.json does not count)
    made = (got / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    (tmp_path / "vae-decoder" / "metrics.json").write_text('{"step": 2}')
    assert dm.base_with_vae(base, tmp_path / "vae-decoder", got) == got
    assert (got / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == made
    # a VAE saved again with other weights (a decoder adapted anew) replaces the copy's VAE
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.25
    vae.save_pretrained(tmp_path / "vae-decoder")
    assert dm.base_with_vae(base, tmp_path / "vae-decoder", got) == got
    swapped = AutoencoderKLTemporalDecoder.from_pretrained(got / "vae")
    assert torch.equal(swapped.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["base"]  # nothing stale or staged left
    (tmp_path / "vae-decoder" / "config.json").unlink()
    with pytest.raises(ConfigError, match="holds no saved VAE"):
        dm.base_with_vae(base, tmp_path / "vae-decoder", got)


def test_ssim_torch_matches_the_metric():
    from mimicmotion.metrics import ssim

    a = _frames(3, 40, 48, seed=1)
    b = np.clip(a.astype(int) + np.random.default_rng(2).integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    got = float(dm.ssim_torch(dm.frames_to_tensor(a).double(), dm.frames_to_tensor(b).double()))
    assert got == pytest.approx(ssim(a, b), abs=1e-6)
    assert float(dm.ssim_torch(dm.frames_to_tensor(a), dm.frames_to_tensor(a))) == pytest.approx(1.0, abs=1e-6)


def test_decoder_only_training_keeps_the_latents():
    frames = _frames(8, 32, 32)
    vae = _tiny_vae()
    dm.pretrain_vae(vae, frames, steps=10, batch_size=4, lr=3e-3, crop=16, warmup_steps=2, log_every=10)
    images = dm.frames_to_tensor(frames)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
    before = dm.evaluate_vae(vae, frames)
    decoder = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    metrics = dm.pretrain_vae(vae, frames, steps=30, batch_size=4, lr=1e-3, crop=16, warmup_steps=2, log_every=10,
                              ssim_weight=0.5, train_encoder=False)
    with torch.no_grad():
        assert torch.equal(vae.encode(images).latent_dist.mode(), latents)
    assert any(not torch.equal(decoder[k], v) for k, v in vae.decoder.state_dict().items())
    assert metrics["ssim"] > before["ssim"], (before, metrics)
    assert all(p.requires_grad for p in vae.parameters())
    with pytest.raises(ConfigError, match="at least 11"):
        dm.pretrain_vae(vae, frames, steps=1, crop=8, ssim_weight=0.5)


def test_demo_model_flow_cli_passes_the_decoder_stage_options(monkeypatch):
    from flows import demo_model as flow_module

    calls = []
    monkeypatch.setattr(flow_module, "demo_model", lambda *a, **kw: calls.append((a, kw)) or {"evaluation": []})
    assert flow_module.main(["--work", "w", "--continue-from", "m", "--vae-decoder-steps", "3000",
                             "--vae-decoder-ssim-weight", "2", "--train-steps", "10", "--decay-steps", "10",
                             "--adapt-decoder-steps", "7", "--adapt-clips", "5", "--adapt-guidance", "1",
                             "--vae-continue-steps", "400", "--vae-continue-ssim-weight", "1.5",
                             "--device", "cuda", "--extra-train-videos", "64"]) == 0
    (args, kwargs), = calls
    assert args[:5] == ("w", 160, 0, 3000, 10)
    assert kwargs["continue_from"] == "m" and kwargs["vae_decoder_steps"] == 3000
    assert kwargs["vae_decoder_ssim_weight"] == 2.0 and kwargs["decay_steps"] == 10
    assert (kwargs["adapt_decoder_steps"], kwargs["adapt_clips"], kwargs["adapt_guidance"]) == (7, 5, 1.0)
    assert (kwargs["vae_continue_steps"], kwargs["vae_continue_ssim_weight"]) == (400, 1.5)
    assert kwargs["device"] == "cuda" and kwargs["extra_train_videos"] == 64


def test_check_continuation_refuses_a_work_folder_of_another_model(tmp_path):
    dm.save_demo_model(tmp_path / "a", dm.demo_components(seed=0))
    dm.save_demo_model(tmp_path / "b", dm.demo_components(seed=1))
    work = tmp_path / "work"
    dm.check_continuation(work, tmp_path / "a")  # nothing there yet
    dm.copy_demo_model(tmp_path / "a", work / "start")
    dm.check_continuation(work, tmp_path / "a")  # the same source: a re-run resumes
    with pytest.raises(ConfigError, match="already holds a continuation of another model.*fresh --work folder"):
        dm.check_continuation(work, tmp_path / "b")
    # b shipped from this work folder (the source of a re-run of the same command after --ship)
    dm.record_shipped(work, tmp_path / "b" / dm.SHIPPED_CHECKPOINT)
    dm.record_shipped(work, tmp_path / "b" / dm.SHIPPED_CHECKPOINT)  # noted once
    dm.check_continuation(work, tmp_path / "b")
    assert dm.shipped_digests(work) == {dm.checkpoint_digest(tmp_path / "b" / dm.SHIPPED_CHECKPOINT)}
    (work / dm.SHIPPED_RECORD).write_text("[]")
    with pytest.raises(ConfigError, match="shipped.json is not a readable record"):
        dm.check_continuation(work, tmp_path / "b")


def test_4x_demo_architecture_renders_and_trains():
    """downscale 4: the VAE's latents are 1/4 of the frame, the PoseNet and the UNet follow; the pipeline
    renders at the demo size and one training step runs; a PoseNet of the other factor is refused."""
    from mimicmotion.models.pose_net import PoseNet
    from mimicmotion.pipeline import MimicMotionPipeline
    from mimicmotion.training.trainer import TrainConfig, prepare_modules, training_step

    comps = dm.demo_components(seed=0, downscale=4)
    assert comps["pose_net"].downscale == 4 and comps["unet"].config.block_out_channels == (32, 64, 128)
    pipe = MimicMotionPipeline(**comps)
    assert pipe.vae_scale_factor == 4
    image = np.full((dm.DEMO_HEIGHT, dm.DEMO_WIDTH, 3), 128, np.uint8)
    poses = torch.zeros(3, 3, dm.DEMO_HEIGHT, dm.DEMO_WIDTH)
    from PIL import Image

    latents = pipe(Image.fromarray(image), poses, height=dm.DEMO_HEIGHT, width=dm.DEMO_WIDTH, tile_size=3,
                   tile_overlap=1, num_inference_steps=1, output_type="latent").frames
    assert latents.shape[-2:] == (dm.DEMO_HEIGHT // 4, dm.DEMO_WIDTH // 4)
    cfg = TrainConfig(height=dm.DEMO_HEIGHT, width=dm.DEMO_WIDTH, num_frames=2, steps=1, batch_size=1).validate()
    modules = prepare_modules(comps, cfg, "cpu")
    batch = {"pixels": torch.zeros(1, 3, 3, dm.DEMO_HEIGHT, dm.DEMO_WIDTH),
             "pose_images": torch.zeros(1, 3, 3, dm.DEMO_HEIGHT, dm.DEMO_WIDTH),
             "hand_mask": torch.zeros(1, 3, 1, dm.DEMO_HEIGHT // 4, dm.DEMO_WIDTH // 4)}
    assert torch.isfinite(training_step(modules, batch, cfg, torch.Generator().manual_seed(0))["loss"])
    with pytest.raises(ConfigError, match="hand_mask"):  # an 8x mask for a 4x VAE
        training_step(modules, dict(batch, hand_mask=torch.zeros(1, 3, 1, 24, 16)), cfg, torch.Generator())
    with pytest.raises(ConfigError, match="downscale=4"):
        MimicMotionPipeline(**dict(comps, pose_net=PoseNet(32)))
    with pytest.raises(ConfigError, match="downsamples by one of"):
        dm.demo_components(downscale=2)


def test_check_vae_downscale_refuses_another_architecture_in_a_used_work_folder(tmp_path):
    assert dm.check_vae_downscale(tmp_path / "vae", 4) == 4  # nothing saved yet
    dm.demo_components(downscale=4)["vae"].save_pretrained(tmp_path / "vae")
    assert dm.check_vae_downscale(tmp_path / "vae", 4) == 4
    with pytest.raises(ConfigError, match="downsamples by 4, not 8.*fresh --work"):
        dm.check_vae_downscale(tmp_path / "vae", 8)
    with pytest.raises(ConfigError, match="one of"):
        dm.check_vae_downscale(tmp_path / "none", 2)


@pytest.fixture
def faked_flow(tmp_path, monkeypatch):
    """The demo_model flow with its heavy stages (data, curate, VAE training, train, decoder pairs and adaptation,
    evaluate) faked, a shipped-like model folder to continue from, and the calls the stages got."""
    import shutil
    from pathlib import Path

    import flows.curate
    import flows.evaluate
    import flows.train
    import mimicmotion.synthetic
    from flows import demo_model as flow_module

    shipped = tmp_path / "shipped"
    dm.save_demo_model(shipped, dm.demo_components())
    earlier = {"step": 900, "ssim": 0.82, "ssim_weight": 0.5}
    (shipped / "summary.json").write_text(json.dumps({"vae": {"psnr": 21.0, "decoder": earlier},
                                                      "train": {"step": 10, "train_seconds": 5.0}}))
    calls = {}

    def fake_vae_stage(name):
        def stage(synth_dir, *args, **kwargs):
            source, out = (shipped / "base" / "vae", args[0]) if name == "pretrain" else (args[0], args[1])
            calls.setdefault(name, []).append((args, kwargs))
            shutil.copytree(source, out)
            return {"step": args[1] if name == "pretrain" else args[2], "record": kwargs.get("record")}
        return stage

    def fake_train(**kwargs):
        calls.setdefault("train", []).append(kwargs)
        metrics = Path(kwargs["run_dir"]) / "metrics.csv"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text("step,loss,step_time_s,data_time_s\n1,0.5,1.0,0.0\n")
        return {"model": kwargs["checkpoint"], "metrics": str(metrics)}

    monkeypatch.setattr(mimicmotion.synthetic, "generate_dataset",
                        lambda *a, **k: calls.setdefault("generate", []).append((a, k)))
    monkeypatch.setattr(flows.curate, "curate", lambda **k: calls.setdefault("curate", []).append(k))
    monkeypatch.setattr(flows.train, "train", fake_train)
    monkeypatch.setattr(flows.evaluate, "evaluate", lambda **k: calls.setdefault("evaluate", []).append(k) or {})
    monkeypatch.setattr(flow_module, "pretrain_vae_task", fake_vae_stage("pretrain"))
    monkeypatch.setattr(flow_module, "finetune_vae_decoder_task", fake_vae_stage("decoder"))
    monkeypatch.setattr(flow_module, "continue_vae_task", fake_vae_stage("continue"))

    no_validation = [False]  # True: the catalog's test split has no clips past the evaluated ones

    def fake_pairs(*args, **kwargs):
        calls.setdefault("pairs", []).append(args + ((kwargs,) if kwargs else ()))
        return None if kwargs.get("split") == "test" and no_validation[0] else args[3]

    def fake_adapt(pairs, vae_dir, out, *args, **kwargs):
        calls.setdefault("adapt", []).append((pairs, vae_dir, out, *args, kwargs))
        shutil.copytree(vae_dir, out)
        return {"step": args[0], "pairs": 3}

    monkeypatch.setattr(flow_module, "sample_decoder_pairs_task", fake_pairs)
    monkeypatch.setattr(flow_module, "adapt_decoder_task", fake_adapt)
    return dict(flow=flow_module.demo_model.fn, shipped=shipped, calls=calls, earlier=earlier,
                no_validation=no_validation)


def test_demo_model_flow_wires_the_decoder_stage(tmp_path, faked_flow):
    """Which VAE the decoder stage starts from, what the record keeps, which base folder training and
    evaluation get."""
    flow, shipped, calls, earlier = (faked_flow[k] for k in ("flow", "shipped", "calls", "earlier"))
    work = tmp_path / "continued"
    summary = flow(str(work), continue_from=str(shipped), vae_decoder_steps=30,
                                        vae_decoder_ssim_weight=2.0, train_steps=1)
    (args, kwargs), = calls["decoder"]
    assert args[:3] == (str(work / "start" / "base" / "vae"), str(work / "vae-decoder"), 30)
    assert kwargs == {"ssim_weight": 2.0, "record": {"continued_from": earlier}, "device": "cpu"}
    assert summary["vae"]["psnr"] == 21.0 and summary["vae"]["decoder"]["step"] == 30
    assert summary["vae"]["downscale"] == 8
    assert calls["train"][0]["base_model"] == str(work / "base") == calls["evaluate"][0]["base_model"]
    assert (work / "base" / "vae" / "config.json").is_file() and "pretrain" not in calls

    calls.clear()
    fresh = tmp_path / "fresh"
    summary = flow(str(fresh), vae_steps=20, vae_decoder_steps=30, train_steps=1)
    (args, kwargs), = calls["decoder"]
    assert args[:3] == (str(fresh / "vae"), str(fresh / "vae-decoder"), 30)
    assert kwargs == {"ssim_weight": 0.5, "record": None, "device": "cpu"}
    assert calls["train"][0]["base_model"] == str(fresh / "init" / "base") and not (fresh / "base").exists()
    assert "pairs" not in calls and "adapt" not in calls


def test_demo_model_flow_adds_extra_videos_to_the_training_split_only(tmp_path, faked_flow):
    """--extra-train-videos renders the next seed's videos with none held out, curates them with the others
    and sizes the latent cache for them; the test split and the default run stay as they were."""
    flow, calls = faked_flow["flow"], faked_flow["calls"]
    work = tmp_path / "more"
    summary = flow(str(work), vae_steps=20, train_steps=1, seed=3, extra_train_videos=384)
    (main_args, main_kw), (extra_args, extra_kw) = calls["generate"]
    assert main_args == (work / "synth", 160) and main_kw["seed"] == 3 and "test_fraction" not in main_kw
    assert extra_args == (work / "synth-extra", 384) and extra_kw["seed"] == 4 and extra_kw["test_fraction"] == 0.0
    assert (extra_kw["num_frames"], extra_kw["width"]) == (main_kw["num_frames"], main_kw["width"])
    assert calls["curate"][0]["inputs"] == [str(work / "synth" / "train"), str(work / "synth" / "test"),
                                           str(work / "synth-extra" / "train")]
    assert calls["train"][0]["config"]["latent_cache_frames"] == 96 * (160 + 384)
    assert summary["data"] == {"videos": 160, "seed": 3, "extra_train_videos": 384}
    assert "and 384 more training videos (seed 4)" in dm.model_card(summary)
    test_sql, test_params = dm.split_sql("test", first_clip_only=True, limit=16)
    assert (calls["evaluate"][0]["sql"], calls["evaluate"][0]["params"]) == (test_sql, test_params)

    calls.clear()
    summary = flow(str(tmp_path / "plain"), vae_steps=20, train_steps=1)
    (_, main_kw), = calls["generate"]
    assert len(calls["curate"][0]["inputs"]) == 2 and main_kw["seed"] == 0
    assert calls["train"][0]["config"]["latent_cache_frames"] == dm.DEMO_TRAIN_CONFIG["latent_cache_frames"]
    assert "more training videos" not in dm.model_card(summary)
    with pytest.raises(ConfigError, match="extra_train_videos must be an integer >= 0"):
        flow(str(tmp_path / "bad"), train_steps=1, extra_train_videos=-1)
    assert "latent_cache_from" not in calls["train"][0]["config"]


def test_demo_model_flow_starts_from_an_earlier_builds_latent_cache(tmp_path, faked_flow):
    """--latent-cache-from reaches the training config as an absolute folder; a missing one is refused before
    anything is generated."""
    flow, calls = faked_flow["flow"], faked_flow["calls"]
    earlier = tmp_path / "earlier" / "run" / "latent_cache"
    earlier.mkdir(parents=True)
    flow(str(tmp_path / "more"), vae_steps=20, train_steps=1, extra_train_videos=8,
         latent_cache_from=str(earlier / ".." / "latent_cache"))
    assert calls["train"][0]["config"]["latent_cache_from"] == [str(earlier.resolve())]
    calls.clear()
    with pytest.raises(ConfigError, match="latent_cache_from: .*missing is not a folder; give an earlier build's"):
        flow(str(tmp_path / "bad"), train_steps=1, latent_cache_from=str(tmp_path / "missing"))
    assert not calls and not (tmp_path / "bad").exists()


def test_demo_model_flow_refuses_a_second_continuation_in_one_work_folder(tmp_path, faked_flow, monkeypatch):
    """A continuation of another model in a used work folder is refused before any stage runs; the re-run of a
    shipped continuation (whose source is now the model it shipped) resumes."""
    flow, shipped, calls = (faked_flow[k] for k in ("flow", "shipped", "calls"))
    work = tmp_path / "continued"
    shipped_to = []
    monkeypatch.setattr(dm, "ship_model", lambda base, ckpt, card, **k: shipped_to.append(ckpt))
    flow(str(work), continue_from=str(shipped), train_steps=1, ship=True)
    # what shipping would have done: the source folder now holds the shipped checkpoint
    other = tmp_path / "other"
    dm.save_demo_model(other, dm.demo_components(seed=5))
    (shipped / dm.SHIPPED_CHECKPOINT).write_bytes((other / dm.SHIPPED_CHECKPOINT).read_bytes())
    dm.record_shipped(work, other / dm.SHIPPED_CHECKPOINT)  # as if the run had produced these weights
    calls.clear()
    flow(str(work), continue_from=str(shipped), train_steps=1)
    assert calls["train"]
    calls.clear()
    third = tmp_path / "third"
    dm.save_demo_model(third, dm.demo_components(seed=6))
    with pytest.raises(ConfigError, match="another model"):
        flow(str(work), continue_from=str(third), train_steps=1)
    assert calls == {}
    assert shipped_to and (work / dm.SHIPPED_RECORD).is_file()


def test_demo_model_flow_builds_the_4x_variant_and_keeps_a_continuation_s_architecture(tmp_path, faked_flow):
    flow, shipped, calls = (faked_flow[k] for k in ("flow", "shipped", "calls"))
    flow(str(tmp_path / "fresh4"), vae_steps=20, train_steps=1, vae_downscale=4)
    (args, kwargs), = calls["pretrain"]
    assert args[-1] == 4  # the pre-training stage builds the 4x VAE
    with pytest.raises(ConfigError, match="a continuation keeps its start model's"):
        flow(str(tmp_path / "cont"), continue_from=str(shipped), train_steps=1, vae_downscale=4)
    assert not (tmp_path / "cont").exists()


def test_demo_model_flow_adapts_the_decoder_of_a_finished_model(tmp_path, faked_flow):
    """train_steps 0 keeps the start model's UNet; the decoder is adapted to that model's samples and the
    evaluation uses the adapted base folder."""
    flow, shipped, calls = faked_flow["flow"], faked_flow["shipped"], faked_flow["calls"]
    (shipped / "metrics.csv").write_text("step,loss,step_time_s,data_time_s\n1,0.5,1.0,0.0\n")
    work = tmp_path / "adapted"
    summary = flow(str(work), continue_from=str(shipped), train_steps=0, adapt_decoder_steps=5, adapt_clips=3,
                   adapt_guidance=1.0, eval_steps=4)
    start_base, start_ckpt = str(work / "start" / "base"), str(work / "start" / dm.SHIPPED_CHECKPOINT)
    assert "train" not in calls
    validation = str(work / "decoder-pairs-validation")
    assert calls["pairs"] == [(str(work / "catalog"), start_base, start_ckpt, str(work / "decoder-pairs"), 3, 1.0, 4,
                               1000, "cpu", 16),  # the evaluation's frames (eval_frames)
                              # scored on the first clips of the 16 test videos after the 16 evaluated
                              (str(work / "catalog"), start_base, start_ckpt, validation, 16, 1.0, 4, 2000, "cpu", 16,
                               {"split": "test", "offset": 16})]
    assert calls["adapt"] == [(str(work / "decoder-pairs"), start_base + "/vae", str(work / "vae-adapted"), 5, 0,
                               {"device": "cpu", "held_out_dir": validation, "temporal": False})]
    (evaluated,) = calls["evaluate"]
    assert evaluated["base_model"] == str(work / "base-adapted") and evaluated["checkpoint"] == start_ckpt
    assert (work / "base-adapted" / "vae" / "config.json").is_file()
    # the start model's training record goes on with it (shipped again beside the weights)
    assert summary["train"] == {"step": 10, "train_seconds": 5.0, "model": start_ckpt,
                                "metrics": str(work / "start" / "metrics.csv")}
    assert summary["vae"]["adapted"] == {"step": 5, "pairs": 3, "guidance": 1.0, "sampler_steps": 4}
    assert "VAE decoder adapted to the UNet's own samples" in dm.model_card(summary)

    # without validation clips (none asked for, or the test split has none past the evaluated ones) every 16th
    # training pair is held out, as before
    for options, no_clips in ((dict(adapt_validation_clips=0), False), ({}, True)):
        calls.clear()
        faked_flow["no_validation"][0] = no_clips
        flow(str(tmp_path / f"adapted-{no_clips}"), continue_from=str(shipped), train_steps=0, adapt_decoder_steps=5,
             adapt_clips=3, eval_clips=8, **options)
        assert [c[-1] for c in calls["pairs"]] == ([16, {"split": "test", "offset": 8}] if no_clips else [16])
        assert calls["adapt"][0][-1] == {"device": "cpu", "held_out_dir": None, "temporal": False}
    faked_flow["no_validation"][0] = False
    # the temporal option reaches the adaptation
    calls.clear()
    flow(str(tmp_path / "adapted-temporal"), continue_from=str(shipped), train_steps=0, adapt_decoder_steps=5,
         adapt_clips=3, adapt_temporal=True)
    assert calls["adapt"][0][-1]["temporal"] is True
    calls.clear()
    with pytest.raises(ConfigError, match="adapt_validation_clips must be an integer >= 0"):
        flow(str(tmp_path / "refused"), continue_from=str(shipped), train_steps=0, adapt_decoder_steps=5,
             adapt_validation_clips=-1)
    assert not calls and not (tmp_path / "refused").exists()

    calls.clear()
    with pytest.raises(ConfigError, match="train_steps"):
        flow(str(tmp_path / "nothing"), train_steps=0)
    assert not calls


def test_demo_model_flow_continues_the_whole_vae_then_the_unet(tmp_path, faked_flow):
    """The whole VAE trains on from the start model's, then the UNet trains on its latents (both use the new base
    folder), the decoder is adapted to the new model; an adapted decoder's record is dropped with that decoder.
    Without UNet steps the new latents would meet a UNet that never saw them: refused before anything runs."""
    flow, shipped, calls = faked_flow["flow"], faked_flow["shipped"], faked_flow["calls"]
    record = json.loads((shipped / "summary.json").read_text())
    record["vae"]["adapted"] = {"step": 1500}
    (shipped / "summary.json").write_text(json.dumps(record))
    work = tmp_path / "continued"
    summary = flow(str(work), continue_from=str(shipped), vae_continue_steps=40, vae_continue_ssim_weight=1.5,
                   train_steps=1, adapt_decoder_steps=5, adapt_clips=3)
    (args, kwargs), = calls["continue"]
    assert args[:3] == (str(work / "start" / "base" / "vae"), str(work / "vae-continued"), 40)
    assert kwargs == {"ssim_weight": 1.5, "record": None, "device": "cpu"}
    assert calls["train"][0]["base_model"] == str(work / "base") and "decoder" not in calls
    assert calls["adapt"][0][1:3] == (str(work / "base" / "vae"), str(work / "vae-adapted"))
    assert calls["evaluate"][0]["base_model"] == str(work / "base-adapted")
    assert summary["vae"]["continued"]["step"] == 40 and summary["vae"]["adapted"]["step"] == 5
    assert summary["vae"]["decoder"] == faked_flow["earlier"]
    assert "Whole VAE (encoder too) trained on" in dm.model_card(summary)

    calls.clear()
    for options in (dict(continue_from=str(shipped), train_steps=0), dict(train_steps=1)):
        with pytest.raises(ConfigError, match="vae_continue_steps"):
            flow(str(tmp_path / "refused"), vae_continue_steps=40, **options)
    assert not calls and not (tmp_path / "refused").exists()


def test_demo_model_flow_runs_every_stage_on_the_device_asked_for(tmp_path, faked_flow, monkeypatch):
    """--device reaches the VAE stages, the decoder pairs and adaptation, the evaluation, and the train flow (as
    use_gpu); a device this machine lacks is refused before anything runs."""
    flow, shipped, calls = faked_flow["flow"], faked_flow["shipped"], faked_flow["calls"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    flow(str(tmp_path / "gpu"), continue_from=str(shipped), vae_continue_steps=4, train_steps=1,
         adapt_decoder_steps=2, adapt_clips=3, device="cuda")
    assert calls["continue"][0][1]["device"] == "cuda" and calls["pairs"][0][-2] == "cuda"
    assert calls["adapt"][0][-1]["device"] == "cuda" and calls["evaluate"][0]["device"] == "cuda"
    assert calls["pairs"][1][-3] == "cuda"  # the validation pairs too
    assert calls["train"][0]["use_gpu"] is True

    calls.clear()
    flow(str(tmp_path / "fresh"), vae_steps=3, train_steps=1, device="cuda:0")
    assert calls["pretrain"][0][0][-2:] == ("cuda:0", 8) and calls["train"][0]["use_gpu"] is True

    calls.clear()
    for device, message in (("cuda:1", "has 1 CUDA GPU"), ("gpu", "cpu, cuda or cuda:N")):
        with pytest.raises(ConfigError, match=message):
            flow(str(tmp_path / "refused"), train_steps=1, device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        flow(str(tmp_path / "refused"), train_steps=1, device="cuda")
    assert not calls and not (tmp_path / "refused").exists()


def test_check_device_accepts_the_cpu_and_existing_gpus(monkeypatch):
    assert dm.check_device("cpu") == "cpu" and dm.check_device(" cpu ") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dm.check_device("cuda") == "cuda" and dm.check_device("cuda:1") == "cuda:1"
    for bad in ("cuda:2", "cuda:x", "cuda:0:1", "mps"):
        with pytest.raises(ConfigError):
            dm.check_device(bad)


def _soft_pairs(vae, count, seed, frames_per_pair=9):
    """Decoder pairs whose latents are the encoder's shrunk towards zero: what an unsure UNet leaves."""
    pairs = []
    for i in range(count):
        frames = _frames(frames_per_pair, 32, 32, seed=seed + i)
        with torch.no_grad():
            latents = vae.encode(dm.frames_to_tensor(frames)).latent_dist.mode() * vae.config.scaling_factor
        pairs.append(dict(latents=(0.4 * latents).numpy(), frames=frames))
    return pairs


def test_adapt_decoder_learns_the_samples_and_keeps_the_encoder():
    vae = _tiny_vae()
    dm.pretrain_vae(vae, _frames(8, 32, 32), steps=20, batch_size=4, lr=3e-3, crop=16, warmup_steps=2, log_every=10)
    assert dm._outer_taps_zero(vae)  # pre-trained on single frames: held frame-wise
    pairs, held = _soft_pairs(vae, 4, seed=0), _soft_pairs(vae, 2, seed=20)
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    before = dm.pair_scores(vae, held, chunk=4)
    logged = []
    metrics = dm.adapt_decoder(vae, pairs, steps=60, crop=None, lr=2e-3, warmup_steps=2, chunk=4, held_out=held,
                               log_every=30, log=logged.append)
    assert metrics["before"] == before and [m["step"] for m in logged] == [30, 60]
    assert metrics["after"]["psnr"] > before["psnr"] + 1.0, metrics
    assert metrics["after"]["ssim"] > before["ssim"], metrics
    assert all(torch.equal(encoder[k], v) for k, v in vae.encoder.state_dict().items())
    assert dm._outer_taps_zero(vae) and all(p.requires_grad for p in vae.parameters())


def test_adapt_decoder_temporal_trains_the_time_taps():
    """temporal=True releases the frame-wise decoder's outer time taps: they train from zero, and the card says so."""
    vae = _tiny_vae()
    dm.pretrain_vae(vae, _frames(8, 32, 32), steps=10, batch_size=4, lr=3e-3, crop=16, warmup_steps=2, log_every=10)
    assert dm._outer_taps_zero(vae)
    metrics = dm.adapt_decoder(vae, _soft_pairs(vae, 2, seed=0), steps=5, crop=None, lr=2e-3, warmup_steps=1, chunk=4,
                               temporal=True)
    assert metrics["temporal"] is True and not dm._outer_taps_zero(vae)
    line = dm._adapted_line(dict(metrics, guidance=2.0))
    assert "time taps trained" in line
    assert "time taps" not in dm._adapted_line(dict(metrics, temporal=False, guidance=2.0))


def test_adapt_decoder_rejects_bad_pairs():
    vae = _tiny_vae()
    (good,) = _soft_pairs(vae, 1, seed=0)
    bad_frames = dict(good, frames=good["frames"].astype(np.float32))
    for pairs, match in (([], "at least one"), ([bad_frames], "decoder pair 0"),
                         ([dict(good, latents=good["latents"][:, :3])], "decoder pair 0"),
                         ([dict(latents=good["latents"][:3], frames=good["frames"][:3])], "full chunk")):
        with pytest.raises(ConfigError, match=match):
            dm.adapt_decoder(vae, pairs, steps=1, chunk=4)
    with pytest.raises(ConfigError, match="encoder_share"):
        dm.adapt_decoder(vae, [good], steps=1, chunk=4, encoder_share=1.5)


def test_load_decoder_pairs_skips_partial_files(tmp_path):
    with pytest.raises(ConfigError, match="no decoder pairs"):
        dm.load_decoder_pairs(tmp_path)
    for name in ("b", "a", ".c.tmp"):
        np.savez(tmp_path / f"{name}.npz", latents=np.full((2, 4, 1, 1), ord(name[-1]), np.float32),
                 frames=np.zeros((2, 8, 8, 3), np.uint8))
    pairs = dm.load_decoder_pairs(tmp_path)
    assert [float(p["latents"][0, 0, 0, 0]) for p in pairs] == [ord("a"), ord("b")]
    # with a pairs.json, only the clips its latest request asked for (a re-run asked for fewer)
    digest_all = dm.pairs_digest(tmp_path)
    (tmp_path / "pairs.json").write_text(json.dumps({"identity": {}, "seeds": {"a": 0, "b": 1}, "clips": ["b"]}))
    assert [float(p["latents"][0, 0, 0, 0]) for p in dm.load_decoder_pairs(tmp_path)] == [ord("b")]
    assert dm.pairs_digest(tmp_path) != digest_all
    (tmp_path / "pairs.json").write_text(json.dumps({"identity": {}, "seeds": {}}))  # no clips recorded: all
    assert len(dm.load_decoder_pairs(tmp_path)) == 2 and dm.pairs_digest(tmp_path) == digest_all
    (tmp_path / "pairs.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a readable record"):
        dm.load_decoder_pairs(tmp_path)


def test_decoder_pairs_of_unknown_origin_are_set_aside(tmp_path):
    """Pairs written before pairs.json existed (or beside an unreadable one) are not trusted: they are moved to
    stale-unknown-1/, and an unreadable record is an error that names the file."""
    base, ckpt, out = tmp_path / "base", tmp_path / "model.safetensors", tmp_path / "pairs"
    (base / "vae").mkdir(parents=True)
    (base / "vae" / "config.json").write_text("{}")
    ckpt.write_bytes(b"weights")
    out.mkdir()
    np.savez(out / "old.npz", latents=np.zeros((2, 4, 1, 1), np.float32), frames=np.zeros((2, 8, 8, 3), np.uint8))
    messages = []
    dm.write_decoder_pairs("unused-catalog", base, ckpt, [], out, steps=2, guidance=2.0, log=messages.append)
    assert (out / "stale-unknown-1" / "old.npz").is_file() and not (out / "old.npz").exists()
    assert "moved to" in messages[0]
    manifest = json.loads((out / "pairs.json").read_text())
    assert manifest["seeds"] == {} and manifest["identity"] == dm.decoder_pairs_identity(
        base, ckpt, steps=2, guidance=2.0, max_frames=24, resolution=dm.DEMO_RESOLUTION)
    # the same model and settings again: nothing moves
    dm.write_decoder_pairs("unused-catalog", base, ckpt, [], out, steps=2, guidance=2.0, log=messages.append)
    assert len(messages) == 1
    # another base model (its files differ) gives another identity
    (base / "vae" / "config.json").write_text('{"x": 1}')
    assert dm.decoder_pairs_identity(base, ckpt, steps=2, guidance=2.0, max_frames=24,
                                     resolution=128)["base"] != manifest["identity"]["base"]
    (out / "pairs.json").write_text("{not json")
    with pytest.raises(ConfigError, match="pairs.json is not a readable record"):
        dm.write_decoder_pairs("unused-catalog", base, ckpt, [], out, steps=2, guidance=2.0)


def test_adapt_decoder_task_keeps_only_an_adaptation_of_the_same_request(tmp_path, monkeypatch):
    """The flow's adapt-decoder task reuses a saved adaptation only for the same VAE, pairs and settings; one
    from other settings or pairs is moved to <out>-replaced-<n> (not lost) and the decoder adapted again."""
    import json
    import logging

    from flows import demo_model as flow_module

    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    for i, pair in enumerate(_soft_pairs(vae, 2, seed=0, frames_per_pair=8)):
        np.savez(pairs_dir / f"clip{i}.npz", **pair)
    runs = []

    def fake_adapt(vae, pairs, *, steps, seed, held_out, temporal, log):
        runs.append((steps, len(pairs), len(held_out)) + (("temporal",) if temporal else ()))
        return dict(step=steps)

    monkeypatch.setattr(dm, "adapt_decoder", fake_adapt)
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))
    out = tmp_path / "vae-adapted"
    adapt = flow_module.adapt_decoder_task.fn
    first = adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 2, 0, held_out_every=2)
    assert runs == [(2, 1, 1)] and first["request"]["pairs"] == dm.pairs_digest(pairs_dir)
    assert adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 2, 0, held_out_every=2) == first
    assert len(runs) == 1  # same request: kept
    third = adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_every=2)
    assert runs[-1] == (3, 1, 1) and third["step"] == 3
    assert json.loads((tmp_path / "vae-adapted-replaced-1" / "metrics.json").read_text()) == first
    np.savez(pairs_dir / "clip2.npz", **_soft_pairs(vae, 1, seed=5, frames_per_pair=8)[0])
    adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_every=2)
    assert runs[-1] == (3, 1, 2) and (tmp_path / "vae-adapted-replaced-2" / "config.json").is_file()
    assert (out / "config.json").is_file()

    # scored on other pairs (validation clips): adapted on all of pairs_dir, the held-out folder is part of the
    # request, and the record and the model card say which clips scored it
    held_dir = tmp_path / "validation"
    held_dir.mkdir()
    np.savez(held_dir / "clip9.npz", **_soft_pairs(vae, 1, seed=9, frames_per_pair=8)[0])
    validated = adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_dir=str(held_dir))
    assert runs[-1] == (3, 3, 1) and validated["held_out_source"] == "validation"
    assert validated["request"]["held_out_pairs"] == dm.pairs_digest(held_dir)
    assert adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_dir=str(held_dir)) == validated
    assert len(runs) == 4
    np.savez(held_dir / "clip10.npz", **_soft_pairs(vae, 1, seed=10, frames_per_pair=8)[0])
    adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_dir=str(held_dir))
    assert runs[-1] == (3, 3, 2)
    card = dm.model_card({"vae": {"adapted": dict(validated, pairs=3, held_out=1, guidance=2.0)}})
    assert "the samples of 1 validation clips (test videos the evaluation leaves out) decode at" in card
    card = dm.model_card({"vae": {"adapted": dict(first, pairs=1, held_out=1, guidance=2.0)}})
    assert "the samples of 1 held-out clips of training videos decode at" in card
    # a temporal adaptation is another request: the frame-wise one is set aside and the decoder adapted again;
    # a frame-wise request keeps its earlier form (no "temporal" key), so older saved adaptations stay current
    assert "temporal" not in validated["request"]
    temporal = adapt(str(pairs_dir), str(tmp_path / "vae"), str(out), 3, 0, held_out_dir=str(held_dir), temporal=True)
    assert runs[-1] == (3, 3, 2, "temporal") and temporal["request"]["temporal"] is True


def test_sample_decoder_pairs_task_samples_the_clips_of_the_split_asked_for(tmp_path, monkeypatch):
    """The pairs task selects the first clips of the split from the offset on, and returns None (nothing
    written) when there are none."""
    import logging
    from pathlib import Path

    import mimicmotion.evaluation
    from flows import demo_model as flow_module

    asked, written = [], []
    monkeypatch.setattr(mimicmotion.evaluation, "select_clips",
                        lambda catalog, sql, params: asked.append((sql, params)) or (["c1"] if params["limit"] > 2
                                                                                     else []))
    monkeypatch.setattr(dm, "write_decoder_pairs", lambda *a, **k: written.append((a, k)) or Path(a[4]))
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("test"))
    sample = flow_module.sample_decoder_pairs_task.fn
    out = sample("cat", "base", "ckpt", str(tmp_path / "p"), 4, 2.0, 10, 7, split="test", offset=16)
    assert out == str(tmp_path / "p") and asked[-1] == dm.split_sql("test", True, 4, offset=16)
    assert written[-1][0][3] == ["c1"] and written[-1][1]["seed"] == 7
    assert sample("cat", "base", "ckpt", str(tmp_path / "q"), 2, 2.0, 10, 7, split="test", offset=16) is None
    assert len(written) == 1 and asked[-1] == dm.split_sql("test", True, 2, offset=16)
    sample("cat", "base", "ckpt", str(tmp_path / "r"), 3, 2.0, 10, 7)
    assert asked[-1] == dm.split_sql("train", True, 3)


def test_a_saved_vae_stage_of_another_step_count_is_refused(tmp_path):
    """A re-run asking a VAE stage for other steps than its work folder holds is an error naming the folder
    (later stages were built on it), not a silent reuse; the same steps reuse it without training."""
    import json

    from flows import demo_model as flow_module

    out = tmp_path / "vae"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.json").write_text(json.dumps({"step": 3000, "psnr": 28.0}))
    never = lambda: pytest.fail("a saved stage was trained again")  # noqa: E731
    kwargs = dict(set_scale=True, batch_seed=0)
    assert flow_module._train_vae("no-synth", out, never, 3000, 0, "vae", **kwargs)["psnr"] == 28.0
    with pytest.raises(ConfigError, match=r"vae stage trained 3000 steps, but this run asks for 4000"):
        flow_module._train_vae("no-synth", out, never, 4000, 0, "vae", **kwargs)
