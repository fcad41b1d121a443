"""Publish stage: register a converted model and move its alias only when it has earned it.

One registrar at a time (``registry_lock``) does, in order: look for a version with the same
idempotency key (another run may have registered it meanwhile: then nothing is registered),
register with the lineage tags, decide the promotion (every gate passed and, with
``promote_if: better``, no worse than the alias holder — compared *inside* the lock, so two
runs cannot both promote over the same holder), move the alias, tag the verdict; then the
``quantstage.model.promoted`` event. Register → promote → tag is one transaction: a failure or a
stop in the middle withdraws the version (the alias goes back to its holder, an emptied registered
model is deleted); where even that cannot reach the store, the retry or the next run of the same
key finds the version (same run id) and completes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from quantstage.tasks._common import IO_RETRIES, run_logger
from quantstage.tasks.events import PROMOTED, emit_model_event
from quantstage.tasks.registry import (
    alias_version,
    compare_with_holder,
    find_version,
    register_version,
    registry_lock,
    set_alias,
    tag_version,
    withdraw_version,
)

__all__ = ["Publication", "PublishRequest", "event_payload", "publish_model"]


class PublishRequest(BaseModel):
    """What to register and on what terms."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Registered model name.")
    model_uri: str = Field(description="The logged model to register.")
    run_id: str = Field(description="The MLflow run that logged it.")
    lineage: dict[str, str] = Field(description="Tags of the new version (idempotency_key among them).")
    description: str = ""
    passed: bool = Field(description="Every gate passed.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Compared with the alias holder's.")
    alias: str = "champion"
    promote_if: Literal["gates", "better"] = "better"
    eval_digest: str = ""
    force: bool = Field(False, description="Register even when a version with the same key exists.")
    event: dict[str, object] = Field(default_factory=dict, description="Extra payload of the promotion event.")


class Publication(BaseModel):
    """What publishing did."""

    version: str | None = Field(None, description="The version registered (None: a duplicate).")
    promoted: bool = False
    reason: str = ""
    duplicate_of: str | None = Field(None, description="Version another run with the same key registered first.")


def _decide(request: PublishRequest, version: str) -> tuple[bool, str]:
    if not request.passed:
        return False, "gates failed"
    if request.promote_if == "gates":
        return True, "every gate passed (promote_if=gates)"
    return compare_with_holder(request.name, version, request.alias, request.metrics, request.eval_digest)


@task(name="publish_model", **IO_RETRIES)
def publish_model(request: PublishRequest) -> Publication:
    """Register, compare with the alias holder, promote and tag, under the registry lock; emit the event."""
    key = request.lineage.get("idempotency_key", "")
    with registry_lock():
        existing = find_version(request.name, key) if key else None
        if existing is not None and existing["run_id"] != request.run_id and not request.force:
            return Publication(
                duplicate_of=existing["version"], reason=f"registered meanwhile by run {existing['run_id']}"
            )
        if existing is not None and existing["run_id"] == request.run_id:
            version = existing["version"]  # a retry or a resume: this run registered it already
            previous = None
        else:
            previous = alias_version(request.name, request.alias)
            version = register_version(request.model_uri, request.name, request.lineage, request.description)
        try:
            promoted, reason = _decide(request, version)
            if promoted:
                set_alias(request.name, version, request.alias)
            tag_version(request.name, version, {"promoted": str(promoted).lower(), "promotion_reason": reason[:4000]})
        except BaseException:
            if existing is None:  # one transaction: no untagged version, no alias moved half-way
                withdraw_version(request.name, version, request.alias, previous)
            raise
    if promoted:
        emit_model_event(PROMOTED, request.name, version, {"alias": request.alias, "reason": reason, **request.event})
    run_logger().info(
        "%s version %s: %s",
        request.name,
        version,
        f"models:/{request.name}@{request.alias} -> {version} ({reason})" if promoted else f"not promoted ({reason})",
    )
    return Publication(version=version, promoted=promoted, reason=reason)


def event_payload(metrics: Mapping[str, float], **fields: str) -> dict[str, object]:
    """The promotion event's payload: ``fields`` and the headline metrics."""
    shown = {k: metrics[k] for k in ("int8_accuracy", "output_sqnr_db", "speedup") if k in metrics}
    return {**fields, "metrics": shown}
