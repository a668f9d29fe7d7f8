"""Serve the ad hoc render deployments: `python deployments/render.py` (keeps running; Ctrl-C stops it).

Then, from another shell (same PREFECT_API_URL):

    prefect deployment run 'render/adhoc' \\
        --param reference=ref.png --param poses=driving_poses.parquet --param ref_pose=ref_pose.parquet \\
        --param base_model=models/svd-xt --param checkpoint=models/MimicMotion_1-1.pth \\
        --param out_dir=renders --param name=my_clip --param actors=2

Outputs land in ``out_dir`` (relative paths are resolved in the directory where this script was started):
<name>.mp4, <name>_preview.mp4, <name>_thumbs.png, plus artifacts in the Prefect UI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Served from a checkout: make the repository's packages importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEPLOYMENT_NAME = "adhoc"
BATCH_DEPLOYMENT_NAME = "adhoc"


def build_deployments(name: str = DEPLOYMENT_NAME):
    from flows.render import render, render_batch

    return [render.to_deployment(name=name, description="Render one video (reference + driving) ad hoc"),
            render_batch.to_deployment(name=name, description="Render many (reference, driving) pairs")]


def main(argv=None) -> int:
    from prefect import serve

    ap = argparse.ArgumentParser(description="serve the render and render_batch flows as deployments")
    ap.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name (run as 'render/<name>')")
    args = ap.parse_args(argv)
    serve(*build_deployments(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
