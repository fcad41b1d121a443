"""Prefect events about registry changes, so deployments can react to them (triggers).

``quantstage.model.registered`` — a float model version was registered (the training side);
``quantstage.model.promoted`` — an alias moved to a quantized version (this pipeline).
Resource id: ``mlflow.model.<name>.<version>``; the payload carries ``model_uri``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.events import emit_event

from quantstage.tasks._common import run_logger

__all__ = ["REGISTERED", "PROMOTED", "emit_model_event", "model_resource"]

REGISTERED = "quantstage.model.registered"
PROMOTED = "quantstage.model.promoted"


def model_resource(name: str, version: str) -> dict[str, str]:
    """The Prefect resource of one MLflow registry version."""
    return {
        "prefect.resource.id": f"mlflow.model.{name}.{version}",
        "prefect.resource.name": name,
        "mlflow.model.name": name,
        "mlflow.model.version": str(version),
    }


def emit_model_event(event: str, name: str, version: str, payload: Mapping[str, Any] | None = None) -> None:
    """Emit ``event`` about registry version ``name``/``version`` (payload always has ``model_uri``)."""
    body = {"model_uri": f"models:/{name}/{version}", "name": name, "version": str(version), **(payload or {})}
    emitted = emit_event(event=event, resource=model_resource(name, version), payload=body)
    run_logger().info("event %s for models:/%s/%s%s", event, name, version, "" if emitted else " (events disabled)")
