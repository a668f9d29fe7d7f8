"""`mimicmotion catalog rebuild|query|stats` and `mimicmotion curate` (registered by add_catalog_commands).

Handlers return an exit code; user-facing problems raise MimicMotionError, which the main CLI prints as
one line before exiting with code 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from typing import Optional

import pyarrow as pa

from mimicmotion.errors import ConfigError, MimicMotionError

FORMATS = ("table", "csv", "json")
# A file still growing (a copy or download in progress) would be curated half-written; one not modified for
# this long is taken as complete. The scheduled deployment waits longer (deployments/curate.py).
CLI_SETTLE_SECONDS = 10.0


def _catalog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", default=None,
                   help="catalog folder (default: $MIMICMOTION_CATALOG or ~/.local/share/mimicmotion/catalog)")


# ---------------------------------------------------------------------------------------------- output
def _plain(value):
    """A JSON/CSV-friendly value: NaN -> None, lists summarised only in tables, timestamps as ISO text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _table_cell(value, width: int = 40) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return f"[{len(value)} values]"
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(_plain(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(table: pa.Table, max_rows: Optional[int] = None) -> str:
    """A plain-text table (columns padded, long cells and lists shortened)."""
    rows = table.to_pylist()
    shown = rows if max_rows is None else rows[:max_rows]
    header = table.column_names
    cells = [[_table_cell(r[c]) for c in header] for r in shown]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    more = len(rows) - len(shown)
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
                 f"{f', {more} not shown: use --format csv or json for all' if more else ''})")
    return "\n".join(lines)


def format_csv(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([json.dumps(_plain(v)) if isinstance(v, list) else
                         ("" if _plain(v) is None else _plain(v)) for v in row.values()])
    return out.getvalue()


def format_json(table: pa.Table) -> str:
    return json.dumps([{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()], indent=1)


def render(table: pa.Table, fmt: str, max_rows: Optional[int] = None) -> str:
    if fmt == "csv":
        return format_csv(table)
    if fmt == "json":
        return format_json(table) + "\n"
    return format_table(table, max_rows) + "\n"


def parse_params(items) -> dict:
    """``["min_frames=32", "name=x"]`` -> {"min_frames": "32", "name": "x"} (values converted later)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.strip()] = value
    return params


# ---------------------------------------------------------------------------------------------- handlers
def cmd_catalog_rebuild(args) -> int:
    from catalog.index import rebuild_index
    from catalog.store import committed_video_ids

    path = rebuild_index(args.catalog)
    print(f"rebuilt {path}: views videos, clips, poses over {len(committed_video_ids(path.parent))} video folder(s)")
    return 0


def cmd_catalog_query(args) -> int:
    from catalog.api import Catalog
    from catalog.queries import NAMED_QUERIES, ad_hoc_params

    if args.list:
        for q in NAMED_QUERIES.values():
            params = ", ".join(f"{n}={p.default}" if p.default is not None else f"{n} (required)"
                               for n, p in q.params.items())
            print(f"{q.name}: {q.description}" + (f"\n    parameters: {params}" if params else ""))
        return 0
    params = parse_params(args.param)
    cat = Catalog(args.catalog)
    if args.named:
        if args.sql:
            raise ConfigError("give either SQL or --named NAME, not both")
        table = cat.named(args.named, **params)
    elif args.sql:
        table = cat.query(args.sql, ad_hoc_params(params))
    else:
        raise ConfigError('pass SQL, e.g. mimicmotion catalog query "SELECT count(*) FROM clips", '
                          "or --named NAME (see --list)")
    sys.stdout.write(render(table, args.format, args.max_rows))
    return 0


def cmd_catalog_stats(args) -> int:
    from catalog.api import Catalog

    cat = Catalog(args.catalog)
    stats = cat.stats()
    if args.format == "json":
        print(json.dumps(_plain(stats), indent=1))
        return 0
    by_status = {r["status"]: r for r in stats["videos"]}
    total = sum(r["videos"] for r in stats["videos"])
    ok = by_status.get("ok", {})
    clips = stats["clips"]
    print(f"catalog {cat.root}")
    print(f"videos: {total} ({ok.get('videos', 0)} ok, {by_status.get('failed', {}).get('videos', 0)} failed); "
          f"{ok.get('seconds') or 0:.1f} s of good video")
    for r in stats["failures"]:
        print(f"  failed ({r['error_kind']}): {r['videos']}")
    print(f"clips: {clips['clips']} ({clips['frames']} frames, {clips['seconds']:.1f} s); "
          f"{clips['single_person_clips']} with one person")
    if clips["clips"]:
        print(f"mean quality: body {clips['body_conf']:.3f}, hands {clips['hand_conf']:.3f}, "
              f"face {clips['face_conf']:.3f}, both hands reliable {clips['both_hands']:.3f}, "
              f"coverage {clips['coverage']:.3f}, motion {clips['motion'] or 0:.3f} crop heights/s")
    print(f"pose rows: {stats['poses']['rows']} ({stats['poses']['subject_rows']} subject)")
    print(f"parquet size: {stats['bytes'] / 1e6:.1f} MB")
    return 0


def cmd_curate(args) -> int:
    from flows.curate import curate
    from mimicmotion.demo import prefect_session

    with prefect_session():  # PREFECT_API_URL's server, else a temporary one given time to create its database
        try:
            summary = _run_curate(curate, args)
        except RuntimeError as exc:
            if "Prefect API server" not in str(exc):
                raise
            raise MimicMotionError(f"{exc}: the machine may be too busy to start Prefect's temporary server; retry, "
                                   "or start one (`prefect server start`) and set PREFECT_API_URL") from exc
    print(f"{summary['videos']} video(s): {summary['ok']} ok, {summary['skipped']} skipped, {summary['failed']} failed; "
          f"{summary['clips']} clip(s); {summary['video_seconds']:.1f} video-s in {summary['wall_s']:.1f} s "
          f"({summary['throughput']:.2f} video-s per wall-s)")
    for failure in summary["failures"]:
        print(f"  failed: {failure['path']} ({failure['kind']}): {failure['reason']}")
    if summary["contact_sheet"]:
        print(f"contact sheet: {summary['contact_sheet']}")
    print(f"catalog: {summary['catalog']}")
    return 0


def _run_curate(curate, args) -> dict:
    return curate(
        inputs=list(args.inputs), catalog=args.catalog, pose_source=args.pose_source, dwpose_dir=args.dwpose_dir,
        pose_estimator=args.pose_estimator,
        sample_stride=args.sample_stride, clip_length=args.clip_length, clip_stride=args.clip_stride,
        min_clip_length=args.min_clip_length, aspect=args.aspect, resolution=args.resolution,
        min_crop_fraction=args.min_crop_fraction, crop_margin=args.crop_margin, use_ray=args.ray,
        actors=args.actors, ray_address=args.ray_address, workers=args.workers, batch_size=args.batch_size,
        retry_failed=args.retry_failed, recursive=not args.no_recursive, settle_seconds=args.settle_seconds,
        contact_sheet_tiles=args.contact_sheet_tiles)


# ---------------------------------------------------------------------------------------------- parsers
def add_catalog_commands(subparsers) -> None:
    """Register `catalog` (rebuild, query, stats) and `curate` on the main CLI's subparsers."""
    cat = subparsers.add_parser("catalog", help="query and maintain the pose/clip catalog (Parquet + DuckDB)")
    cat_sub = cat.add_subparsers(dest="catalog_command", metavar="{rebuild,query,stats}", required=True)

    rebuild = cat_sub.add_parser("rebuild", help="recreate the DuckDB views from the Parquet files")
    _catalog_arg(rebuild)
    rebuild.set_defaults(func=cmd_catalog_rebuild)

    query = cat_sub.add_parser("query", help="run read-only SQL over the views videos, clips, poses")
    query.add_argument("sql", nargs="?", help='SQL, e.g. "SELECT clip_id FROM clips WHERE num_frames >= $n"')
    query.add_argument("--named", metavar="NAME", help="run a named training-selection query (see --list)")
    query.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="bind a value to $KEY (repeatable), as text, or typed with KEY:int=, KEY:float=, "
                            "KEY:bool=; values are never pasted into the SQL")
    query.add_argument("--list", action="store_true", help="list the named queries and their parameters")
    query.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    query.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default: 50)")
    _catalog_arg(query)
    query.set_defaults(func=cmd_catalog_query)

    stats = cat_sub.add_parser("stats", help="counts and mean quality of the catalog")
    stats.add_argument("--format", choices=("text", "json"), default="text")
    _catalog_arg(stats)
    stats.set_defaults(func=cmd_catalog_stats)

    cur = subparsers.add_parser("curate", help="curate videos into the catalog (Prefect flow `curate`)")
    cur.add_argument("inputs", nargs="+", help="video files and/or folders of videos")
    _catalog_arg(cur)
    cur.add_argument("--pose-source", choices=("detect", "sidecar", "auto", "dwpose"), default="detect",
                     help="detect (default: run --pose-estimator), sidecar <stem>.poses.parquet files, auto "
                          "(sidecar when present, else detect), or dwpose (detect with DWPose)")
    cur.add_argument("--pose-estimator", choices=("auto", "dwpose", "mediapipe"), default="auto",
                     help="dwpose (the method's; needs its two ONNX files), mediapipe (bundled MediaPipe Holistic "
                          "models, no download) or auto (default: DWPose when its files are found, else mediapipe)")
    cur.add_argument("--dwpose-dir", default=None,
                     help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (default: $MIMICMOTION_DWPOSE_DIR "
                          "or ~/.cache/mimicmotion/dwpose)")
    cur.add_argument("--sample-stride", type=int, default=2, help="release sampling stride (default: 2)")
    cur.add_argument("--clip-length", type=int, default=72, help="max sampled frames per clip (default: 72)")
    cur.add_argument("--clip-stride", type=int, default=None,
                     help="sampled frames between clip starts (default: clip length, no overlap)")
    cur.add_argument("--min-clip-length", type=int, default=16, help="shortest clip kept (default: 16)")
    cur.add_argument("--aspect", default="9:16", help="training aspect WIDTH:HEIGHT (default: 9:16)")
    cur.add_argument("--resolution", type=int, default=576, help="short side of the training frames (default: 576)")
    cur.add_argument("--min-crop-fraction", type=float, default=1.0,
                     help="smallest crop height as a fraction of the largest (default: 1.0 = no zoom)")
    cur.add_argument("--crop-margin", type=float, default=0.05,
                     help="room around the body, fraction of its height per side (default: 0.05)")
    cur.add_argument("--ray", action="store_true", help="detect poses on a pool of Ray actors")
    cur.add_argument("--actors", type=int, default=2, help="Ray pose actors (default: 2)")
    cur.add_argument("--ray-address", default=None, help="Ray cluster address (default: start Ray locally)")
    cur.add_argument("--workers", type=int, default=None,
                     help="videos processed at once (default: 1, or --actors with --ray)")
    cur.add_argument("--batch-size", type=int, default=16, help="frames per pose-detection batch (default: 16)")
    cur.add_argument("--retry-failed", action="store_true", help="curate again videos recorded as failed")
    cur.add_argument("--no-recursive", action="store_true", help="do not look into sub-folders")
    cur.add_argument("--settle-seconds", type=float, default=CLI_SETTLE_SECONDS,
                     help="leave files modified less than this many seconds ago (still being copied) for a later "
                          f"run (default: {CLI_SETTLE_SECONDS:g}; 0 takes every file now)")
    cur.add_argument("--contact-sheet-tiles", type=int, default=12, help="tiles in the contact sheet; 0 = none")
    cur.set_defaults(func=cmd_curate)
