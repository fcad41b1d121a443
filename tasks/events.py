"""Prefect events about registry changes, so deployments can react to them (triggers).

``quantstage.model.registered`` — a float model version was registered (the training side: a
Prefect training flow emits it, or ``quantstage webhook serve`` on MLflow's ``model_version.created``);
``quantstage.model.promoted`` — an alias moved to a quantized version (this pipeline).
Resource id: ``mlflow.model.<name>.<version>``; the payload carries ``model_uri``.

A registration has one event id (``registered_event_id``: from the name, the version and the
source URI the version was created from — what both the training code and MLflow's
``model_version.created`` payload know; MLflow leaves the payload's run id empty for a model
registered from its ``models:/m-…`` URI), so
a training flow that emits the event *and* MLflow's webhook announce one event, not two: Prefect's
triggers act once per event id (they remember ids for 30 minutes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from prefect.events import emit_event

from quantstage.tasks._common import run_logger

__all__ = [
    "REGISTERED",
    "PROMOTED",
    "emit_model_event",
    "model_payload",
    "model_resource",
    "registered_event_id",
]

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


def model_payload(name: str, version: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An event's payload: ``model_uri`` (``models:/<name>/<version>``, what on-registered converts), name, version."""
    return {"model_uri": f"models:/{name}/{version}", "name": name, "version": str(version), **(extra or {})}


def registered_event_id(name: str, version: str, source: str | None) -> UUID:
    """The one event id of the registration of ``name``/``version`` from the model at ``source``
    (a re-created model with the same name and version number comes from another source)."""
    return uuid5(NAMESPACE_URL, f"mlflow.model.{name}.{version}?source={source or ''}")


def emit_model_event(
    event: str, name: str, version: str, payload: Mapping[str, Any] | None = None, event_id: UUID | None = None
) -> None:
    """Emit ``event`` about registry version ``name``/``version`` (payload always has ``model_uri``)."""
    body = model_payload(name, version, payload)
    emitted = emit_event(event=event, resource=model_resource(name, version), payload=body, id=event_id)
    run_logger().info("event %s for models:/%s/%s%s", event, name, version, "" if emitted else " (events disabled)")
