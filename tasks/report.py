"""Report stage: the final conversion report, where MLflow and Prefect users look."""

from __future__ import annotations

import re

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact

from quantstage.tasks._common import IO_RETRIES, run_logger

__all__ = ["artifact_key", "publish_report"]


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) derived from ``name``."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "quantstage"


@task(name="publish_report", **IO_RETRIES)
def publish_report(markdown: str, name: str, run_id: str | None = None) -> None:
    """Publish ``markdown`` as a Prefect markdown artifact keyed by ``name`` and, with ``run_id``,
    as that MLflow run's ``report.md`` (replacing the one logged before the promotion was decided)."""
    if run_id is not None:
        mlflow.MlflowClient().log_text(run_id, markdown, "report.md")
    key = f"quantstage-{artifact_key(name)}"
    create_markdown_artifact(markdown=markdown, key=key, description=f"quantstage report for {name}")
    run_logger().info("published report artifact %r", key)
