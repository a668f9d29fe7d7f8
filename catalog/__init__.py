"""Pose and clip catalog: Parquet files (one folder per video) indexed by DuckDB views. See catalog/README.md.

    from catalog import Catalog
    cat = Catalog("my-catalog")                 # or Catalog() for $MIMICMOTION_CATALOG / the default folder
    cat.query("SELECT count(*) AS n FROM clips WHERE num_frames >= $n", {"n": 32})   # -> pyarrow.Table
    cat.named("training_clips", min_frames=32, min_hand_conf=0.5)
    cat.clip_poses("0123456789abcdef-0000")    # -> PoseSequence in the clip's crop
"""
from catalog.api import Catalog, clip_poses
from catalog.index import ensure_index, rebuild_index
from catalog.ingest import KnownVideos, VideoOutcome, curate_file
from catalog.queries import NAMED_QUERIES
from catalog.schema import SCHEMA_VERSION
from catalog.store import CATALOG_ENV, catalog_root, default_catalog_dir, init_catalog

__all__ = [
    "CATALOG_ENV", "Catalog", "KnownVideos", "NAMED_QUERIES", "SCHEMA_VERSION", "VideoOutcome", "catalog_root",
    "clip_poses", "curate_file", "default_catalog_dir", "ensure_index", "init_catalog", "rebuild_index",
]
