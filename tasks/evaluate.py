"""Evaluation steps as Prefect tasks (used by flows/evaluate.py): thin wrappers over
``mimicmotion.evaluation``, which also runs them without Prefect (Python API and CLI)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mimicmotion.evaluation import (evaluate_clip, load_feature_networks, load_model, plan_evaluation, summarize,
                                    write_results)

ARTIFACT_KEY = "evaluation-summary"


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return key or ARTIFACT_KEY


def publish_summary(markdown: str, key: str = ARTIFACT_KEY) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown, key=artifact_key(key), description="evaluation: mean scores per method")


plan_task = task(plan_evaluation, name="plan-evaluation", cache_policy=NO_CACHE)
load_networks_task = task(load_feature_networks, name="load-metric-networks", cache_policy=NO_CACHE)
load_model_task = task(load_model, name="load-pipeline", cache_policy=NO_CACHE)
evaluate_clip_task = task(evaluate_clip, name="evaluate-clip", task_run_name="evaluate-{clip_id}",
                          cache_policy=NO_CACHE)
summarize_task = task(summarize, name="summarize", cache_policy=NO_CACHE)
write_results_task = task(write_results, name="write-results", cache_policy=NO_CACHE)
publish_summary_task = task(publish_summary, name="publish-summary", cache_policy=NO_CACHE)
