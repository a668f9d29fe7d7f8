"""MimicMotionPipeline on tiny components: release semantics, determinism, tiling, batching options."""
import numpy as np
import pytest
import torch
from PIL import Image

from mimicmotion.errors import ConfigError
from mimicmotion.pipeline import MimicMotionPipeline
from mimicmotion.tiling import tile_plan
from mimicmotion.tiny import tiny_components

H = W = 64
STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    comps = tiny_components(seed=0)
    # Make the pose path matter: the released PoseNet starts with a zero projection.
    torch.manual_seed(1)
    with torch.no_grad():
        comps["pose_net"].final_proj.weight.normal_(0, 0.05)
    p = MimicMotionPipeline(**comps)
    p.set_progress_bar_config(disable=True)
    return p


def inputs(num_frames, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (num_frames, 3, H, W)).astype(np.float32))
    return image, poses


def run(pipe, num_frames, tile_size=4, tile_overlap=2, seed=42, **kw):
    image, poses = inputs(num_frames)
    kw.setdefault("output_type", "latent")
    return pipe(image, poses, height=H, width=W, tile_size=tile_size, tile_overlap=tile_overlap,
                num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), **kw).frames


def release_reference(pipe, image, image_pose, num_frames, tile_size, tile_overlap, steps, seed, guidance=2.0):
    """An independent transcription of the released sampling loop (SPEC section 6), for comparison."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    g = torch.Generator().manual_seed(seed)
    proc = pipe.image_processor
    px = proc.numpy_to_pt(proc.pil_to_numpy(image)) * 2.0 - 1.0
    px = (_resize_with_antialiasing(px, (224, 224)) + 1.0) / 2.0
    fe = pipe.feature_extractor
    px = (px - torch.tensor(fe.image_mean).view(1, 3, 1, 1)) / torch.tensor(fe.image_std).view(1, 3, 1, 1)
    emb = pipe.image_encoder(px).image_embeds.unsqueeze(1)
    emb = torch.cat([torch.zeros_like(emb), emb])
    img = proc.preprocess(image, height=H, width=W)
    img = img + 0.0 * torch.randn(img.shape, generator=g)
    lat = pipe.vae.encode(img).latent_dist.mode()
    lat = torch.cat([torch.zeros_like(lat), lat]).unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    pose = pipe.pose_net(image_pose)
    pose = torch.cat([torch.zeros_like(pose), pose]).reshape(2, num_frames, *pose.shape[1:])
    ids = torch.tensor([[6.0, 127.0, 0.0]] * 2)
    sched = pipe.scheduler
    sched.set_timesteps(steps)
    latents = torch.randn((1, tile_size, 4, H // 8, W // 8), generator=g) * sched.init_noise_sigma
    latents = latents.repeat(1, num_frames // tile_size + 1, 1, 1, 1)[:, :num_frames]
    gs = torch.linspace(guidance, guidance, num_frames).unsqueeze(0)[..., None, None, None]
    indices = [[0, *range(i + 1, min(i + tile_size, num_frames))]
               for i in range(0, num_frames - tile_size + 1, tile_size - tile_overlap)]
    if indices[-1][-1] < num_frames - 1:
        indices.append([0, *range(num_frames - tile_size + 1, num_frames)])
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * 2), t)
        x = torch.cat([x, lat], dim=2)
        pred = torch.zeros_like(lat)
        cnt = lat.new_zeros((num_frames,))
        w = (torch.arange(tile_size) + 0.5) * 2.0 / tile_size
        w = torch.minimum(w, 2 - w)
        for idx in indices:
            out = pipe.unet(x[:, idx], t, encoder_hidden_states=emb, added_time_ids=ids,
                            pose_latents=pose[:, idx].flatten(0, 1), return_dict=False)[0]
            pred[:, idx] += out * w[:, None, None, None]
            cnt[idx] += w
        pred.div_(cnt[:, None, None, None])
        u, c = pred.chunk(2)
        latents = sched.step(u + gs * (c - u), t, latents, generator=g, return_dict=False)[0]
    return latents


@torch.no_grad()
def test_matches_release_loop_multi_tile(pipe):
    f, t, o = 11, 4, 2
    # Overlapping tiles plus the extra last tile: [0,1,2,3] [0,3,4,5] [0,5,6,7] [0,7,8,9] [0,8,9,10].
    assert len(tile_plan(f, t, o)) == 5
    image, poses = inputs(f)
    ref = release_reference(pipe, image, poses, f, t, o, STEPS, seed=42)
    ours = run(pipe, f, t, o)
    assert ours.shape == (1, f, 4, H // 8, W // 8)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()


def test_deterministic_with_fixed_generator(pipe):
    a = run(pipe, 6)
    b = run(pipe, 6)
    assert torch.equal(a, b)
    c = run(pipe, 6, seed=7)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("num_frames", [3, 4, 9])  # F < T, F = T, F > T (T = 4)
def test_frame_counts_decode(pipe, num_frames):
    frames = run(pipe, num_frames, output_type="pt")
    assert frames.shape == (1, num_frames, 3, H, W)
    assert frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0


@torch.no_grad()
def test_single_tile_equals_plain_window_sampling(pipe):
    """With one tile the fusion must reduce to ordinary SVD-style sampling of the whole window."""
    f = 4
    image, poses = inputs(f)
    state = pipe.prepare(image, poses, height=H, width=W, tile_size=f, tile_overlap=1, num_inference_steps=STEPS,
                         generator=torch.Generator().manual_seed(42))
    assert state.tiles == [list(range(f))]
    cond = state.cond
    for i, t in enumerate(state.timesteps):
        x = pipe.model_input(state, i)
        out = pipe.unet(x, t, encoder_hidden_states=cond.image_embeddings, added_time_ids=cond.added_time_ids,
                        pose_latents=torch.cat([torch.zeros_like(cond.pose_latents), cond.pose_latents]),
                        return_dict=False)[0]
        u, c = out.chunk(2)
        state.latents = pipe.scheduler.step(u + 2.0 * (c - u), t, state.latents, return_dict=False)[0]
    fused = run(pipe, f, tile_size=f)
    assert torch.allclose(fused, state.latents, atol=1e-5, rtol=0)


def test_batching_options_agree(pipe):
    base = run(pipe, 10, batch_guidance=False)
    for kw in (dict(batch_guidance=True), dict(batch_guidance=True, tiles_per_batch=2),
               dict(batch_guidance=True, tiles_per_batch=4)):
        other = run(pipe, 10, **kw)
        diff = (other - base).abs().max().item()
        assert diff < 1e-5, (kw, diff)


def test_pose_changes_output(pipe):
    image, poses = inputs(4)
    kw = dict(height=H, width=W, tile_size=4, tile_overlap=1, num_inference_steps=2, output_type="latent")
    a = pipe(image, poses, generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe(image, -poses, generator=torch.Generator().manual_seed(0), **kw).frames
    assert (a - b).abs().max() > 1e-4


def test_periodic_noise_and_independent_option(pipe):
    image, poses = inputs(9)
    st = pipe.prepare(image, poses, height=H, width=W, tile_size=4, tile_overlap=1, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(3))
    lat = st.latents
    assert torch.equal(lat[:, 0], lat[:, 4]) and torch.equal(lat[:, 1], lat[:, 5]) and torch.equal(lat[:, 0], lat[:, 8])
    st2 = pipe.prepare(image, poses, height=H, width=W, tile_size=4, tile_overlap=1, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(3), independent_noise=True)
    assert not torch.equal(st2.latents[:, 0], st2.latents[:, 4])
    # Same generator order: conditioning-image noise first, then the latent noise.
    assert torch.equal(st2.latents[:, :4], lat[:, :4])


def test_callback_and_executor_hooks(pipe):
    seen_steps, calls = [], []

    def callback(p, i, t, kwargs):
        seen_steps.append(i)
        assert kwargs["latents"].shape == (1, 6, 4, H // 8, W // 8)
        return {}

    from mimicmotion.pipeline import TileDenoiser

    local = TileDenoiser(pipe.unet)

    def executor(model_in, t, cond, tiles):
        calls.append([list(x) for x in tiles])
        return local(model_in, t, cond, tiles)

    out = run(pipe, 6, callback_on_step_end=callback, tile_executor=executor)
    assert seen_steps == list(range(STEPS))
    assert calls == [tile_plan(6, 4, 2)] * STEPS
    assert torch.equal(out, run(pipe, 6))


@pytest.mark.parametrize("kw,match", [
    (dict(height=60), "multiples"),
    (dict(tile_overlap=4), "tile_overlap"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(min_guidance_scale=0.5), "guidance"),
    (dict(num_frames=5), "pose frames"),
])
def test_bad_parameters_are_config_errors(pipe, kw, match):
    image, poses = inputs(4)
    args = dict(height=H, width=W, tile_size=4, tile_overlap=1, num_inference_steps=1)
    args.update(kw)
    if args["height"] != H:
        poses = torch.zeros(4, 3, args["height"], W)
    with pytest.raises(ConfigError, match=match):
        pipe(image, poses, **args)


def test_output_types(pipe):
    np_frames = run(pipe, 3, output_type="np")
    assert np_frames.shape == (1, 3, H, W, 3)
    pil = run(pipe, 3, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (W, H)


def test_memory_options_do_not_change_results(pipe):
    base = run(pipe, 6, output_type="pt")
    pipe.offload = True
    try:
        # (decode_chunk_size is not such an option: the temporal decoder mixes the frames of a chunk.)
        offloaded = run(pipe, 6, output_type="pt", decode_device="cpu", pose_chunk_size=2)
    finally:
        pipe.offload = False
    assert torch.allclose(base, offloaded, atol=1e-6)


def test_bfloat16_pipeline_runs_close_to_float32():
    comps = tiny_components(seed=0)
    p32 = MimicMotionPipeline(**comps)
    p32.set_progress_bar_config(disable=True)
    ref = run(p32, 5, output_type="pt")
    p16 = MimicMotionPipeline(**tiny_components(seed=0)).to(dtype=torch.bfloat16)
    p16.set_progress_bar_config(disable=True)
    out = run(p16, 5, output_type="pt")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05


@pytest.mark.parametrize("options", [
    dict(channels_last=True),
    dict(forward_chunk_size=1),
    dict(channels_last=True, forward_chunk_size=2),
])
def test_speed_options_stay_within_float_noise(pipe, options):
    from mimicmotion.speed import SpeedOptions, apply_speed_options, reset_speed_options

    base = run(pipe, 7)
    apply_speed_options(pipe, SpeedOptions(**options))
    try:
        if options.get("channels_last"):
            conv = pipe.unet.conv_in.weight
            assert conv.is_contiguous(memory_format=torch.channels_last)
        fast = run(pipe, 7, tiles_per_batch=2)
    finally:
        reset_speed_options(pipe)
    assert pipe.unet.conv_in.weight.is_contiguous()
    assert torch.allclose(base, fast, atol=1e-5), (base - fast).abs().max()


def test_compiled_unet_matches_eager():
    """torch.compile wiring on the tiny model (the eager backend: what compiling changes is checked on GPU
    by benchmarks/render_gpu.py, which records each path's difference to the release path)."""
    from mimicmotion.speed import SpeedOptions, apply_speed_options

    p = MimicMotionPipeline(**tiny_components(seed=0))
    p.set_progress_bar_config(disable=True)
    base = run(p, 5)
    apply_speed_options(p, SpeedOptions(compile_unet=True, compile_backend="eager"))
    apply_speed_options(p, SpeedOptions(compile_unet=True, compile_backend="eager"))  # idempotent
    assert p.unet._compiled_call_impl is not None
    assert torch.allclose(base, run(p, 5), atol=1e-6)


def test_bad_speed_options():
    from mimicmotion.speed import SpeedOptions

    with pytest.raises(ConfigError, match="forward_chunk_size"):
        SpeedOptions(forward_chunk_size=0).validate()
    with pytest.raises(ConfigError, match="compile_unet"):
        SpeedOptions(compile_mode="max-autotune").validate()
