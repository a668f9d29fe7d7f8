"""Pose and clip catalog: Parquet files indexed by DuckDB (see catalog/README.md once built)."""
