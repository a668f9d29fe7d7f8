"""Render benchmark: full-size SVD-xt architecture with random weights (speed does not depend on values).

    python benchmarks/render_gpu.py                       # on a GPU: F=72 and F=145, 576x1024, 25 steps
    python benchmarks/render_gpu.py --frames 145 --steps 5
    python benchmarks/render_gpu.py --tiny --device cpu   # smoke test of this script on CPU

For each path it prints seconds per output frame, peak VRAM, achieved TFLOP/s and the FLOP floor:
  floor = UNet FLOPs per frame-forward x frame-forwards / measured dense matmul TFLOP/s.
Paths:
  unbatched   two batch-1 UNet calls per tile (unconditional, conditional)
  release     both guidance branches in one batch-2 call per tile (the released pipeline's loop)
  tiles       both branches and all tiles of a step in one call
  channels_last   tiles + the UNet's and PoseNet's 2-D convolutions in NHWC
  compiled    tiles + channels_last + torch.compile of the UNet (inductor cache in --compile-cache)
  lean        memory-bounded: one tile per call, feed-forward chunking, model offload, PoseNet in chunks of 8
Every path after the first also reports max_abs_diff: its output frames against the first path's (same
seed, same inputs), so a speed-up is only counted when it keeps the result within float noise.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mimicmotion.tiling import tile_plan


def full_size_components(dtype):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mimicmotion.models.pose_net import PoseNet
    from mimicmotion.models.unet import PoseConditionedUNet
    from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG

    # diffusers' UNetSpatioTemporalConditionModel defaults are the SVD(-xt) UNet of SPEC section 5.
    unet = PoseConditionedUNet(num_frames=25)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, sample_size=768, scaling_factor=0.18215, force_upcast=True,
        down_block_types=("DownEncoderBlock2D",) * 4,
    )
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
    ))
    extractor = CLIPImageProcessor(image_mean=[0.48145466, 0.4578275, 0.40821073],
                                   image_std=[0.26862954, 0.26130258, 0.27577711])
    return dict(vae=vae.to(dtype), image_encoder=clip.to(dtype), unet=unet.to(dtype),
                scheduler=EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG),
                feature_extractor=extractor, pose_net=PoseNet(noise_latent_channels=320).to(dtype))


def unet_flops_per_frame(unet, h, w, frames, device, dtype) -> float:
    """FLOPs of one UNet forward per frame (counted on a short clip: cost is linear in frames)."""
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.randn(1, frames, 8, h, w, device=device, dtype=dtype)
    emb = torch.randn(1, 1, unet.config.cross_attention_dim, device=device, dtype=dtype)
    ids = torch.tensor([[6.0, 127.0, 0.0]], device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor(1.0, device=device), encoder_hidden_states=emb, added_time_ids=ids,
             return_dict=False)
    return counter.get_total_flops() / frames


def matmul_tflops(device, dtype, n=8192, reps=20) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


PATHS = ("unbatched", "release", "tiles", "channels_last", "compiled", "lean")


def path_options(path, frames, tile, overlap, compile_cache=None):
    """(pipeline call options, SpeedOptions) of a path."""
    from mimicmotion.speed import SpeedOptions

    all_tiles = len(tile_plan(frames, tile, overlap))
    if path == "unbatched":
        return dict(batch_guidance=False), SpeedOptions()
    if path == "release":
        return dict(batch_guidance=True), SpeedOptions()
    if path == "tiles":
        return dict(tiles_per_batch=all_tiles), SpeedOptions()
    if path == "channels_last":
        return dict(tiles_per_batch=all_tiles), SpeedOptions(channels_last=True)
    if path == "compiled":
        return dict(tiles_per_batch=all_tiles), SpeedOptions(channels_last=True, compile_unet=True,
                                                             compile_cache_dir=compile_cache)
    if path == "lean":
        return dict(tiles_per_batch=1, pose_chunk_size=8, offload=True), SpeedOptions(forward_chunk_size=1)
    raise SystemExit(f"unknown path {path!r}; use {', '.join(PATHS)}")


def run_path(pipe, path, frames, height, width, steps, tile, overlap, device, compile_cache=None):
    from PIL import Image

    from mimicmotion.speed import apply_speed_options, reset_speed_options

    image = Image.new("RGB", (width, height), (128, 100, 90))
    pose = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opts, speed = path_options(path, frames, tile, overlap, compile_cache)
    offload = opts.pop("offload", False)
    reset_speed_options(pipe)
    apply_speed_options(pipe, speed)
    pipe.offload = offload
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    out = pipe(image, pose, height=height, width=width, tile_size=tile, tile_overlap=overlap, num_inference_steps=steps,
               generator=torch.Generator("cpu").manual_seed(42), output_type="pt", device=device, **opts).frames
    sync(device)
    seconds = time.perf_counter() - t0
    pipe.offload = False
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None
    return seconds, peak, out.float().cpu()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[72, 145])
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--tile-size", type=int, default=72)
    ap.add_argument("--tile-overlap", type=int, default=6)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--compile-cache", default=None, help="inductor cache folder for the compiled path")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny components (smoke test of this script)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    from mimicmotion.pipeline import MimicMotionPipeline

    if args.tiny:
        from mimicmotion.tiny import tiny_components

        comps = tiny_components()
        comps = {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in comps.items()}
    else:
        comps = full_size_components(dtype)
    pipe = MimicMotionPipeline(**comps).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    h, w = args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor
    flops_frame = unet_flops_per_frame(pipe.unet, h, w, min(8, args.tile_size), args.device, dtype)
    peak_tflops = matmul_tflops(args.device, dtype, n=1024 if args.tiny else 8192)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"device {device_name}; UNet {flops_frame / 1e12:.3f} TFLOPs per frame-forward at "
          f"{args.height}x{args.width}; dense matmul {peak_tflops:.1f} TFLOP/s ({args.dtype})")
    results = []
    for frames in args.frames:
        tiles = tile_plan(frames, args.tile_size, args.tile_overlap)
        frame_forwards = sum(len(t) for t in tiles) * 2 * args.steps
        floor = flops_frame * frame_forwards / (peak_tflops * 1e12)
        out_frames = frames - 1
        reference = None
        for path in args.paths:
            seconds, peak, out = run_path(pipe, path, frames, args.height, args.width, args.steps, args.tile_size,
                                          args.tile_overlap, args.device, args.compile_cache)
            diff = None if reference is None else float((out - reference).abs().max())
            reference = out if reference is None else reference
            achieved = flops_frame * frame_forwards / seconds / 1e12
            row = dict(device=device_name, path=path, frames=frames, tiles=len(tiles), steps=args.steps,
                       dtype=args.dtype, seconds=round(seconds, 3), s_per_frame=round(seconds / out_frames, 4),
                       peak_vram_gib=None if peak is None else round(peak, 2), achieved_tflops=round(achieved, 1),
                       floor_s_per_frame=round(floor / out_frames, 4), ratio_to_floor=round(seconds / floor, 2),
                       max_abs_diff=diff)
            results.append(row)
            print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
