"""Prefect tasks: thin wrappers over `mimicmotion` library calls."""
