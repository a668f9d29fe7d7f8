"""Prefect tasks of the `curate` flow: thin wrappers over the library (mimicmotion.curation) and the catalog.

Plain helpers (summaries, markdown, the pose-estimator context) sit next to the tasks so they can be
tested without Prefect running.
"""
from __future__ import annotations

import datetime as _dt
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalog.ingest import KnownVideos, VideoOutcome, curate_file
from catalog.store import SHEETS_DIR, clean_staging, init_catalog
from mimicmotion.curation import CurationSettings, find_videos

SUMMARY_ARTIFACT_KEY = "curate-summary"
SHEET_ARTIFACT_KEY = "curate-contact-sheet"
MAX_LISTED_OK = 100  # the markdown lists every failure but at most this many good videos


class LazyEstimator:
    """Creates the pose estimator on first use, once, thread-safely: a run whose videos all bring their
    own sidecar poses (or fail before detection) never loads a model."""

    def __init__(self, factory):
        self._factory = factory
        self._lock = threading.Lock()
        self.estimator = None

    def get(self):
        with self._lock:
            if self.estimator is None:
                self.estimator = self._factory()
        return self.estimator

    def estimate_batch(self, frames) -> list:
        return self.get().estimate_batch(frames)

    @property
    def name(self) -> str:
        return self.get().name

    @property
    def version(self) -> str:
        return self.get().version

    def estimate_batches(self, batches):
        estimator = self.get()
        if hasattr(estimator, "estimate_batches"):
            yield from estimator.estimate_batches(batches)
        else:
            for batch in batches:
                yield estimator.estimate_batch(batch)


@contextmanager
def pose_estimator(dwpose_dir=None, use_ray: bool = False, actors: int = 2, ray_address: Optional[str] = None,
                   use_gpus: Optional[bool] = None, pose_batch_size: int = 32, lazy: bool = False,
                   estimator: str = "auto"):
    """The pose estimator (``estimator``: auto, dwpose or mediapipe; see mimicmotion.pose.estimators) in
    this process, or a pool of Ray actors running it (a Ray started here is shut down on exit).

    ``lazy``: load on first use (for ``pose_source="auto"``); otherwise load now, so missing model files
    stop the run before any video is looked at."""
    from mimicmotion.pose.estimators import choose_pose_estimator, make_pose_estimator

    choice = choose_pose_estimator(estimator, dwpose_dir)
    ray_started = False
    pool = None

    def load():
        nonlocal ray_started, pool
        if not use_ray:
            return make_pose_estimator(choice.name, dwpose_dir, pose_batch_size=pose_batch_size, announce=False)
        from tasks.ray_pose import RayPoseEstimator, ensure_ray

        ray_started = ensure_ray(address=ray_address)
        pool = RayPoseEstimator(dwpose_dir, num_actors=actors, use_gpus=use_gpus, pose_batch_size=pose_batch_size,
                                estimator=choice.name)
        return pool

    try:
        yield LazyEstimator(load) if lazy else load()
    finally:
        if pool is not None:
            pool.close()
        if ray_started:
            import ray

            ray.shutdown()


@task(name="find-videos", cache_policy=NO_CACHE)
def find_videos_task(inputs: Sequence[str], recursive: bool = True, settle_seconds: float = 0.0) -> list[str]:
    paths = [str(p) for p in find_videos(inputs, recursive=recursive, settle_seconds=settle_seconds)]
    get_run_logger().info("%d video file(s) to look at", len(paths))
    return paths


@task(name="open-catalog", cache_policy=NO_CACHE)
def open_catalog_task(catalog=None) -> tuple[str, KnownVideos]:
    """Create the catalog layout and its index if needed, remove leftovers of killed runs, read the known
    videos."""
    root = init_catalog(catalog)
    removed = clean_staging(root)
    logger = get_run_logger()
    if removed:
        logger.info("removed %d unfinished write(s) of earlier runs: %s", len(removed), ", ".join(removed))
    from catalog.index import ensure_index

    ensure_index(root)  # queryable from the start: the views show each video as it is committed
    known = KnownVideos.load(root)
    logger.info("catalog %s holds %d video(s)", root, len(known.status))
    return str(root), known


@task(name="curate-video", cache_policy=NO_CACHE, task_run_name="curate-{path}")
def curate_video_task(path: str, root: str, settings: CurationSettings, pose_source: str, estimator,
                      known: KnownVideos, retry_failed: bool = False, batch_size: int = 16) -> VideoOutcome:
    outcome = curate_file(path, root, settings, pose_source=pose_source, estimator=estimator, known=known,
                          retry_failed=retry_failed, batch_size=batch_size)
    logger = get_run_logger()
    if outcome.status == "failed":
        logger.warning("%s failed (%s): %s", Path(path).name, outcome.error_kind, outcome.reason)
    else:
        logger.info("%s: %s%s", Path(path).name, outcome.status,
                    f", {outcome.num_clips} clip(s)" if outcome.status == "ok" else f" ({outcome.reason})")
    return outcome


@task(name="index-catalog", cache_policy=NO_CACHE)
def index_catalog_task(root: str) -> dict:
    """Make sure the DuckDB views exist and count what the catalog holds through them."""
    from catalog.index import ensure_index, run_query

    ensure_index(root)
    videos = run_query("SELECT status, count(*) AS n FROM videos GROUP BY status", root=root).to_pylist()
    clips = run_query("SELECT count(*) AS n FROM clips", root=root).to_pylist()[0]["n"]
    return {"videos": {r["status"]: r["n"] for r in videos}, "clips": clips}


@task(name="contact-sheet", cache_policy=NO_CACHE)
def contact_sheet_task(root: str, outcomes: Sequence[VideoOutcome], max_tiles: int = 12,
                       run_label: str = "") -> Optional[str]:
    """A PNG of pose overlays on the clips made in this run (None when the run made none)."""
    from catalog.api import Catalog
    from catalog.contact_sheet import pick_clips, write_contact_sheet

    clip_ids = pick_clips([o.clip_ids for o in outcomes if o.status == "ok"], max_tiles)
    if not clip_ids:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"curate-{stamp}{'-' + run_label if run_label else ''}.png"
    try:
        return str(write_contact_sheet(Catalog(root), clip_ids, Path(root) / SHEETS_DIR / name))
    except Exception as exc:  # the sheet is a preview: the catalogue is already written, the run goes on
        get_run_logger().warning("no contact sheet for this run: %s", exc)
        return None


def summarize(outcomes: Sequence[VideoOutcome], wall_s: float, root: str, catalog_counts: Optional[dict] = None,
              contact_sheet: Optional[str] = None) -> dict:
    """The run's counts: ok / skipped / failed, clips, and throughput in video-seconds per wall-second
    (over the videos processed in this run, skipped ones excluded)."""
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("ok", "skipped", "failed")}
    video_seconds = sum(o.duration_s for o in outcomes if o.status != "skipped")
    return {
        "catalog": root, "videos": len(outcomes), **counts,
        "clips": sum(o.num_clips for o in outcomes),
        "video_seconds": video_seconds, "wall_s": wall_s,
        "throughput": video_seconds / wall_s if wall_s > 0 else 0.0,
        "failures": [{"path": o.path, "kind": o.error_kind, "reason": o.reason} for o in outcomes
                     if o.status == "failed"],
        "catalog_counts": catalog_counts or {}, "contact_sheet": contact_sheet,
    }


def _cell(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def _catalog_counts(counts: dict) -> str:
    by_status = counts.get("videos", {})
    detail = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    return f"{sum(by_status.values())} video(s) ({detail or 'none'}) and {counts.get('clips', 0)} clip(s)"


def summary_markdown(summary: dict, outcomes: Sequence[VideoOutcome]) -> str:
    """The run summary as markdown: counts, then one row per failed video and the first good ones."""
    lines = [
        f"# Curation run: {summary['ok']} ok, {summary['skipped']} skipped, {summary['failed']} failed",
        "",
        "| videos | ok | skipped | failed | clips | video s | wall s | video s / wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['videos']} | {summary['ok']} | {summary['skipped']} | {summary['failed']} | {summary['clips']} | "
        f"{summary['video_seconds']:.1f} | {summary['wall_s']:.1f} | {summary['throughput']:.2f} |",
        "",
        f"Catalog `{summary['catalog']}` now holds {_catalog_counts(summary['catalog_counts'])}.",
        "",
        "| file | status | clips | reason |",
        "|---|---|---|---|",
    ]
    listed_ok = 0
    for o in outcomes:
        if o.status != "failed":
            listed_ok += 1
            if listed_ok > MAX_LISTED_OK:
                continue
        reason = f"{o.error_kind}: {o.reason}" if o.status == "failed" else o.reason
        lines.append(f"| {_cell(Path(o.path).name)} | {o.status} | {o.num_clips} | {_cell(reason)} |")
    if listed_ok > MAX_LISTED_OK:
        lines.append(f"| ... {listed_ok - MAX_LISTED_OK} more ok/skipped | | | |")
    return "\n".join(lines) + "\n"


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts_task(summary: dict, outcomes: Sequence[VideoOutcome]) -> None:
    create_markdown_artifact(summary_markdown(summary, outcomes), key=SUMMARY_ARTIFACT_KEY,
                             description="curation run: counts and per-video results")
    sheet = summary.get("contact_sheet")
    if sheet:
        uri = Path(sheet).resolve().as_uri()
        create_markdown_artifact(f"# Contact sheet\n\n![contact sheet]({uri})\n\n[{Path(sheet).name}]({uri})\n",
                                 key=SHEET_ARTIFACT_KEY, description="pose overlays on the clips of this run")
