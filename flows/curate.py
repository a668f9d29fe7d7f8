"""Prefect flow `curate`: videos (files or folders) -> poses -> subject, clips and crops -> catalog.

    from flows.curate import curate
    curate(inputs=["inbox/"], catalog="my-catalog", pose_source="auto", pose_estimator="auto")

Per video: hash (skip if the catalog has it) -> probe -> poses (DWPose or the bundled Holistic estimator, or the
sidecar <stem>.poses.parquet)
-> subject, person-centred 9:16 crop, clips cut at personless frames -> Parquet, committed atomically.
Then the DuckDB views are (re)built if needed, a contact sheet of pose overlays is drawn, and a markdown
summary plus the contact sheet are published as artifacts. Bad videos are recorded as failed rows and the
run goes on. With ``use_ray`` pose detection runs on ``actors`` Ray actors, each holding the pose models.
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import ExitStack
from typing import Optional

from prefect import flow, get_run_logger

from mimicmotion.curation import POSE_SOURCES, CurationSettings, sidecar_path
from mimicmotion.errors import ConfigError
from tasks.curate import (contact_sheet_task, curate_video_task, find_videos_task, index_catalog_task,
                          open_catalog_task, publish_artifacts_task, summarize)
from tasks.curate import pose_estimator as pose_estimator_context


def check_run_options(pose_source: str, use_ray: bool, actors: int, workers: Optional[int], batch_size: int,
                      contact_sheet_tiles: int) -> int:
    """Validate the run options (before any work); returns the number of videos in flight."""
    if pose_source not in POSE_SOURCES:
        raise ConfigError(f"pose_source must be one of {', '.join(POSE_SOURCES)}, got {pose_source!r}")
    for name, value, low in (("actors", actors, 1), ("batch_size", batch_size, 1),
                             ("contact_sheet_tiles", contact_sheet_tiles, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if workers is None:
        return actors if use_ray else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers (videos in flight) must be an integer >= 1, got {workers!r}")
    return workers


def detection_estimator(pose_source: str, pose_estimator: str) -> str:
    """The estimator name to detect with: ``pose_source="dwpose"`` (the older spelling) means DWPose."""
    from mimicmotion.pose.estimators import check_pose_estimator

    choice = check_pose_estimator(pose_estimator)
    if pose_source == "dwpose":
        if choice == "mediapipe":
            raise ConfigError("pose_source='dwpose' asks for DWPose but pose_estimator='mediapipe': use "
                              "pose_source='detect' with pose_estimator='mediapipe'")
        return "dwpose"
    return choice


@flow(name="curate", log_prints=True)
def curate(
    inputs: list[str],
    catalog: Optional[str] = None,
    pose_source: str = "detect",
    dwpose_dir: Optional[str] = None,
    pose_estimator: str = "auto",
    sample_stride: int = 2,
    clip_length: int = 72,
    clip_stride: Optional[int] = None,
    min_clip_length: int = 16,
    aspect: str = "9:16",
    resolution: int = 576,
    min_crop_fraction: float = 1.0,
    crop_margin: float = 0.05,
    use_ray: bool = False,
    actors: int = 2,
    ray_address: Optional[str] = None,
    workers: Optional[int] = None,
    batch_size: int = 16,
    retry_failed: bool = False,
    recursive: bool = True,
    settle_seconds: float = 0.0,
    contact_sheet_tiles: int = 12,
) -> dict:
    """Curate videos into the catalog (default folder: $MIMICMOTION_CATALOG or ~/.local/share/mimicmotion/catalog).

    ``pose_source``: detect, sidecar (<stem>.poses.parquet next to each video) or auto (sidecar when present,
    else detect); dwpose is detect with DWPose. ``pose_estimator``: auto (DWPose when its files are found,
    else the bundled MediaPipe Holistic models), dwpose or mediapipe. ``workers``: videos processed at once
    (default 1, or ``actors`` with Ray).
    ``settle_seconds``: skip files modified more recently (still being copied into an inbox).
    Returns the run summary (counts ok / skipped / failed, clips, throughput, contact sheet path)."""
    start = time.perf_counter()
    logger = get_run_logger()
    settings = CurationSettings(sample_stride=sample_stride, clip_length=clip_length, clip_stride=clip_stride,
                                min_clip_length=min_clip_length, aspect=aspect, resolution=resolution,
                                min_crop_fraction=min_crop_fraction, crop_margin=crop_margin).validate()
    in_flight = check_run_options(pose_source, use_ray, actors, workers, batch_size, contact_sheet_tiles)
    estimator_name = detection_estimator(pose_source, pose_estimator)
    paths = find_videos_task(list(inputs), recursive=recursive, settle_seconds=settle_seconds)
    root, known = open_catalog_task(catalog)
    # The estimator is loaded up front for detect/dwpose (missing model files stop the run before any
    # video), and only once a video without a sidecar reaches detection for "auto".
    needs_detection = pose_source in ("detect", "dwpose") or (pose_source == "auto" and any(
        not sidecar_path(p).is_file() for p in paths))
    if needs_detection and paths:
        from mimicmotion.pose.estimators import choose_pose_estimator

        logger.info("%s", choose_pose_estimator(estimator_name, dwpose_dir).describe())
    outcomes = []
    with ExitStack() as stack:
        estimator = None
        if needs_detection and paths:
            estimator = stack.enter_context(pose_estimator_context(
                dwpose_dir, use_ray=use_ray, actors=actors, ray_address=ray_address, lazy=pose_source == "auto",
                estimator=estimator_name))
        running: deque = deque()
        for path in paths:
            if len(running) >= in_flight:
                outcomes.append(running.popleft().result())
            running.append(curate_video_task.submit(path, root, settings, pose_source, estimator, known,
                                                    retry_failed=retry_failed, batch_size=batch_size))
        while running:
            outcomes.append(running.popleft().result())
    counts = index_catalog_task(root)
    sheet = contact_sheet_task(root, outcomes, contact_sheet_tiles) if contact_sheet_tiles else None
    summary = summarize(outcomes, time.perf_counter() - start, root, counts, sheet)
    publish_artifacts_task(summary, outcomes)
    logger.info("curated %d video(s): %d ok, %d skipped, %d failed; %d clip(s); %.2f video-s per wall-s",
                summary["videos"], summary["ok"], summary["skipped"], summary["failed"], summary["clips"],
                summary["throughput"])
    return summary
