"""Every GPU figure in one call: run this first whenever a session is lent a device (DEVELOPERS.md).

    python benchmarks/gpu_check.py --out $OUT                       # on the lent GPU, all parts, < 8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/g # CPU smoke test (tests/test_gpu_check.py)

On the device machine (Python 3.12, torch CUDA and transformers present; no diffusers, Prefect, Ray, PyAV or
decord), carry the wheels the parts need in the ignored folder ``.whl`` (see the device tool's README):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl diffusers==0.42.1 importlib-metadata
    # run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    #     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 &&
    #     python3 benchmarks/gpu_check.py --out $OUT", carry=[".whl"], timeout_s=560)

The tree travels too (about 45 MB: the demo model and the bundled pose models), so ai-edge-litert's 22 MB
wheel does not fit in the 64 MiB a call carries: the ``pose`` part then records itself as skipped.

Parts, each in its own process with its own time budget (one slow or crashing part cannot take the others
down), each writing ``<part>.json`` under ``--out`` as soon as it finishes, plus ``gpu_check.log`` and, at
the end, ``summary.json``:

* ``env``: device, memory, torch/CUDA versions, dense matmul TFLOP/s (fp16, bf16).
* ``render_<path>``: the full-size SVD-xt architecture (random weights: speed does not depend on values) at
  576x1024, tiles of 72 with overlap 6, F=145, for the release-equivalent path (``unbatched``: two batch-1
  UNet calls per tile, fp16) and this project's fastest lossless paths (``channels_last``: both branches and
  all tiles batched, NHWC convolutions; ``compiled``: the same under torch.compile; bf16 with SDPA). Each
  path runs the pipeline once with 1 step to warm up (and compile), then timed with 1 and with 3 denoising
  steps (same seed): the difference is the time of 2 steps; 25-step time = fixed cost (encode, decode) +
  25 x per-step, stated as such. Peak VRAM (``torch.cuda.max_memory_allocated``), achieved TFLOP/s of
  the denoising, ratio to the FLOP floor (UNet FLOPs per frame-forward x frame-forwards / dense matmul rate),
  and the max abs difference of the 3-step output frames against the first path's.
* ``lean_F145`` / ``lean_F289``: the bounded-memory path's peak VRAM, one step each.
* ``fusion``: the per-step overhead of the distributed design without Ray: fusing 3 tiles' outputs with the
  progressive weights + one scheduler step, against one UNet call on one tile.
* ``train``: ``benchmarks/train_gpu.py`` full size (16 frames at 576x1024, bf16, gradient checkpointing),
  3 steps after 1 warm-up: samples/s and peak memory.
* ``pose``: frames/s of the bundled pose estimator on that machine's CPU cores (when ai-edge-litert is there).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # render_gpu, train_gpu

RENDER_PATHS = (("unbatched", "float16"), ("channels_last", "bfloat16"), ("compiled", "bfloat16"))
# Parts in the order they run (most wanted first) with their time budgets in seconds on the GPU; the call
# stops starting parts once TOTAL_BUDGET_S is spent, so it ends inside 8 minutes.
BUDGETS = {"env": 30, "render_unbatched": 80, "render_channels_last": 60, "lean_F145": 35, "train": 70,
           "fusion": 20, "render_compiled": 110, "lean_F289": 50, "pose": 20}
TOTAL_BUDGET_S = 470


# ------------------------------------------------------------------------------------------- the parts
def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def part_env(args) -> dict:
    import torch

    from render_gpu import matmul_tflops

    out = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
           "cpu_count": os.cpu_count()}
    if torch.device(args.device).type == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    n = 512 if args.tiny else 8192
    for dtype in ("float16", "bfloat16"):
        out[f"matmul_tflops_{dtype}"] = round(matmul_tflops(args.device, getattr(torch, dtype), n=n, reps=5), 1)
    return out


def _pipeline(args, dtype):
    import torch

    from render_gpu import full_size_components
    from mimicmotion.pipeline import MimicMotionPipeline

    if args.tiny:
        from mimicmotion.tiny import tiny_components

        comps = {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in tiny_components().items()}
    else:
        with torch.device(args.device):  # initialise the random weights where they run (seconds, not a minute)
            comps = full_size_components(dtype)
    pipe = MimicMotionPipeline(**comps).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _shape(args):
    if args.tiny:
        return dict(frames=13, height=64, width=64, tile=8, overlap=2)
    return dict(frames=145, height=1024, width=576, tile=72, overlap=6)


def part_render(args, path: str, dtype_name: str) -> dict:
    import torch

    from render_gpu import matmul_tflops, run_path, unet_flops_per_frame
    from mimicmotion.tiling import tile_plan

    dtype = getattr(torch, dtype_name)
    s = _shape(args)
    pipe = _pipeline(args, dtype)
    cache = str(Path(args.work) / "inductor")
    run_path(pipe, path, s["frames"], s["height"], s["width"], 1, s["tile"], s["overlap"], args.device, cache)
    t1, _, _ = run_path(pipe, path, s["frames"], s["height"], s["width"], 1, s["tile"], s["overlap"], args.device,
                        cache)
    t3, peak, frames = run_path(pipe, path, s["frames"], s["height"], s["width"], 3, s["tile"], s["overlap"],
                                args.device, cache)
    per_step = (t3 - t1) / 2
    h, w = s["height"] // pipe.vae_scale_factor, s["width"] // pipe.vae_scale_factor
    flops_frame = unet_flops_per_frame(pipe.unet, h, w, min(8, s["tile"]), args.device, dtype)
    tiles = tile_plan(s["frames"], s["tile"], s["overlap"])
    forwards_per_step = sum(len(t) for t in tiles) * 2
    peak_tflops = matmul_tflops(args.device, dtype, n=512 if args.tiny else 8192, reps=5)
    floor_step = flops_frame * forwards_per_step / (peak_tflops * 1e12)
    torch.save((frames[:, ::8] if frames.dim() == 5 else frames[::8]).to(torch.float16),
               Path(args.work) / f"render_{path}.pt")
    out_frames = s["frames"] - 1
    return dict(path=path, dtype=dtype_name, frames=s["frames"], size=f"{s['width']}x{s['height']}",
                tiles=len(tiles), seconds_1_step=round(t1, 3), seconds_3_steps=round(t3, 3),
                seconds_per_step=round(per_step, 3), fixed_seconds=round(t1 - per_step, 3),
                seconds_25_steps=round(t1 - per_step + 25 * per_step, 2),
                s_per_frame_25_steps=round((t1 - per_step + 25 * per_step) / out_frames, 4),
                peak_vram_gib=None if peak is None else round(peak, 2),
                unet_tflops_per_frame_forward=round(flops_frame / 1e12, 3),
                achieved_tflops=round(flops_frame * forwards_per_step / max(per_step, 1e-9) / 1e12, 4),
                ratio_to_floor=round(per_step / floor_step, 2) if per_step > 0 else None,
                note="after a 1-step warm-up: per-step = (3-step run - 1-step run) / 2; 25-step time = fixed + 25 x "
                     "per-step")


def part_lean(args, frames: int) -> dict:
    import torch

    from render_gpu import run_path

    s = _shape(args)
    frames = max(s["tile"] + 1, frames if not args.tiny else {145: 13, 289: 25}[frames])
    pipe = _pipeline(args, torch.float16)
    seconds, peak, _ = run_path(pipe, "lean", frames, s["height"], s["width"], 1, s["tile"], s["overlap"],
                                args.device)
    return dict(path="lean", frames=frames, steps=1, seconds=round(seconds, 2),
                peak_vram_gib=None if peak is None else round(peak, 2))


def part_fusion(args) -> dict:
    """Fuse 3 tiles' noise predictions with the progressive weights and take one Euler step, vs one UNet
    call on one tile (both branches): the per-step work the driver adds in the distributed design."""
    import torch
    from diffusers import EulerDiscreteScheduler

    from mimicmotion.tiling import fuse_tile_outputs, tile_plan, tile_weights
    from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG

    s = _shape(args)
    dtype = torch.float16 if torch.device(args.device).type == "cuda" else torch.float32
    pipe = _pipeline(args, dtype)
    h, w = s["height"] // pipe.vae_scale_factor, s["width"] // pipe.vae_scale_factor
    tiles = tile_plan(s["frames"], s["tile"], s["overlap"])
    size = len(tiles[0])
    weights = tile_weights(size, device=args.device)
    outputs = [torch.randn(1, size, 4, h, w, device=args.device, dtype=dtype) for _ in tiles]
    latents = torch.randn(1, s["frames"], 4, h, w, device=args.device, dtype=dtype)
    sched = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG)
    sched.set_timesteps(25, device=args.device)

    def fuse_and_step():
        fused = fuse_tile_outputs(outputs, tiles, weights, s["frames"])
        sched._step_index = None
        return sched.step(fused.to(latents.dtype), sched.timesteps[1], latents).prev_sample

    unet = pipe.unet
    sample = torch.randn(2, size, 8, h, w, device=args.device, dtype=dtype)
    emb = torch.randn(2, 1, unet.config.cross_attention_dim, device=args.device, dtype=dtype)
    ids = torch.tensor([[6.0, 127.0, 0.0]] * 2, device=args.device, dtype=dtype)

    def unet_call():
        with torch.no_grad():
            return unet(sample, torch.tensor(1.0, device=args.device), encoder_hidden_states=emb,
                        added_time_ids=ids, return_dict=False)[0]

    def timed(fn, reps):
        fn()
        _sync(args.device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(args.device)
        return (time.perf_counter() - t0) / reps

    fuse_s = timed(fuse_and_step, 5)
    unet_s = timed(unet_call, 2)
    return dict(tiles=len(tiles), fuse_and_step_ms=round(fuse_s * 1e3, 3), unet_call_ms=round(unet_s * 1e3, 2),
                overhead_fraction_per_step=round(fuse_s / (unet_s * len(tiles)), 5))


def part_train(args) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_gpu.py"), "--steps", "3", "--warmup", "1",
           "--mixed-precision", "bf16", "--device", args.device, "--json", str(Path(args.work) / "train.json")]
    if args.tiny:
        cmd += ["--tiny", "--frames", "4", "--height", "64", "--width", "64", "--mixed-precision", "no"]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads((Path(args.work) / "train.json").read_text())


def part_pose(args) -> dict:
    import numpy as np

    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return {"skipped": "ai-edge-litert is not installed here (carry its wheel to measure the bundled estimator)"}
    from mimicmotion.pose.holistic import HolisticEstimator
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip

    appearance, motion = sample_clip(0)
    n = 4 if args.tiny else 32
    frames = list(render_clip_detailed(appearance, motion, 0, width=540, height=960, num_frames=n, fps=8).frames)
    est = HolisticEstimator(num_threads=min(8, os.cpu_count() or 1))
    est.estimate_batch(frames[:2])
    t0 = time.perf_counter()
    poses = est.estimate_batch(frames)
    seconds = time.perf_counter() - t0
    scores = [p[..., 2].mean() for p in poses if len(p)]
    return dict(frames=n, size="540x960", threads=est.num_threads, fps=round(n / seconds, 2),
                people_found=int(sum(len(p) > 0 for p in poses)), score_mean=float(np.mean(scores or [0])))


def parts(args) -> dict:
    out = {"env": lambda: part_env(args)}
    for path, dtype in RENDER_PATHS:
        out[f"render_{path}"] = (lambda p=path, d=dtype: part_render(args, p, d))
    out["lean_F145"] = lambda: part_lean(args, 145)
    out["lean_F289"] = lambda: part_lean(args, 289)
    out["fusion"] = lambda: part_fusion(args)
    out["train"] = lambda: part_train(args)
    out["pose"] = lambda: part_pose(args)
    return {name: out[name] for name in BUDGETS}  # the run order


# ------------------------------------------------------------------------------------------ the driver
def run_one(args) -> int:
    """Child process: run one part, write its JSON."""
    fn = parts(args)[args.part]
    t0 = time.perf_counter()
    result = fn()
    result = {"part": args.part, "status": "ok", "wall_s": round(time.perf_counter() - t0, 2), **result}
    _write(Path(args.out) / f"{args.part}.json", result)
    print(json.dumps(result), flush=True)
    return 0


def _write(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _diffs(work: Path, summary: dict) -> None:
    """max abs difference of each render path's 3-step frames against the first path's."""
    import torch

    first = None
    for path, _ in RENDER_PATHS:
        f = work / f"render_{path}.pt"
        if not f.is_file() or summary.get(f"render_{path}", {}).get("status") != "ok":
            continue
        frames = torch.load(f, weights_only=True).float()
        if first is None:
            first = (path, frames)
            continue
        summary[f"render_{path}"]["max_abs_diff_vs_" + first[0]] = round(float((frames - first[1]).abs().max()), 5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for the JSON and log")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU test)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these parts")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # child process: one part
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or str(Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_work_{os.getpid()}")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.part:
        return run_one(args)

    names = list(parts(args))
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    log = open(out / "gpu_check.log", "a")
    summary = {}
    start = time.perf_counter()
    total = TOTAL_BUDGET_S * args.budget_scale
    for name in names:
        budget = BUDGETS[name] * args.budget_scale
        if time.perf_counter() - start + budget > total and name != names[0]:
            summary[name] = {"part": name, "status": f"skipped: the call's {total:.0f} s would be exceeded"}
            _write(out / f"{name}.json", summary[name])
            print(f"{name}: {summary[name]['status']}", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out), "--device",
               args.device, "--work", args.work] + (["--tiny"] if args.tiny else [])
        t0 = time.perf_counter()
        log.write(f"\n=== {name} (budget {budget:.0f} s) ===\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=budget, cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                      [str(REPO), os.environ.get("PYTHONPATH", "")])})
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see gpu_check.log)"
        except subprocess.TimeoutExpired:
            status = f"over its {budget:.0f} s budget (stopped)"
        result_file = out / f"{name}.json"
        if status == "ok" and result_file.is_file():
            summary[name] = json.loads(result_file.read_text())
        else:
            summary[name] = {"part": name, "status": status, "wall_s": round(time.perf_counter() - t0, 2)}
            _write(result_file, summary[name])
        print(f"{name}: {summary[name]['status']} in {time.perf_counter() - t0:.1f} s", flush=True)
    _diffs(Path(args.work), summary)
    summary["_total_s"] = round(time.perf_counter() - start, 1)
    _write(out / "summary.json", summary)
    log.close()
    print(json.dumps(summary, indent=1))
    return 0 if all(v.get("status") == "ok" for k, v in summary.items() if not k.startswith("_")) else 1


if __name__ == "__main__":
    sys.exit(main())
