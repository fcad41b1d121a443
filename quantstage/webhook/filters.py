"""From a verified MLflow delivery to the Prefect event it means, or the reason it means none.

``parse`` reads the body (``{"entity", "action", "timestamp", "data"}``, as
``mlflow.webhooks.delivery`` sends it) and refuses what is not JSON (400) or not a registry event
quantstage knows (422). ``decide`` applies the configured filters: an event quantstage should not
act on is *ignored* (answered 200, nothing emitted), never an error.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantstage.webhook.config import EVENTS, WebhookConfig
from quantstage.webhook.signature import Refused

__all__ = ["Decision", "Delivery", "VersionData", "decide", "occurred", "parse"]

# what MLflow's test_webhook sends (mlflow.webhooks.types: ModelVersion(Alias)CreatedPayload.example())
TEST_PAYLOADS = (
    {"name": "example_model", "version": "1", "source": "models:/123", "run_id": "abcd1234abcd5678"},
    {"name": "example_model", "version": "1", "alias": "example_alias"},
)
NAME = r"[^/\x00-\x1f]{1,256}"  # a registry name: no '/', no control characters (MLflow's own rule is looser)


class VersionData(BaseModel):
    """``data`` of model_version.created and model_version_alias.created."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=f"^{NAME}$")
    version: str = Field(pattern=r"^[1-9][0-9]{0,17}$")
    source: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    alias: str | None = None


class Delivery(BaseModel):
    """One MLflow webhook delivery's body."""

    model_config = ConfigDict(extra="ignore")

    entity: str
    action: str
    timestamp: str | None = None
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


class Decision(BaseModel):
    """Emit ``quantstage.model.registered`` for ``version`` (``emit``), or why not (``reason``)."""

    emit: bool
    reason: str
    version: VersionData | None = None


def parse(body: bytes) -> tuple[Delivery, VersionData]:
    """The delivery and its model version; ``Refused`` 400 (not JSON) or 422 (not a known registry event)."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"body is not JSON ({exc}); allowed: the JSON object MLflow's webhook sends") from None
    try:
        delivery = Delivery.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(
            422,
            f"body is not an MLflow webhook delivery: {where}: {first['msg']}; allowed: {{entity, action, timestamp, data}}",
        ) from None
    if delivery.event not in EVENTS:
        raise Refused(
            422,
            f"event {delivery.event[:80]!r} is not one quantstage acts on; allowed: {', '.join(EVENTS)}; "
            f"fix: subscribe the webhook to those only (quantstage webhook register --event ...)",
        )
    try:
        version = VersionData.model_validate(delivery.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        got = repr(delivery.data.get(str(first["loc"][0]))) if first["loc"] else "?"
        raise Refused(422, f"{delivery.event} data.{where} is {got[:80]}: {first['msg']}") from None
    if delivery.event == "model_version_alias.created" and not version.alias:
        raise Refused(422, "model_version_alias.created data has no 'alias'; allowed: {name, alias, version}")
    return delivery, version


def decide(config: WebhookConfig, delivery: Delivery, version: VersionData) -> Decision:
    """Whether this delivery starts a conversion under ``config``'s filters, and why."""
    name = version.name
    if any(all(getattr(version, k) == v for k, v in test.items()) for test in TEST_PAYLOADS):
        return Decision(emit=False, reason="MLflow's test payload (test_webhook): the signature checked out")
    if delivery.event not in config.events:
        return Decision(emit=False, reason=f"event {delivery.event} is not in {list(config.events)}")
    if config.skip_suffix and name.endswith(config.skip_suffix):
        return Decision(emit=False, reason=f"model {name!r} ends with {config.skip_suffix!r}: quantstage's own output")
    if own := sorted(set(config.own_tags) & set(version.tags)):
        return Decision(
            emit=False, reason=f"{name}/{version.version} carries quantstage's lineage tags ({', '.join(own)})"
        )
    if not re.fullmatch(config.models, name):
        return Decision(emit=False, reason=f"model {name!r} does not match {config.models!r}")
    if version.alias is not None and config.aliases and version.alias not in config.aliases:
        return Decision(emit=False, reason=f"alias {version.alias!r} is not in {list(config.aliases)}")
    return Decision(emit=True, reason=f"{delivery.event} {name}/{version.version}", version=version)


def occurred(delivery: Delivery, now: float, max_age_s: float) -> datetime:
    """When MLflow says the event happened (its ``timestamp``); the receiver's ``now`` when that is
    missing or further than ``max_age_s`` from it (Prefect's triggers and event queries go by it)."""
    received = datetime.fromtimestamp(now, tz=timezone.utc)
    try:
        when = datetime.fromisoformat((delivery.timestamp or "").replace("Z", "+00:00"))
    except ValueError:
        return received
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return when if abs((when - received).total_seconds()) <= max_age_s else received
