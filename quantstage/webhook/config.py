"""What the receiver accepts and forwards: ``WebhookConfig``, from the environment and flags.

Defaults convert what a training job registers and nothing quantstage registers itself: new
versions (``model_version.created``) of any model whose name does not end with ``-int8`` and
whose version carries none of quantstage's lineage tags (``tasks/record.py: lineage``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["EVENTS", "OWN_TAGS", "WebhookConfig", "config_from_env"]

# MLflow registry events the receiver turns into quantstage.model.registered
EVENTS = ("model_version.created", "model_version_alias.created")
# tags tasks/record.py:lineage puts on every version quantstage registers (sweep winners included)
OWN_TAGS = ("idempotency_key", "spec_hash")

ENV = {  # field -> environment variable (flags override them)
    "secret": "QUANTSTAGE_WEBHOOK_SECRET",
    "host": "QUANTSTAGE_WEBHOOK_HOST",
    "port": "QUANTSTAGE_WEBHOOK_PORT",
    "events": "QUANTSTAGE_WEBHOOK_EVENTS",
    "models": "QUANTSTAGE_WEBHOOK_MODELS",
    "aliases": "QUANTSTAGE_WEBHOOK_ALIASES",
    "skip_suffix": "QUANTSTAGE_WEBHOOK_SKIP_SUFFIX",
    "max_age_s": "QUANTSTAGE_WEBHOOK_MAX_AGE_S",
    "max_body_bytes": "QUANTSTAGE_WEBHOOK_MAX_BODY_BYTES",
    "seen_file": "QUANTSTAGE_WEBHOOK_SEEN_FILE",
}
LISTS = ("events", "aliases")


class WebhookConfig(BaseModel):
    """The receiver's settings (``quantstage webhook serve``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr = Field(description="The webhook's HMAC secret, as given to MLflow (at least 16 characters).")
    host: str = Field("127.0.0.1", description="Address to listen on; put TLS in front beyond loopback.")
    port: int = Field(5005, ge=1, le=65535, description="Port to listen on.")
    path: str = Field("/webhooks/mlflow", description="The URL path MLflow posts to.")
    events: tuple[str, ...] = Field(("model_version.created",), description=f"Events acted on, of {EVENTS}.")
    models: str = Field(".*", description="Regular expression a model name must match in full.")
    aliases: tuple[str, ...] = Field((), description="model_version_alias.created: only these aliases (empty: any).")
    skip_suffix: str = Field("-int8", description="Model names ending with it are quantstage's output: ignored.")
    own_tags: tuple[str, ...] = Field(
        OWN_TAGS, description="A version with any of these tags was registered by quantstage."
    )
    max_age_s: float = Field(300.0, gt=0, description="Deliveries timestamped further from now are refused.")
    max_body_bytes: int = Field(65536, ge=1024, description="Larger bodies are refused (413).")
    seen_file: Path | None = Field(None, description="Delivery ids seen, kept across restarts (0600).")
    emit_timeout_s: float = Field(10.0, gt=0, description="How long the Prefect API gets to accept an event.")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError(
                "is shorter than 16 characters; fix: python -c 'import secrets; print(secrets.token_hex(24))'"
            )
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in value if e not in EVENTS]
        if unknown or not value:
            raise ValueError(f"{list(value)!r} is not a non-empty list of {', '.join(EVENTS)}")
        return value

    @field_validator("models")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc}); e.g. 'team-a-.*'") from None
        return value


def config_from_env(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WebhookConfig:
    """``WebhookConfig`` from ``QUANTSTAGE_WEBHOOK_*`` variables, with ``flags`` (not None) on top;
    lists in variables are comma-separated. Raises pydantic's ``ValidationError``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field, variable in ENV.items():
        if value := environ.get(variable, "").strip():
            raw[field] = tuple(v.strip() for v in value.split(",") if v.strip()) if field in LISTS else value
    raw |= {k: v for k, v in flags.items() if v is not None}
    return WebhookConfig.model_validate(raw)
