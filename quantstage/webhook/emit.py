"""Hand an event to the Prefect API and know that it took it: ``POST /api/events`` through
Prefect's own client (``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING``, CSRF tokens), bounded in
time. The receiver answers MLflow 2xx only after this returned, so a Prefect outage is a 503 that
MLflow's delivery retries (3 times, 1/2/4 s apart), never an event silently dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from quantstage.tasks.events import REGISTERED, model_payload, model_resource, registered_event_id
from quantstage.webhook.filters import Delivery, VersionData

__all__ = ["PrefectEvents", "registered_event"]


def registered_event(delivery: Delivery, version: VersionData, delivery_id: str, when: datetime) -> dict[str, Any]:
    """The ``quantstage.model.registered`` event of one registration: the resource labels and
    ``model_uri`` deploy/prefect.yaml's on-registered trigger uses, the same id a training flow gives it."""
    extra: dict[str, Any] = {
        "run_id": version.run_id,
        "source": version.source,
        "mlflow_event": delivery.event,
        "mlflow_delivery_id": delivery_id,
    }
    if version.alias is not None:  # an alias moved: an event of its own (one per delivery)
        extra["alias"] = version.alias
        event_id = uuid5(NAMESPACE_URL, f"mlflow.webhook.delivery.{delivery_id}")
    else:  # the registration itself: the id a training flow announcing it gives the same event
        event_id = registered_event_id(version.name, version.version, version.source)
    return {
        "id": str(event_id),
        "occurred": when.isoformat(),
        "event": REGISTERED,
        "resource": model_resource(version.name, version.version),
        "related": [],
        "payload": model_payload(version.name, version.version, extra),
    }


class PrefectEvents:
    """One Prefect API client for the receiver's lifetime; ``send`` raises on anything but acceptance."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._client: Any = None

    async def __aenter__(self) -> PrefectEvents:
        from prefect.client.orchestration import get_client

        self._client = get_client()
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def send(self, event: Mapping[str, Any]) -> UUID:
        response = await asyncio.wait_for(self._client.request("POST", "/events", json=[dict(event)]), self.timeout_s)
        response.raise_for_status()
        return UUID(str(event["id"]))
