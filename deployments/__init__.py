"""Prefect deployments: scheduled curation and ad hoc renders."""
