"""Report stage: publish the conversion report where Prefect users look (run artifacts)."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks._common import run_logger

__all__ = ["artifact_key", "publish_report"]


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) derived from ``name``."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "quantstage"


@task(name="publish_report")
def publish_report(markdown: str, name: str) -> None:
    """Publish ``markdown`` as a Prefect markdown artifact keyed by ``name``."""
    key = f"quantstage-{artifact_key(name)}"
    create_markdown_artifact(markdown=markdown, key=key, description=f"quantstage report for {name}")
    run_logger().info("published report artifact %r", key)
