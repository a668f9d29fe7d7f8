"""The training loop on the tiny model (CPU, float32): conditioning identical to the sampler's, a
deterministic step, the loss going down, frozen parts staying frozen, exact resume after a crash,
checkpoints that load weights-only and render with load_pipeline, validation renders, metrics and the
loss curve, and the configuration errors."""
import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.tiny import save_tiny_model, tiny_components
from mimicmotion.training import trainer as tr
from mimicmotion.training.trainer import (MODEL_FILE, RAW_MODEL_FILE, STATE_FILE, Denoiser, LatentCache, TrainConfig,
                                          Trainer, clip_latents, config_differences, frame_keys,
                                          latest_checkpoint, load_train_state, prepare_modules, train, training_step)

H, W, F = 64, 32, 2  # training size (multiple of the tiny UNet's 16) and clip frames after the reference
SIZE = dict(height=H, width=W, num_frames=F)


@pytest.fixture(autouse=True)
def one_thread():
    # CPU reductions depend on the thread count: fix it so that runs compare bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_item(seed: int, hands: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, 3, H, W), generator=g) * 2 - 1
    drift = torch.linspace(0, 0.3, 1 + F).view(-1, 1, 1, 1)
    pixels = (base + drift * torch.rand((1, 3, 1, 1), generator=g)).clamp(-1, 1)
    pose = torch.full((1 + F, 3, H, W), -1.0)
    pose[:, :, 20:40, 10:20] = 1.0
    mask = torch.zeros((1 + F, 1, H // 8, W // 8))
    if hands:
        mask[:, :, 2:4, 1:3] = 1.0
    return {"pixels": pixels.float(), "pose_images": pose, "hand_mask": mask, "clip_id": f"clip{seed}",
            "source_frames": torch.arange(1 + F)}


class ListDataset(torch.utils.data.Dataset):
    """In-memory items with TrainingClips' interface: an epoch-dependent order."""

    def __init__(self, items):
        self.items = items
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        order = np.random.default_rng([7, self.epoch]).permutation(len(self.items))
        return self.items[int(order[i])]


def batch_of(items):
    from mimicmotion.training.dataset import collate

    return collate(items)


def config(**kw):
    values = dict(SIZE, steps=4, batch_size=2, lr=1e-3, warmup_steps=2, seed=3, checkpoint_every=2)
    values.update(kw)
    return TrainConfig(**values).validate()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value,words", [
    ("steps", 0, "steps must be an integer >= 1"),
    ("batch_size", 1.5, "batch_size"),
    ("lr", 0.0, "lr must be"),
    ("lr", float("nan"), "lr must be"),
    ("mixed_precision", "fp8", "mixed_precision must be one of no, bf16, fp16"),
    ("optimizer", "sgd", "optimizer must be one of adamw, adamw8bit"),
    ("trainable", "unet", "trainable must be one of all, pose_temporal"),
    ("ema_decay", 1.0, "ema_decay must be strictly between 0 and 1"),
    ("condition_dropout", 0.5, "condition_dropout"),
    ("hand_weight", 0, "hand_weight"),
    ("height", 60, "height must be a multiple of 8"),
    ("grad_clip", -1.0, "grad_clip"),
    ("gradient_checkpointing", "yes", "gradient_checkpointing must be true or false"),
    ("reference", "last", "reference must be one of random, first"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("decay_steps", 1001, r"decay_steps must be an integer in \[0, 1000\]"),
])
def test_bad_config_names_the_field(field, value, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**{field: value}).validate()


def test_config_round_trip_and_unknown_keys():
    cfg = config(ema_decay=0.99)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown training setting.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-5})
    assert TrainConfig().lr == 1e-5 and TrainConfig().warmup_steps == 500 and TrainConfig().hand_weight == 10


def test_adamw8bit_without_bitsandbytes_is_a_clear_error():
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="bitsandbytes"):
        tr.make_optimizer(config(optimizer="adamw8bit"), [torch.nn.Parameter(torch.zeros(2))])


def test_fp16_on_cpu_and_size_for_the_unet_are_refused():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        prepare_modules(tiny_components(0), config(mixed_precision="fp16"), "cpu")
    with pytest.raises(ConfigError, match="multiples of 16"):
        prepare_modules(tiny_components(0), config(height=72), "cpu")


def test_warmup_and_seeds():
    assert [tr.lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr.lr_factor(0, 0) == 1.0
    # decay: the last 4 of 10 steps fall linearly; warm-up and decay overlapping take the smaller factor
    assert [tr.lr_factor(s, 2, 10, 4) for s in range(10)] == [0.5] + [1.0] * 6 + [0.75, 0.5, 0.25]
    assert [tr.lr_factor(s, 4, 4, 4) for s in range(4)] == [0.25, 0.5, 0.5, 0.25]
    assert tr.lr_factor(0, 0, 10, 0) == 1.0
    seeds = {tr.rank_seed(s, r) for s in (0, 1) for r in range(4)}
    assert len(seeds) == 8 and tr.rank_seed(5, 1) == tr.rank_seed(5, 1)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_decay_lowers_the_trainer_lr_and_old_checkpoints_still_resume():
    cfg = config(steps=4, warmup_steps=0, decay_steps=3, lr=1e-3, condition_dropout=0.0)
    trainer = Trainer(prepare_modules(tiny_components(0), cfg, "cpu"), cfg)
    batch = batch_of([make_item(1), make_item(2)])
    lrs = [trainer.train_step(batch)["lr"] for _ in range(4)]
    assert lrs == pytest.approx([1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])
    # a checkpoint written before decay_steps existed ran with the default: it resumes, a decay does not
    saved = config().to_dict()
    del saved["decay_steps"]
    assert config_differences(saved, config()) == []
    assert config_differences(saved, config(decay_steps=2)) == ["decay_steps: checkpoint 0, now 2"]


def test_temporal_parameter_names():
    assert tr.is_temporal_parameter("down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q.weight")
    assert tr.is_temporal_parameter("down_blocks.0.resnets.0.temporal_res_block.conv1.weight")
    assert tr.is_temporal_parameter("up_blocks.1.attentions.0.time_mixer.mix_factor")
    assert tr.is_temporal_parameter("down_blocks.0.attentions.0.time_pos_embed.linear_1.bias")
    assert not tr.is_temporal_parameter("down_blocks.0.resnets.0.spatial_res_block.time_emb_proj.weight")
    assert not tr.is_temporal_parameter("time_embedding.linear_1.weight")
    assert not tr.is_temporal_parameter("conv_in.weight")


# ---------------------------------------------------------------------------------------------- the step
def test_conditioning_matches_the_sampler():
    from PIL import Image

    from mimicmotion.pipeline import MimicMotionPipeline

    comps = tiny_components(0)
    pipe = MimicMotionPipeline(**comps)
    image = (torch.rand((H, W, 3), generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    expected = pipe.encode_clip(Image.fromarray(image), "cpu")
    got = tr.clip_embeddings(comps["image_encoder"], comps["feature_extractor"], pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    expected = pipe.encode_vae(Image.fromarray(image), H, W, 0.02, torch.Generator().manual_seed(5), "cpu")
    got = tr.condition_latents(comps["vae"], pixels, 0.02, torch.Generator().manual_seed(5))
    # same pixels, same noise; two VAE forward passes may round differently (seen: 1.6e-6 on 1 of 128 values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    ids = tr.added_time_ids(2, TrainConfig(fps=7, motion_bucket_id=127, noise_aug=0.02), "cpu")
    # what pipe(fps=7, motion_bucket_id=127, noise_aug_strength=0.02) feeds: fps - 1 first
    assert torch.equal(ids, pipe._time_ids(7 - 1, 127, 0.02, torch.float32, "cpu"))


def test_unconditional_samples_get_no_pose_like_the_sampler():
    comps = tiny_components(0)
    with torch.no_grad():  # a PoseNet with non-zero output, so that the pose would show
        comps["pose_net"].final_proj.weight.normal_()
    denoiser = Denoiser(comps["unet"], comps["pose_net"])
    g = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 1 + F, 8, H // 8, W // 8), generator=g)
    emb = torch.randn((2, 1, 32), generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.0]] * 2)
    poses = torch.rand((2, 1 + F, 3, H, W), generator=g) * 2 - 1
    t = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        out = denoiser(sample, t, emb, ids, poses, torch.tensor([True, False]))
        plain = comps["unet"](sample[1:], t[1:], encoder_hidden_states=emb[1:], added_time_ids=ids[1:]).sample
        posed = comps["unet"](sample[:1], t[:1], encoder_hidden_states=emb[:1], added_time_ids=ids[:1],
                              pose_latents=comps["pose_net"](poses[0])).sample
    torch.testing.assert_close(out[1:], plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:1], posed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:1], comps["unet"](sample[:1], t[:1], encoder_hidden_states=emb[:1],
                                                     added_time_ids=ids[:1]).sample.detach(), atol=1e-4)


def test_training_step_is_deterministic_and_weights_hands():
    cfg = config(condition_dropout=0.0)
    modules = prepare_modules(tiny_components(0), cfg, "cpu")
    batch = batch_of([make_item(1), make_item(2, hands=False)])
    runs = [training_step(modules, batch, cfg, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert runs[0]["loss"].item() == runs[1]["loss"].item()
    assert runs[0]["loss"].requires_grad and not runs[0]["hand_loss"].requires_grad
    assert math.isfinite(runs[0]["hand_loss"].item())
    other = training_step(modules, batch, cfg, torch.Generator().manual_seed(10))
    assert other["loss"].item() != runs[0]["loss"].item()
    # hand_weight 1 removes the amplification: the loss drops when the hand cells are worse than average
    plain = training_step(modules, batch, config(condition_dropout=0.0, hand_weight=1.0),
                          torch.Generator().manual_seed(9))
    assert plain["hand_loss"].item() == pytest.approx(runs[0]["hand_loss"].item())
    assert plain["loss"].item() != runs[0]["loss"].item()
    no_hands = training_step(modules, batch_of([make_item(1, False), make_item(2, False)]), cfg,
                             torch.Generator().manual_seed(9))
    assert math.isnan(no_hands["hand_loss"].item())
    with pytest.raises(ConfigError, match="batch\\['pixels'\\] must be a tensor"):
        training_step(modules, {**batch, "pixels": batch["pixels"][:, :2]}, cfg, torch.Generator())


def test_latent_cache_gives_the_same_latents_and_losses():
    cfg = config(condition_dropout=0.0)
    modules = prepare_modules(tiny_components(0), cfg, "cpu")
    batch = batch_of([make_item(1), make_item(2)])
    frames = batch["pixels"]
    keys = frame_keys(batch)
    assert keys[:2] == [("clip1", 0), ("clip1", 1)] and keys[1 + F] == ("clip2", 0) and len(keys) == 2 * (1 + F)
    plain = clip_latents(modules.vae, frames, torch.Generator().manual_seed(4), chunk=3)
    cache = LatentCache(max_frames=5)  # room for some frames only: the rest are encoded every time
    for expect_hits in (0, 5):
        cached = clip_latents(modules.vae, frames, torch.Generator().manual_seed(4), 3, cache, keys)
        torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
        assert cache.hits == expect_hits and len(cache) == 5
    # the same noise draws as without the cache, and other draws with another seed
    other = clip_latents(modules.vae, frames, torch.Generator().manual_seed(5), 3, cache, keys)
    assert not torch.allclose(other, plain, atol=1e-3)
    with pytest.raises(ConfigError, match="one key per frame"):
        clip_latents(modules.vae, frames, torch.Generator(), 3, cache, keys[:-1])
    with pytest.raises(ConfigError, match="clip_id and source_frames"):
        frame_keys({"pixels": frames})
    with pytest.raises(ConfigError, match="max_frames >= 1"):
        LatentCache(0)
    # a training step with the cache: the same loss, and a run can switch it on when it resumes
    with_cache = prepare_modules(tiny_components(0), config(condition_dropout=0.0, latent_cache_frames=64), "cpu")
    losses = [training_step(m, batch, cfg, torch.Generator().manual_seed(9))["loss"].item()
              for m in (modules, with_cache, with_cache)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == losses[1]
    assert len(with_cache.latent_cache) == 2 * (1 + F) and with_cache.latent_cache.hits == 2 * (1 + F)
    assert config_differences(config().to_dict(), config(latent_cache_frames=64)) == []


class CountingVAE(torch.nn.Module):
    """A VAE that counts the frames it encodes (the latent cache's misses)."""

    def __init__(self, vae):
        super().__init__()
        self.vae, self.config, self.dtype, self.encoded = vae, vae.config, vae.dtype, 0

    def encode(self, frames):
        self.encoded += frames.shape[0]
        return self.vae.encode(frames)


def test_latent_cache_saves_and_loads_what_it_encoded(tmp_path, caplog):
    vae = CountingVAE(prepare_modules(tiny_components(0), config(), "cpu").vae)
    frames = torch.rand((6, 3, H, W)) * 2 - 1
    keys = [("clip a", k) for k in range(3)] + [("clip|b", k) for k in range(3)]
    identity = {"encoder": tr.encoder_digest(vae.vae), "size": f"{H}x{W}"}
    cache = LatentCache(max_frames=10)
    mean, std = cache.posteriors(vae, frames[:4], keys[:4], 3)
    assert cache.save(tmp_path / "a.safetensors", identity) == 4
    assert cache.save(tmp_path / "empty.safetensors", identity) == 0  # nothing new: no file
    cache.posteriors(vae, frames, keys, 3)  # two more frames encoded, four from memory
    assert vae.encoded == 6 and cache.save(tmp_path / "b.safetensors", identity) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]

    fresh = LatentCache(max_frames=10)
    assert fresh.load(tmp_path, identity) == 6
    again_mean, again_std = fresh.posteriors(vae, frames[:4], keys[:4], 3)
    assert vae.encoded == 6 and fresh.hits == 4  # nothing encoded again
    assert torch.equal(again_mean, mean) and torch.equal(again_std, std)
    assert fresh.save(tmp_path / "c.safetensors", identity) == 0  # loaded frames are not written again
    assert LatentCache(max_frames=5).load(tmp_path, identity) == 5  # room for 5

    # another VAE encoder's posteriors are not used; a damaged file is skipped with a warning
    other = {**identity, "encoder": tr.encoder_digest(prepare_modules(tiny_components(1), config(), "cpu").vae)}
    assert other["encoder"] != identity["encoder"]
    (tmp_path / "d.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING", logger="mimicmotion.training.trainer"):
        assert LatentCache(max_frames=10).load(tmp_path, other) == 0
        assert LatentCache(max_frames=10).load(tmp_path, identity) == 6
    assert "another VAE encoder or training size" in caplog.text and "d.safetensors is unreadable" in caplog.text
    assert LatentCache(max_frames=10).load(tmp_path / "missing", identity) == 0
    # two ranks: each picks up what the other wrote since, and reads no file twice
    rank0, rank1 = LatentCache(max_frames=10), LatentCache(max_frames=10)
    rank0.posteriors(vae, frames[:2], keys[:2], 3)
    rank1.posteriors(vae, frames[1:3], keys[1:3], 3)
    rank0.save(tmp_path / "ranks" / "rank0.safetensors", identity)
    rank1.save(tmp_path / "ranks" / "rank1.safetensors", identity)
    assert rank0.load(tmp_path / "ranks", identity) == 1 and rank1.load(tmp_path / "ranks", identity) == 1
    assert len(rank0) == len(rank1) == 3 and rank0.load(tmp_path / "ranks", identity) == 0

    # per clip: frames written with a clip's fingerprint are read by a run that fingerprints it the same
    # (another folder, more clips), never by one that does not, nor for clips it does not train on
    prints = {"clip a": "A1", "clip|b": "B1"}
    writer = LatentCache(max_frames=10)
    writer.posteriors(vae, frames, keys, 3)
    writer.save(tmp_path / "prints" / "run1.safetensors", identity, prints)
    assert LatentCache(max_frames=10).load(tmp_path / "prints", identity, clips=prints) == 6
    assert LatentCache(max_frames=10).load(tmp_path / "prints", identity, clips={"clip a": "A1", "c": "C"}) == 3
    assert LatentCache(max_frames=10).load(tmp_path / "prints", identity, clips={"clip a": "A2"}) == 0
    assert LatentCache(max_frames=10).load(tmp_path / "prints", identity) == 0  # unknown clips: not these
    assert LatentCache(max_frames=10).load(tmp_path, identity, clips=prints) == 0  # written as unknown
    with pytest.raises(ConfigError, match="set latent_cache_frames > 0"):
        config(persist_latent_cache=True)
    with pytest.raises(ConfigError, match="persist_latent_cache must be true or false"):
        config(latent_cache_frames=8, persist_latent_cache="yes")
    with pytest.raises(ConfigError, match="latent_cache_from must be a list of folders"):
        config(latent_cache_frames=8, latent_cache_from=str(tmp_path))
    with pytest.raises(ConfigError, match="is not a folder; give the latent_cache folder of an earlier run"):
        config(latent_cache_frames=8, latent_cache_from=[str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="latent_cache_from needs the in-memory cache"):
        config(latent_cache_from=[str(tmp_path)])
    assert config(latent_cache_frames=8, latent_cache_from=[str(tmp_path)]).latent_cache_from == (str(tmp_path),)
    assert config_differences(config().to_dict(), config(latent_cache_frames=8, persist_latent_cache=True,
                                                         latent_cache_from=[str(tmp_path)])) == []


def test_encoder_digest_ignores_the_decoder():
    vae = prepare_modules(tiny_components(0), config(), "cpu").vae
    digest = tr.encoder_digest(vae)
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(1.0)  # a decoder trained on: the posteriors are the same
        assert tr.encoder_digest(vae) == digest and tr.module_digest(vae) != digest
        next(vae.encoder.parameters()).add_(1.0)
    assert tr.encoder_digest(vae) != digest
    plain = torch.nn.Linear(2, 2)  # no encoder: the whole module
    assert tr.encoder_digest(plain) == tr.module_digest(plain)


def test_a_resumed_run_starts_with_the_persisted_latents(tmp_path, caplog):
    items = [make_item(k) for k in range(4)]
    cfg = config(steps=4, latent_cache_frames=64, persist_latent_cache=True)
    whole = train(cfg, run_dir=tmp_path / "whole", components=tiny_components(0), dataset=ListDataset(items))

    def crash_at_3(metrics):
        if metrics["step"] == 3:
            raise RuntimeError("crash")

    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        train(cfg, run_dir=run, components=tiny_components(0), dataset=ListDataset(items), report=crash_at_3)
    # the checkpoint at step 2 wrote the frames of its 2 batches of 2 items (1 + F frames each)
    assert [p.name for p in (run / tr.LATENT_CACHE_DIR).iterdir()] == ["rank0-step00000002.safetensors"]
    (run / tr.LATENT_CACHE_DIR / ".rank0-step00000004.safetensors.tmp-1").write_bytes(b"half written")
    with caplog.at_level("INFO", logger="mimicmotion.training.trainer"):
        resumed = train(cfg, run_dir=run, components=tiny_components(0), dataset=ListDataset(items))
    assert f"latent cache starts with {4 * (1 + F)} frame(s)" in caplog.text
    assert not list((run / tr.LATENT_CACHE_DIR).glob(".*"))  # the half-written file is gone
    a, b = weights(whole.checkpoint / MODEL_FILE), weights(resumed.checkpoint / MODEL_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the loaded posteriors are the encoded ones, bit for bit
    # another VAE in the same folder does not use them
    caplog.clear()
    with caplog.at_level("INFO", logger="mimicmotion.training.trainer"):
        train(dataclasses.replace(cfg, steps=5), run_dir=run, components=dict(
            tiny_components(0), vae=tiny_components(1)["vae"]), dataset=ListDataset(items))
    assert "latent cache starts with 0 frame(s)" in caplog.text and "another VAE" in caplog.text
    # a new run folder started from the crashed run's posteriors: nothing of its clips is encoded again,
    # and the same weights
    caplog.clear()
    with caplog.at_level("INFO", logger="mimicmotion.training.trainer"):
        seeded = train(dataclasses.replace(cfg, latent_cache_from=(str(run / tr.LATENT_CACHE_DIR),)),
                       run_dir=tmp_path / "seeded", components=tiny_components(0), dataset=ListDataset(items))
    assert "latent cache starts with 0 frame(s)" in caplog.text
    assert f"latent cache: {4 * (1 + F)} more frame(s) of this run's clips from {run / tr.LATENT_CACHE_DIR}" in caplog.text
    c = weights(seeded.checkpoint / MODEL_FILE)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the seeded run wrote them into its own folder: resumed without the other folder, it encodes nothing again
    caplog.clear()
    with caplog.at_level("INFO", logger="mimicmotion.training.trainer"):
        train(dataclasses.replace(cfg, steps=5), run_dir=tmp_path / "seeded", components=tiny_components(0),
              dataset=ListDataset(items))
    assert f"latent cache starts with {4 * (1 + F)} frame(s)" in caplog.text


def test_loss_goes_down_on_a_fixed_batch():
    cfg = config(lr=2e-3, warmup_steps=0, condition_dropout=0.0)
    modules = prepare_modules(tiny_components(0), cfg, "cpu")
    batch = batch_of([make_item(1), make_item(2)])

    def fixed_loss():
        with torch.no_grad():
            return training_step(modules, batch, cfg, torch.Generator().manual_seed(123))["loss"].item()

    before = fixed_loss()
    trainer = Trainer(modules, cfg)
    for _ in range(12):
        metrics = trainer.train_step(batch)
        assert metrics["lr"] == 2e-3 and math.isfinite(metrics["loss"])
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def test_pose_temporal_trains_only_posenet_and_temporal_layers():
    cfg = config(trainable="pose_temporal", lr=1e-2, warmup_steps=0, condition_dropout=0.0)
    modules = prepare_modules(tiny_components(0), cfg, "cpu")
    before = {n: p.detach().clone() for n, p in modules.unet.named_parameters()}
    frozen_vae = [p.detach().clone() for p in modules.vae.parameters()]
    trainer = Trainer(modules, cfg)
    names = [n for n, _ in trainer.named_params]
    assert any(n.startswith("pose_net.") for n in names)
    assert all(n.startswith("pose_net.") or tr.is_temporal_parameter(n[len("unet."):]) for n in names)
    batch = batch_of([make_item(1), make_item(2)])
    for _ in range(2):
        trainer.train_step(batch)
    changed = {n for n, p in modules.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(tr.is_temporal_parameter(n) for n in changed)
    assert not any(p.requires_grad for p in modules.vae.parameters())
    assert not any(p.requires_grad for p in modules.image_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen_vae, modules.vae.parameters()))
    all_cfg = config(trainable="all")
    n_all = len(Trainer(prepare_modules(tiny_components(0), all_cfg, "cpu"), all_cfg).named_params)
    assert n_all == len(list(modules.unet.parameters())) + len(list(modules.pose_net.parameters()))


def test_bf16_autocast_step_runs_on_cpu():
    cfg = config(mixed_precision="bf16", gradient_checkpointing=True, condition_dropout=0.0)
    modules = prepare_modules(tiny_components(0), cfg, "cpu")
    assert modules.vae.dtype == torch.bfloat16 and modules.unet.dtype == torch.float32
    assert modules.unet.is_gradient_checkpointing
    metrics = Trainer(modules, cfg).train_step(batch_of([make_item(1), make_item(2)]))
    assert math.isfinite(metrics["loss"])
    frames = tr.validation_render(modules, make_item(3), dataclasses.replace(cfg, validation_steps=1), seed=0)
    assert frames.shape == (F, H, W, 3) and modules.unet.training  # back in training mode


# ---------------------------------------------------------------------------------------------- the loop
def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    items = [make_item(k, hands=k % 2 == 0) for k in range(5)]  # 2 batches per epoch: epochs roll over
    cfg = config(steps=6, ema_decay=0.9, keep_checkpoints=2, warmup_steps=8)  # resumed mid warm-up

    reported = []
    whole = train(dataclasses.replace(cfg, log_every=3), run_dir=tmp_path / "whole", components=tiny_components(0),
                  dataset=ListDataset(items), report=lambda metrics: reported.append(metrics["step"]))
    assert whole.step == 6 and whole.resumed_from is None
    assert reported == [2, 3, 4, 6]  # every log_every steps and at every checkpoint

    class Crash(Exception):
        pass

    def crash_at_5(metrics):
        if metrics["step"] == 5:
            raise Crash()

    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(cfg, run_dir=run, components=tiny_components(0), dataset=ListDataset(items), report=crash_at_5)
    assert latest_checkpoint(run).name == "ckpt-000004"
    # resumed with a loader process (a resumable change: the items do not depend on who reads them)
    resumed = train(dataclasses.replace(cfg, data_workers=1), run_dir=run, components=tiny_components(0),
                    dataset=ListDataset(items))
    assert resumed.resumed_from == 4 and resumed.step == 6

    for name in (MODEL_FILE, RAW_MODEL_FILE):
        a, b = weights(whole.checkpoint / name), weights(resumed.checkpoint / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state_a, state_b = load_train_state(whole.checkpoint), load_train_state(resumed.checkpoint)
    for key in ("generator", "torch_rng"):  # the random streams continue where the uninterrupted run's are
        assert torch.equal(state_a["ranks"][0][key], state_b["ranks"][0][key]), key
    assert state_a["ranks"][0]["data"] == state_b["ranks"][0]["data"] == {"epoch": 2, "position": 2}
    ema, raw = weights(whole.checkpoint / MODEL_FILE), weights(whole.checkpoint / RAW_MODEL_FILE)
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # the model file holds the EMA weights
    rows_a = list(csv.DictReader(open(whole.metrics_path)))
    rows_b = list(csv.DictReader(open(resumed.metrics_path)))
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4", "5", "6"]  # the crashed step 5 row is replaced
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["epoch"] for r in rows_a] == ["0", "0", "1", "1", "2", "2"]
    # keep_checkpoints=2: only the two newest remain
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-000004", "ckpt-000006"]
    # a finished run is not trained further
    again = train(cfg, run_dir=run, components=tiny_components(0), dataset=ListDataset(items))
    assert again.step == 6 and again.resumed_from == 6


def test_train_state_loads_weights_only_and_holds_everything(tmp_path):
    cfg = config(steps=2)
    result = train(cfg, run_dir=tmp_path, components=tiny_components(0), dataset=ListDataset([make_item(1),
                                                                                             make_item(2)]))
    state = torch.load(result.checkpoint / STATE_FILE, weights_only=True)
    assert load_train_state(result.checkpoint)["step"] == 2
    assert state["step"] == 2 and state["world_size"] == 1 and state["config"] == cfg.to_dict()
    assert {"optimizer", "lr_scheduler", "ema", "grad_scaler", "trainable"} <= state.keys()
    rank = state["ranks"][0]
    assert {"generator", "torch_rng", "numpy_rng", "python_rng", "data"} <= rank.keys()
    assert rank["data"] == {"epoch": 1, "position": 1}  # one batch per epoch: step 2 was epoch 1's first
    assert not (result.checkpoint / RAW_MODEL_FILE).exists()  # no EMA: one model file
    # a pickle with code is refused
    (tmp_path / "ckpt-000009").mkdir()
    torch.save({"format": 1, "bad": ListDataset([])}, tmp_path / "ckpt-000009" / STATE_FILE)
    with pytest.raises(ModelFileError, match="unreadable"):
        load_train_state(tmp_path / "ckpt-000009")


def test_incomplete_checkpoints_are_ignored_and_other_settings_refused(tmp_path):
    items = [make_item(1), make_item(2)]
    train(config(steps=2), run_dir=tmp_path, components=tiny_components(0), dataset=ListDataset(items))
    (tmp_path / ".ckpt-000004.tmp-123").mkdir()  # a writer killed mid-checkpoint
    (tmp_path / "ckpt-000006").mkdir()  # no files: not complete
    assert latest_checkpoint(tmp_path).name == "ckpt-000002"
    with pytest.raises(ConfigError, match="other settings.*lr: checkpoint 0.001, now 0.002"):
        train(config(steps=4, lr=2e-3), run_dir=tmp_path, components=tiny_components(0), dataset=ListDataset(items))
    assert not (tmp_path / ".ckpt-000004.tmp-123").exists()  # cleaned up before the run started
    # killed between moving a checkpoint aside and renaming its replacement in: the old one comes back
    (tmp_path / "ckpt-000002").rename(tmp_path / ".ckpt-000002.old-99")
    tr.remove_stale_temporaries(tmp_path)
    assert latest_checkpoint(tmp_path).name == "ckpt-000002"
    with pytest.raises(ConfigError, match="ema_decay: checkpoint None, now 0.9"):
        train(config(steps=4, ema_decay=0.9), run_dir=tmp_path, components=tiny_components(0),
              dataset=ListDataset(items))
    state = load_train_state(latest_checkpoint(tmp_path))
    with pytest.raises(ConfigError, match="written by 1 workers, this run has 2"):
        tr.check_resume(tmp_path, latest_checkpoint(tmp_path), state, config(steps=9), world_size=2)
    tr.check_resume(tmp_path, latest_checkpoint(tmp_path), state, config(steps=9, validate_every=3), world_size=1)


def test_checkpoint_loads_with_load_pipeline_and_renders(tmp_path, tiny_model):
    from mimicmotion.loading import load_pipeline

    base, checkpoint = tiny_model
    cfg = config(steps=2, lr=1e-2, warmup_steps=0, condition_dropout=0.0, validate_every=2, validation_steps=2)
    held_out = [make_item(7)]
    result = train(cfg, run_dir=tmp_path, base_model_dir=base, init_checkpoint=checkpoint,
                   dataset=ListDataset([make_item(1), make_item(2)]), validation_items=held_out)
    pipe = load_pipeline(base, result.model_path)
    assert pipe.load_report.complete and not pipe.load_report.unexpected_keys
    trained = weights(result.model_path)
    initial = weights(checkpoint)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    assert trained["pose_net.final_proj.weight"].abs().sum() > 0  # PoseNet left its zero start
    # the validation render is what the loaded pipeline renders with the same settings
    rendered = tr.validation_render(tr.prepare_modules({k: getattr(pipe, k) for k in (
        "vae", "image_encoder", "unet", "scheduler", "feature_extractor", "pose_net")}, cfg, "cpu"),
        held_out[0], cfg, seed=cfg.seed)
    assert rendered.shape == (F, H, W, 3) and rendered.dtype == np.uint8
    from mimicmotion.video import read_frames

    video = tmp_path / "validation" / "step-000002-0.mp4"
    assert video.is_file() and read_frames(video).shape == (F, H, W, 3)
    row = list(csv.DictReader(open(tmp_path / "validation.csv")))[0]
    from mimicmotion.metrics import psnr

    truth = tr.frames_uint8(held_out[0]["pixels"][1:])
    assert float(row["psnr"]) == pytest.approx(psnr(rendered, truth), abs=1e-9)
    assert 0 < float(row["ssim"]) <= 1 and row["step"] == "2"


def test_fresh_posenet_from_the_base_unet(tmp_path):
    base, _ = save_tiny_model(tmp_path, seed=0, base_unet_weights=True)
    torch.manual_seed(0)
    comps = tr.load_components(base)
    assert float(comps["pose_net"].final_proj.weight.detach().abs().sum()) == 0.0  # fresh: zero projection
    from diffusers import UNetSpatioTemporalConditionModel

    stock = UNetSpatioTemporalConditionModel.from_pretrained(base / "unet")
    assert all(torch.equal(a, b) for a, b in zip(stock.state_dict().values(), comps["unet"].state_dict().values()))
    bare, _ = save_tiny_model(tmp_path / "bare", seed=0)  # no UNet weights in the base folder
    with pytest.raises(ModelFileError, match="base folder's UNet weights"):
        tr.load_components(bare)


def test_initial_checkpoint_without_posenet_or_unet(tmp_path, tiny_model):
    from safetensors.torch import save_file

    base, checkpoint = tiny_model
    tensors = weights(checkpoint)
    save_file({k: v for k, v in tensors.items() if k.startswith("unet.")}, str(tmp_path / "unet_only.safetensors"))
    comps = tr.load_components(base, tmp_path / "unet_only.safetensors")
    assert float(comps["pose_net"].final_proj.weight.detach().abs().sum()) == 0.0  # fresh PoseNet
    assert torch.equal(comps["unet"].state_dict()["conv_in.weight"], tensors["unet.conv_in.weight"])
    save_file({k: v for k, v in tensors.items() if k.startswith("pose_net.")}, str(tmp_path / "pose.safetensors"))
    with pytest.raises(ModelFileError, match="lacks .* UNet weights"):
        tr.load_components(base, tmp_path / "pose.safetensors")
    partial = {k: v for k, v in tensors.items() if k != "pose_net.scale"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelFileError, match="only part of the PoseNet.*scale"):
        tr.load_components(base, tmp_path / "partial.safetensors")


# ---------------------------------------------------------------------------------------------- metrics
def test_moving_average_and_csv_truncation(tmp_path):
    values = np.array([1.0, np.nan, 3.0, 5.0])
    np.testing.assert_allclose(tr.moving_average(values, 2), [1.0, 1.0, 3.0, 4.0])
    assert np.isnan(tr.moving_average(np.array([np.nan, 2.0]), 1)[0])
    path = tmp_path / "m.csv"
    for step in (1, 2, 3):
        tr.append_csv(path, ("step", "loss"), {"step": step, "loss": step / 10, "extra": 1})
    tr.truncate_csv(path, ("step", "loss"), 2)
    assert [r["step"] for r in tr.read_csv_rows(path)] == ["1", "2"]


def test_loss_curve_png(tmp_path):
    import cv2

    steps = np.arange(1, 101)
    loss = 1.0 / steps
    hand = np.where(steps % 3 == 0, np.nan, 2.0 / steps)
    out = tr.draw_loss_curve(steps, {"loss": loss, "hand": hand}, tmp_path / "curve.png", size=(400, 200))
    image = cv2.imread(str(out))
    assert image.shape == (200, 400, 3)
    inside = image[45:145, 85:375]
    assert (np.abs(inside.astype(int) - (200, 120, 40)).sum(-1) < 60).any()  # the loss line's colour
    assert (inside != 255).any() and (inside == 255).all(-1).mean() > 0.8
    empty = tr.draw_loss_curve([], {"loss": []}, tmp_path / "empty.png")
    assert cv2.imread(str(empty)).shape == (450, 900, 3)


# ---------------------------------------------------------------------------------------------- benchmark
def test_gpu_benchmark_dry_run_and_tiny_run_on_cpu():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import train_gpu

    row = train_gpu.main(["--dry-run"])  # the full-size architecture on meta tensors
    assert row["trainable_params"] == 1_524_623_082 + 205_557  # SVD-xt UNet + PoseNet (SPEC 5)
    assert row["tensors_without_grad"] == [] and row["loss_shape"] == []
    assert (row["frames"], row["height"], row["width"], row["mixed_precision"]) == (16, 1024, 576, "bf16")
    assert row["gradient_checkpointing"] and row["static_memory_gib"] > 20
    row = train_gpu.main(["--tiny", "--device", "cpu", "--frames", "2", "--height", "64", "--width", "32",
                          "--steps", "2", "--warmup", "1", "--mixed-precision", "no", "--optimizer", "adamw"])
    assert row["samples_per_s"] > 0 and row["peak_memory_gib"] is None and math.isfinite(row["last_loss"])


def test_train_cli_passes_the_lr_schedule_options():
    from mimicmotion.cli import build_parser
    from mimicmotion.training.cli import config_overrides

    args = build_parser().parse_args(["train", "--catalog", "c", "--base-model", "b", "--run-dir", "r",
                                      "--warmup-steps", "10", "--decay-steps", "300", "--steps", "900"])
    assert config_overrides(args) == {"warmup_steps": 10, "decay_steps": 300}
    assert TrainConfig.from_dict(dict(config_overrides(args), steps=args.steps)).validate().decay_steps == 300


def test_train_cli_passes_the_latent_cache_options():
    from mimicmotion.cli import build_parser
    from mimicmotion.training.cli import config_overrides

    base = ["train", "--catalog", "c", "--base-model", "b", "--run-dir", "r"]
    args = build_parser().parse_args(base + ["--latent-cache-frames", "4096", "--persist-latent-cache"])
    assert config_overrides(args) == {"latent_cache_frames": 4096, "persist_latent_cache": True}
    args = build_parser().parse_args(base + ["--latent-cache-frames", "8", "--latent-cache-from", "a",
                                             "--latent-cache-from", "b"])
    assert config_overrides(args) == {"latent_cache_frames": 8, "latent_cache_from": ["a", "b"]}
    assert config_overrides(build_parser().parse_args(base)) == {}
    with pytest.raises(ConfigError, match="set latent_cache_frames > 0"):
        TrainConfig.from_dict(config_overrides(build_parser().parse_args(base + ["--persist-latent-cache"]))).validate()
