"""Distributed render over Ray actors on the tiny model: equals the local render, survives a killed actor,
and a killed render resumes from its latent checkpoint with the same frames."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")

from mimicmotion.checkpointing import denoise, load_latent_checkpoint  # noqa: E402
from mimicmotion.errors import ConfigError  # noqa: E402
from mimicmotion.tiling import tile_plan  # noqa: E402
from tasks.ray_render import ModelSpec, RayTileExecutor, assign_tiles, decode_chunks  # noqa: E402

H = W = 64
STEPS = 2
TOL = 1e-5
# Half a CPU per actor: the module's executor and one more fit the 2-CPU test cluster at the same time.
ACTOR_OPTIONS = dict(cpus_per_actor=0.5, torch_threads=1, start_timeout_s=60)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    # Actors run one intra-op thread (one reserved CPU each); CPU matmul sums depend on the thread count,
    # so the local reference runs with one thread too (at 2 vs 1 threads two local renders already differ
    # by ~6e-5 after the sigma_max=700 first step).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="module")
def executor(model):
    with RayTileExecutor(model, num_actors=2, **ACTOR_OPTIONS) as ex:
        yield ex


def inputs(num_frames, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (num_frames, 3, H, W)).astype(np.float32))
    return image, poses


def render(pipe, num_frames, tile_executor=None, steps=STEPS, tile_size=4, tile_overlap=2, callback=None):
    image, poses = inputs(num_frames)
    return pipe(image, poses, height=H, width=W, tile_size=tile_size, tile_overlap=tile_overlap,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(42), output_type="latent",
                tile_executor=tile_executor, callback_on_step_end=callback).frames


def test_assign_tiles_contiguous_balanced():
    assert assign_tiles(5, 2) == [range(0, 3), range(3, 5)]
    assert assign_tiles(4, 2) == [range(0, 2), range(2, 4)]
    assert assign_tiles(1, 3) == [range(0, 1), range(1, 1), range(1, 1)]
    assert assign_tiles(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    with pytest.raises(ConfigError, match="actors"):
        assign_tiles(3, 0)


def test_decode_chunks_match_local_chunking():
    assert decode_chunks(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert decode_chunks(8, 8) == [range(0, 8)]
    assert decode_chunks(3, 8) == [range(0, 3)]


@pytest.mark.parametrize("num_frames", [3, 4, 11])  # F < T (one short tile), F = T, F > T with a tail tile
def test_two_actors_equal_local(pipe, executor, num_frames):
    if num_frames == 11:
        # [0,1,2,3] [0,3,4,5] [0,5,6,7] [0,7,8,9] and the tail tile [0,8,9,10]: 3 + 2 tiles on the actors.
        assert tile_plan(11, 4, 2)[-1] == [0, 8, 9, 10]
    local = render(pipe, num_frames)
    steps_before = len(executor.stats)
    distributed = render(pipe, num_frames, tile_executor=executor)
    diff = (local - distributed).abs().max().item()
    print(f"F={num_frames}: max abs diff local vs 2 Ray actors = {diff:.3g}")
    assert distributed.shape == (1, num_frames, 4, H // 8, W // 8)
    assert diff <= TOL
    assert len(executor.stats) - steps_before == STEPS
    # Both actors worked whenever there were at least two tiles.
    active = min(2, len(tile_plan(num_frames, 4, 2)))
    assert all(len(s.compute_s) == active for s in executor.stats[steps_before:])


def test_decode_on_actors_equals_local(pipe, executor):
    latents = render(pipe, 11)
    local = pipe.decode(latents, decode_chunk_size=4)
    distributed = executor.decode(latents, decode_chunk_size=4)
    diff = (local - distributed).abs().max().item()
    print(f"decode: max abs diff local vs actors = {diff:.3g}")
    assert distributed.shape == local.shape == (1, 11, 3, H, W)
    assert diff <= TOL


def test_actor_killed_mid_render_gives_same_frames(pipe, model):
    local = render(pipe, 11, steps=3)
    with RayTileExecutor(model, num_actors=2, **ACTOR_OPTIONS) as ex:
        killed = []

        def kill_after_first_step(_pipe, step, _t, _tensors):
            if step == 0:
                victim = ex.actors[1]
                ray.kill(victim)
                killed.append(victim)

        distributed = render(pipe, 11, tile_executor=ex, steps=3, callback=kill_after_first_step)
        assert killed and ex.restarts == 1 and ex.actors[1] is not killed[0]
    diff = (local - distributed).abs().max().item()
    print(f"killed actor: max abs diff vs unfaulted local = {diff:.3g}")
    assert diff <= TOL


def test_restart_budget_spent_is_a_clear_error(pipe, model):
    from mimicmotion.errors import MimicMotionError

    with RayTileExecutor(model, num_actors=2, max_restarts=0, **ACTOR_OPTIONS) as ex:
        def kill(_pipe, step, _t, _tensors):
            ray.kill(ex.actors[0])

        with pytest.raises(MimicMotionError, match="restart budget"):
            render(pipe, 11, tile_executor=ex, steps=2, callback=kill)


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, torch
    from PIL import Image
    from mimicmotion.checkpointing import denoise
    from mimicmotion.loading import load_pipeline
    from mimicmotion.pipeline import TileDenoiser

    torch.set_num_threads(1)
    base, ckpt, folder, out, kill_after = sys.argv[1:6]
    kill_after = int(kill_after)
    pipe = load_pipeline(base, ckpt, dtype=torch.float32, device="cpu")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (11, 3, 64, 64)).astype(np.float32))
    generator = torch.Generator().manual_seed(42)
    state = pipe.prepare(image, poses, height=64, width=64, tile_size=4, tile_overlap=2, num_inference_steps=4,
                         generator=generator)

    def die(step, latents):
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no flush

    latents = denoise(pipe, state, TileDenoiser(pipe.unet), generator=generator, checkpoint_dir=folder,
                      fingerprint="test-render", on_step_end=die)
    torch.save(latents, out)
""")


def test_killed_render_resumes_from_latent_checkpoint(pipe, model, tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    folder, out = tmp_path / "ckpt", tmp_path / "latents.pt"
    cmd = [sys.executable, str(script), model.base_model, model.checkpoint, str(folder), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*cmd, "1"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9, first.stderr  # SIGKILL after step 1 (two of four steps done)
    assert not out.exists()
    saved = load_latent_checkpoint(folder, "test-render")
    assert saved.step == 1 and saved.next_step == 2
    second = subprocess.run([*cmd, "-1"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    resumed = torch.load(out, weights_only=True)
    assert load_latent_checkpoint(folder, "test-render").step == 3

    uninterrupted = render(pipe, 11, steps=4)
    diff = (resumed - uninterrupted).abs().max().item()
    print(f"resumed after kill: max abs diff vs uninterrupted = {diff:.3g}")
    assert diff <= TOL


def test_checkpoint_of_another_render_is_refused(pipe, tmp_path):
    from mimicmotion.pipeline import TileDenoiser

    image, poses = inputs(4)
    state = pipe.prepare(image, poses, height=H, width=W, tile_size=4, tile_overlap=2, num_inference_steps=1,
                         generator=torch.Generator().manual_seed(0))
    denoise(pipe, state, TileDenoiser(pipe.unet), checkpoint_dir=tmp_path, fingerprint="render-a")
    with pytest.raises(ConfigError, match="different render"):
        load_latent_checkpoint(tmp_path, "render-b")
