"""`mimicmotion synth`: the command that writes a synthetic dataset (imports the renderer only when run)."""
from __future__ import annotations

import re
from pathlib import Path

from mimicmotion.errors import ConfigError


def parse_size(text: str) -> tuple[int, int]:
    """``"128x128"`` -> (128, 128) (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 16 or int(m.group(2)) < 16:
        raise ConfigError(f"--size must be WIDTHxHEIGHT with both at least 16, e.g. 128x128; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def cmd_synth(args) -> int:
    from mimicmotion.synthetic.dataset import MANIFEST_NAME, generate_dataset

    width, height = parse_size(args.size)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.videos, unit="video", desc="synth")
    rendered = [0]

    def progress(done, total, was_rendered):
        rendered[0] += int(was_rendered)
        if bar is not None:
            bar.update(1)

    try:
        manifest = generate_dataset(args.out, args.videos, seed=args.seed, test_fraction=args.test_fraction,
                                    width=width, height=height, fps=args.fps, num_frames=args.frames,
                                    detector_noise=args.detector_noise, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    split_counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"{args.out}: {args.videos} videos ({rendered[0]} rendered, {args.videos - rendered[0]} already there), "
          f"{width}x{height}, {args.frames} frames at {args.fps:g} fps; {split_counts}; "
          f"manifest {Path(args.out) / MANIFEST_NAME}")
    return 0


def add_synth_command(subparsers):
    """Register ``mimicmotion synth`` on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "synth", help="generate procedural dancing-figure videos with exact pose sidecars (training/eval data)")
    p.add_argument("--out", required=True, help="output folder (train/, test/, manifest.json)")
    p.add_argument("--videos", type=int, default=200, help="number of videos (default 200)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", default="128x128", help="frame size WIDTHxHEIGHT (default 128x128)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate (default 24)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of videos in test/ (default 0.2)")
    p.add_argument("--detector-noise", action="store_true",
                   help="corrupt the poses like a detector would (jitter, dropped and false points); pixels unchanged")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
    return p
