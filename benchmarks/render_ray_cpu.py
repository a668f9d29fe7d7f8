"""Distributed render benchmark: local vs N Ray actors, seconds per frame and per-step overhead.

    python benchmarks/render_ray_cpu.py                                # tiny model, CPU, 2 actors
    python benchmarks/render_ray_cpu.py --frames 65 --steps 4 --actors 2
    python benchmarks/render_ray_cpu.py --base-model SVD_DIR --checkpoint CKPT --size 576 --frames 145 \\
        --tile-size 72 --tile-overlap 6 --steps 25 --dtype float16 --device cuda   # real model, GPU actors

Both paths run the same conditioning (computed once), the same denoising steps and the same chunked
decode. Per step it times the model input, the tile executor and the fusion + scheduler step; for the Ray
path the overhead is the step time not explained by the slowest actor's UNet time (object-store put,
transfer of inputs and outputs, scheduling, fusion), reported as a fraction of the step time. It also
checks that both paths give the same latents (max abs diff printed).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@torch.no_grad()
def timed_render(pipe, state, executor):
    """Run the denoising loop, timing each part of each step. Returns (latents, per-step dicts)."""
    steps = []
    for i, t in enumerate(state.timesteps):
        t0 = time.perf_counter()
        model_in = pipe.model_input(state, i)
        t1 = time.perf_counter()
        outs = executor(model_in, t, state.cond, state.tiles)
        t2 = time.perf_counter()
        pipe.finish_step(state, i, outs)
        t3 = time.perf_counter()
        steps.append(dict(input_s=t1 - t0, tiles_s=t2 - t1, fuse_s=t3 - t2, step_s=t3 - t0))
    return state.latents, steps


def prepare(pipe, args):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (args.frames, 3, args.size, args.size)).astype(np.float32))
    return pipe.prepare(image, poses.to(pipe.unet.dtype), height=args.size, width=args.size,
                        tile_size=args.tile_size, tile_overlap=args.tile_overlap, num_inference_steps=args.steps,
                        generator=torch.Generator().manual_seed(42), device=args.device)


@torch.no_grad()
def main(argv=None) -> int:
    import ray

    from mimicmotion.loading import load_pipeline
    from mimicmotion.pipeline import TileDenoiser
    from tasks.ray_render import ModelSpec, RayTileExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-model")
    ap.add_argument("--checkpoint")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=33, help="F including the reference frame")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tile-size", type=int, default=8)
    ap.add_argument("--tile-overlap", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--decode-chunk-size", type=int, default=8)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the driver and of each CPU actor")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    tmp = None
    if args.base_model is None:
        from mimicmotion.tiny import save_tiny_model

        tmp = tempfile.TemporaryDirectory()
        args.base_model, args.checkpoint = map(str, save_tiny_model(tmp.name))
    model = ModelSpec(args.base_model, args.checkpoint, args.dtype)
    pipe = load_pipeline(model.base_model, model.checkpoint, dtype=getattr(torch, args.dtype), device=args.device)
    pipe.set_progress_bar_config(disable=True)
    output_frames = args.frames - 1

    results = {"machine": platform.processor() or platform.machine(), "args": vars(args)}
    # Local: the UNet in this process (after one warm-up step, as for the actors).
    local_executor = TileDenoiser(pipe.unet)
    warm = prepare(pipe, args)
    local_executor(pipe.model_input(warm, 0), warm.timesteps[0], warm.cond, warm.tiles)
    pipe.decode(warm.latents[:, :args.decode_chunk_size], args.decode_chunk_size)
    state = prepare(pipe, args)
    start = time.perf_counter()
    local_latents, local_steps = timed_render(pipe, state, local_executor)
    local_denoise = time.perf_counter() - start
    start = time.perf_counter()
    local_frames = pipe.decode(local_latents, args.decode_chunk_size)
    local_decode = time.perf_counter() - start

    ray.init(num_cpus=max(args.actors * args.threads, 1), include_dashboard=False, log_to_driver=False)
    try:
        with RayTileExecutor(model, num_actors=args.actors, cpus_per_actor=args.threads,
                             torch_threads=args.threads if args.device == "cpu" else None) as executor:
            # Warm-up step outside the timing (first calls allocate, actors import lazily).
            warm = prepare(pipe, args)
            executor(pipe.model_input(warm, 0), warm.timesteps[0], warm.cond, warm.tiles)
            executor.stats.clear()
            state = prepare(pipe, args)
            start = time.perf_counter()
            ray_latents, ray_steps = timed_render(pipe, state, executor)
            ray_denoise = time.perf_counter() - start
            start = time.perf_counter()
            ray_frames = executor.decode(ray_latents, args.decode_chunk_size)
            ray_decode = time.perf_counter() - start
            stats = list(executor.stats)
    finally:
        ray.shutdown()

    overhead = [s["step_s"] - max(st.compute_s) for s, st in zip(ray_steps, stats)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    results.update(
        tiles=len(state.tiles),
        local=dict(denoise_s=local_denoise, decode_s=local_decode,
                   s_per_frame=(local_denoise + local_decode) / output_frames,
                   step_s=mean([s["step_s"] for s in local_steps]), fuse_s=mean([s["fuse_s"] for s in local_steps])),
        ray=dict(actors=args.actors, denoise_s=ray_denoise, decode_s=ray_decode,
                 s_per_frame=(ray_denoise + ray_decode) / output_frames,
                 step_s=mean([s["step_s"] for s in ray_steps]), fuse_s=mean([s["fuse_s"] for s in ray_steps]),
                 put_s=mean([st.put_s for st in stats]), max_actor_compute_s=mean([max(st.compute_s) for st in stats]),
                 overhead_s=mean(overhead), overhead_fraction=mean(overhead) / mean([s["step_s"] for s in ray_steps])),
        max_abs_diff_latents=float((local_latents - ray_latents).abs().max()),
        max_abs_diff_frames=float((local_frames - ray_frames).abs().max()),
    )
    r, lo = results["ray"], results["local"]
    print(f"F={args.frames} (tiles {results['tiles']}), {args.size}x{args.size}, {args.steps} steps, "
          f"T={args.tile_size} O={args.tile_overlap}, {args.threads} thread(s) per process, device {args.device}")
    print("| path | s/frame | denoise s | decode s | s/step | fusion s/step |")
    print("|---|---|---|---|---|---|")
    print(f"| local | {lo['s_per_frame']:.4f} | {lo['denoise_s']:.3f} | {lo['decode_s']:.3f} | {lo['step_s']:.4f} | "
          f"{lo['fuse_s']:.4f} |")
    print(f"| {args.actors} Ray actors | {r['s_per_frame']:.4f} | {r['denoise_s']:.3f} | {r['decode_s']:.3f} | "
          f"{r['step_s']:.4f} | {r['fuse_s']:.4f} |")
    print(f"Ray per-step overhead (step time - slowest actor's UNet time): {r['overhead_s']:.4f}s = "
          f"{100 * r['overhead_fraction']:.1f}% of the step (put {r['put_s']:.4f}s, fusion {r['fuse_s']:.4f}s)")
    print(f"max abs diff local vs Ray: latents {results['max_abs_diff_latents']:.3g}, "
          f"frames {results['max_abs_diff_frames']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
