"""Serve the scheduled inbox-curation deployment `curate/inbox` (keeps running; Ctrl-C stops it).

    prefect server start                                   # shell 1: a local Prefect server (UI on :4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api       # shells 2 and 3
    python deployments/curate.py --inbox /data/inbox --catalog /data/catalog \\
        --cron "*/30 * * * *" --pose-source auto            # shell 2 (+ --dwpose-dir DIR for DWPose)
    prefect deployment run 'curate/inbox'                  # shell 3: run now instead of waiting
    prefect deployment run 'curate/inbox' --param use_ray=true --param actors=4

Every scheduled run curates the videos that arrived in the inbox since the last one: finished videos are
skipped by content hash, files modified in the last ``--settle-seconds`` (still being copied) wait for the
next run, and at most one run is active at a time. Any flow parameter can be overridden per run with
``--param`` (see ``flows/curate.py``); ``--param key=value`` here sets the deployment's defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Served from a checkout: make the repository's packages importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEPLOYMENT_NAME = "inbox"
DEFAULT_CRON = "0 * * * *"  # hourly
DEFAULT_SETTLE_SECONDS = 120.0


def build_deployment(inbox: str, catalog: str | None = None, cron: str = DEFAULT_CRON, timezone: str = "UTC",
                     name: str = DEPLOYMENT_NAME, settle_seconds: float = DEFAULT_SETTLE_SECONDS,
                     parameters: dict | None = None, paused: bool = False):
    """The RunnerDeployment of the `curate` flow over ``inbox`` on a cron schedule (one run at a time)."""
    from prefect.schedules import Cron

    from flows.curate import curate
    from mimicmotion.errors import ConfigError

    inbox_path = Path(inbox).expanduser().resolve()
    if not inbox_path.is_dir():
        raise ConfigError(f"inbox folder {inbox_path} does not exist: create it or pass --inbox DIR")
    params = {"inputs": [str(inbox_path)], "settle_seconds": float(settle_seconds)}
    if catalog is not None:
        params["catalog"] = str(Path(catalog).expanduser().resolve())
    params.update(parameters or {})
    return curate.to_deployment(
        name=name, schedule=Cron(cron, timezone=timezone), parameters=params, concurrency_limit=1, paused=paused,
        description=f"Curate new videos from {inbox_path} into the catalog ({cron}, {timezone})",
        tags=["curation"],
    )


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, lists
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    from mimicmotion.lifecycle import exit_cleanly_on_sigterm, reap_descendants_on_exit

    if argv is None:  # run as a program: the flow runs' servers and agents die with it
        reap_descendants_on_exit()
        exit_cleanly_on_sigterm()
    from prefect import serve

    ap = argparse.ArgumentParser(description="serve the scheduled inbox curation (flow `curate`)")
    ap.add_argument("--inbox", required=True, help="folder watched for new videos")
    ap.add_argument("--catalog", default=None, help="catalog folder (default: $MIMICMOTION_CATALOG or the user's)")
    ap.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule, cron syntax (default: '{DEFAULT_CRON}')")
    ap.add_argument("--timezone", default="UTC", help="time zone of the cron schedule (default: UTC)")
    ap.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name (runs as 'curate/<name>')")
    ap.add_argument("--settle-seconds", type=float, default=DEFAULT_SETTLE_SECONDS,
                    help="leave files modified more recently for the next run (default: 120)")
    ap.add_argument("--pose-source", choices=("detect", "sidecar", "auto", "dwpose"), default=None)
    ap.add_argument("--pose-estimator", choices=("auto", "dwpose", "mediapipe"), default=None,
                    help="pose estimator for detection (default auto: DWPose when its files are found, else the "
                         "bundled MediaPipe Holistic models)")
    ap.add_argument("--dwpose-dir", default=None, help="folder with the DWPose ONNX files")
    ap.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                    help="default for any other flow parameter (JSON values), e.g. use_ray=true")
    ap.add_argument("--paused", action="store_true", help="create the schedule paused")
    args = ap.parse_args(argv)
    extra = dict(args.param)
    if args.pose_source:
        extra["pose_source"] = args.pose_source
    if args.pose_estimator:
        extra["pose_estimator"] = args.pose_estimator
    if args.dwpose_dir:
        extra["dwpose_dir"] = str(Path(args.dwpose_dir).expanduser().resolve())
    deployment = build_deployment(args.inbox, args.catalog, args.cron, args.timezone, args.name, args.settle_seconds,
                                  extra, args.paused)
    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
