"""`mimicmotion` command line. Every user-facing failure prints one clear line and exits with code 1."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mimicmotion.errors import MimicMotionError

DWPOSE_ENV = "MIMICMOTION_DWPOSE_DIR"


def _add_dwpose_dir(p: argparse.ArgumentParser, required_hint: str = "") -> None:
    from mimicmotion.pose.estimators import DEFAULT_POSE_ESTIMATOR, POSE_ESTIMATORS

    p.add_argument("--pose-estimator", choices=POSE_ESTIMATORS, default=DEFAULT_POSE_ESTIMATOR,
                   help="dwpose (the method's; needs its two ONNX files), mediapipe (bundled MediaPipe Holistic "
                        "models, no download) or auto (default: DWPose when its files are found, else mediapipe)")
    p.add_argument("--dwpose-dir", default=None,
                   help=f"folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (default: ${DWPOSE_ENV} or "
                        f"~/.cache/mimicmotion/dwpose){required_hint}")


def _estimator(args):
    from mimicmotion.pose.estimators import choose_pose_estimator, make_pose_estimator

    choice = choose_pose_estimator(args.pose_estimator, args.dwpose_dir)
    print(choice.describe())  # stdout: stderr holds only the one error line when something fails
    return make_pose_estimator(choice.name, args.dwpose_dir, announce=False)


# ---------------------------------------------------------------------------------------------- pose
def cmd_pose(args) -> int:
    from mimicmotion.pose.extract import extract_image_pose, extract_video_poses, is_image_path, load_image_rgb
    from mimicmotion.pose.io import save_poses

    src = Path(args.input)
    if not src.exists():
        raise MimicMotionError(f"input not found: {src}")
    estimator = _estimator(args)
    if is_image_path(src):
        image = load_image_rgb(src)
        if args.resolution:
            from mimicmotion.render import prepare_reference

            image = prepare_reference(src, args.resolution)
        seq = extract_image_pose(image, estimator, source=str(src.resolve()))
    else:
        seq = extract_video_poses(src, estimator, sample_stride=args.sample_stride, batch_size=args.batch_size,
                                  progress=not args.quiet)
    save_poses(args.out, seq)
    people = [len(f) for f in seq.frames]
    print(f"wrote {args.out}: {len(seq)} frames ({seq.width}x{seq.height}, {seq.fps:g} fps), "
          f"{sum(people)} person detections, {sum(1 for n in people if n == 0)} frames without a person")
    if args.pose_video:
        _write_pose_video(seq, args.pose_video, args.pose_video_height)
        print(f"wrote {args.pose_video}")
    return 0


def _write_pose_video(seq, path, height: int | None) -> None:
    from mimicmotion.pose.draw import draw_pose
    from mimicmotion.video import write_video

    h, w = seq.height, seq.width
    if height:  # draw at a smaller size for quick previews; keep the aspect, even sizes
        w = max(2, round(w * height / h / 2) * 2)
        h = height
    write_video(path, (draw_pose(f, h, w) for f in seq.frames), fps=seq.fps or 15.0)


# ---------------------------------------------------------------------------------------------- render
def cmd_render(args) -> int:
    import torch

    from mimicmotion.loading import load_pipeline
    from mimicmotion.pose.io import load_poses
    from mimicmotion.render import RenderSettings, render_video

    sources = [name for name, value in (("--poses", args.poses), ("--driving", args.driving),
                                        ("--clip-id", args.clip_id)) if value]
    if len(sources) != 1:
        raise MimicMotionError("pass exactly one driving source: --poses POSES.parquet (from `mimicmotion pose`), "
                               "--driving VIDEO or --clip-id ID (a clip of the catalog)"
                               + (f"; got {' and '.join(sources)}" if sources else ""))
    settings = RenderSettings(
        resolution=args.resolution, sample_stride=args.sample_stride, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap, num_inference_steps=args.steps, min_guidance_scale=args.guidance,
        max_guidance_scale=args.guidance, noise_aug_strength=args.noise_aug_strength,
        decode_chunk_size=args.decode_chunk_size, seed=args.seed, fps=args.fps, max_frames=args.max_frames,
    )
    # Every check that needs no model, before the pose estimator or the pipeline loads.
    from mimicmotion.devices import resolve_device
    from mimicmotion.video import check_output_path

    args.ref_pose = args.ref_pose or None  # --ref-pose "" means: detect the reference pose
    check_output_path(args.out, "--out video")
    preview = _preview_path(args)
    if preview is not None:
        check_output_path(preview, "--preview video")
    device = resolve_device(args.device)
    if args.vae_device:
        resolve_device(args.vae_device)
    if args.actors < 0:
        raise MimicMotionError(f"--actors must be >= 0 (got {args.actors})")
    settings.validate()
    if not Path(args.ref).is_file():
        raise MimicMotionError(f"reference image not found: {args.ref}")
    from mimicmotion.loading import check_base_model_dir

    check_base_model_dir(args.base_model)
    if not Path(args.checkpoint).is_file():
        raise MimicMotionError(f"checkpoint not found: {args.checkpoint} (the MimicMotion .pth or .safetensors file)")
    needs_dwpose = args.ref_pose is None or args.driving is not None
    estimator = _estimator(args) if needs_dwpose else None
    if args.clip_id:
        from catalog import Catalog  # poses already in the catalog: no re-detection

        try:
            driving_poses = Catalog(args.catalog).clip_poses(args.clip_id)
        except KeyError:
            raise MimicMotionError(f"clip id {args.clip_id!r} is not in the catalog {args.catalog or '(default)'}: "
                                   "list clips with `mimicmotion catalog query \"SELECT clip_id FROM clips\"`")
    else:
        driving_poses = load_poses(args.poses) if args.poses else None
    ref_pose = load_poses(args.ref_pose) if args.ref_pose else None
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    pipeline_options = dict(decode_device=args.vae_device)
    executor = _ray_executor(args) if args.actors else None
    try:
        if executor is not None:
            pipeline_options["tile_executor"] = executor
        result = render_video(
            args.ref, args.out, pipe_loader=lambda: load_pipeline(args.base_model, args.checkpoint, dtype=dtype,
                                                                 device=device),
            settings=settings, device=device, pipeline_options=pipeline_options,
            driving_poses=driving_poses, driving_video=args.driving, estimator=estimator, ref_pose=ref_pose,
            audio_from=False if args.no_audio else None, preview_path=preview,
        )
    finally:
        if executor is not None:
            executor.close()
    print(f"wrote {result.video_path}: {result.num_frames} frames {result.width}x{result.height} at "
          f"{result.fps:g} fps, audio {'kept' if result.has_audio else 'none'}")
    if result.preview_path is not None:
        print(f"wrote {result.preview_path} (reference | pose | output)")
    return 0


def _preview_path(args):
    if args.no_preview:
        return None
    if args.preview:
        return args.preview
    out = Path(args.out)
    return out.with_name(f"{out.stem}_preview{out.suffix or '.mp4'}")


def _ray_executor(args):
    """Resident Ray actors that run the denoising tiles (exact per-step fusion stays on this process)."""
    try:
        from tasks.ray_render import ModelSpec, RayTileExecutor, ensure_ray
    except ImportError as exc:
        raise MimicMotionError(f"--actors needs Ray (pip install 'ray[default]'): {exc}") from exc
    from mimicmotion.loading import check_base_model_dir

    check_base_model_dir(args.base_model)
    if not Path(args.checkpoint).is_file():
        raise MimicMotionError(f"checkpoint not found: {args.checkpoint}")
    ensure_ray(address=args.ray_address)
    return RayTileExecutor(ModelSpec(args.base_model, args.checkpoint, args.dtype), num_actors=args.actors)


# ---------------------------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from mimicmotion.loading import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from mimicmotion.demo import format_outputs, hide_prefect_info, run_demo

    if not args.verbose:
        hide_prefect_info()  # the demo prints its own progress; flow logs stay in Prefect's database

    out = run_demo(args.out, model_dir=args.model_dir, actors=args.actors, steps=args.steps, frames=args.frames,
                   quick=args.quick, progress=not args.quiet)
    print(format_outputs(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mimicmotion", description="MimicMotion pose-driven human animation")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pose", help="extract whole-body keypoints (DWPose, or the bundled estimator) of a video or "
                                    "image to a Parquet pose file")
    p.add_argument("input", help="video file, or an image (e.g. the reference)")
    p.add_argument("--out", required=True, help="output pose file (.parquet)")
    _add_dwpose_dir(p)
    p.add_argument("--sample-stride", type=int, default=2,
                   help="sample every N-th frame at 24 fps (scaled up for faster videos); release: 2")
    p.add_argument("--batch-size", type=int, default=16, help="frames decoded and detected per batch")
    p.add_argument("--resolution", type=int, default=0,
                   help="for an image: first resize+crop it as the render does to the reference (e.g. 576)")
    p.add_argument("--pose-video", help="also write the confidence-aware pose images as an mp4")
    p.add_argument("--pose-video-height", type=int, default=None, help="draw the pose video at this height")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pose)

    r = sub.add_parser("render", help="animate a reference image with driving poses")
    r.add_argument("--ref", required=True, help="reference image (one person)")
    r.add_argument("--poses", help="driving pose file from `mimicmotion pose`")
    r.add_argument("--driving", help="driving video (poses detected with --pose-estimator; its audio is kept)")
    r.add_argument("--clip-id", help="drive with a catalog clip's poses (see `mimicmotion catalog query`)")
    r.add_argument("--catalog", default=None, help="catalog folder for --clip-id (default: $MIMICMOTION_CATALOG)")
    r.add_argument("--ref-pose", help="pose file of the reference image (otherwise detected with --pose-estimator)")
    _add_dwpose_dir(r)
    r.add_argument("--base-model", required=True, help="Stable Video Diffusion img2vid-xt folder (diffusers layout)")
    r.add_argument("--checkpoint", required=True, help="MimicMotion checkpoint (.pth or .safetensors)")
    r.add_argument("--out", required=True, help="output mp4")
    r.add_argument("--resolution", type=int, default=576)
    r.add_argument("--sample-stride", type=int, default=2)
    r.add_argument("--tile-size", type=int, default=72)
    r.add_argument("--tile-overlap", type=int, default=6)
    r.add_argument("--steps", type=int, default=25)
    r.add_argument("--guidance", type=float, default=2.0)
    r.add_argument("--noise-aug-strength", type=float, default=0.0)
    r.add_argument("--decode-chunk-size", type=int, default=8)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--fps", type=float, default=None, help="output fps (default: sampled driving fps, keeps sync)")
    r.add_argument("--max-frames", type=int, default=None, help="render only the first N driving frames")
    r.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    r.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    r.add_argument("--vae-device", default=None, help="run the VAE decoder here (e.g. cpu) to save GPU memory")
    r.add_argument("--no-audio", action="store_true", help="do not copy the driving video's audio")
    r.add_argument("--preview", default=None,
                   help="side-by-side preview mp4, reference | pose | output (default: OUT_preview.mp4)")
    r.add_argument("--no-preview", action="store_true", help="do not write the preview")
    r.add_argument("--actors", type=int, default=0,
                   help="denoise on N Ray actors (one GPU each when the cluster has them); 0 = in this process")
    r.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    r.set_defaults(func=cmd_render)

    from mimicmotion.demo import DEMO_ACTORS, DEMO_FRAMES, DEMO_STEPS, QUICK_FRAMES, QUICK_STEPS

    d = sub.add_parser("demo", help="the main job on a generated sample: curate flow -> render flow on the demo "
                                     "model with Ray actors (CPU, about a minute)")
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    d.add_argument("--model-dir", default=None,
                   help="demo model folder: base/ + mimicmotion-demo.safetensors (default: the one in the package)")
    d.add_argument("--actors", type=int, default=DEMO_ACTORS,
                   help=f"Ray actors that denoise (0 = in this process; default {DEMO_ACTORS})")
    d.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps (default {DEMO_STEPS}; {QUICK_STEPS} with --quick)")
    d.add_argument("--frames", type=int, default=None, help=f"driving clip frames at 24 fps (default {DEMO_FRAMES}; "
                                                           f"{QUICK_FRAMES} with --quick); every second one is rendered")
    d.add_argument("--quick", action="store_true",
                   help=f"the short run CI uses: {QUICK_FRAMES} frames, {QUICK_STEPS} steps")
    d.add_argument("--quiet", action="store_true", help="print only where the outputs are")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("export-checkpoint", help="convert a .pth checkpoint to safetensors (same keys)")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)

    from catalog.cli import add_catalog_commands

    add_catalog_commands(sub)

    from mimicmotion.training.cli import add_train_command

    add_train_command(sub)

    from mimicmotion.evaluation import add_evaluate_command

    add_evaluate_command(sub)

    from mimicmotion.synthetic.cli import add_synth_command

    add_synth_command(sub)
    return ap


def main(argv=None) -> int:
    if argv is None:  # a real command (not a call from Python): its servers and agents die with it
        from mimicmotion.lifecycle import exit_cleanly_on_sigterm, reap_descendants_on_exit

        reap_descendants_on_exit()
        exit_cleanly_on_sigterm()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except MimicMotionError as exc:
        if args.verbose:
            raise
        print(f"mimicmotion {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code > 128:  # SIGTERM (see mimicmotion.lifecycle)
            print(f"stopped by signal {exc.code - 128}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
