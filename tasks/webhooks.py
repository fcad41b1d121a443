"""The MLflow registry webhook that feeds ``quantstage webhook serve``: created once, by name.

``ensure_webhook`` lists the server's webhooks first and updates the one with the same name (URL,
events, secret, ACTIVE) instead of creating another, so a restart never adds a second webhook
(duplicates left by anything else are deleted). Webhook calls need an MLflow admin where the
basic-auth app runs, a SQL backend store, and on the MLflow *server* the settings for the URL
(``MLFLOW_WEBHOOK_ALLOWED_SCHEMES``, ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS``) and for storing the
secret (``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``); see deploy/README.md, "Registry webhooks".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow
from mlflow.entities.webhook import WebhookEvent

__all__ = ["WEBHOOK_NAME", "ensure_webhook", "list_webhooks", "probe_webhook"]

WEBHOOK_NAME = "quantstage-registered"
DESCRIPTION = "quantstage: registry events -> Prefect quantstage.model.registered (quantstage webhook serve)"


def list_webhooks() -> list[Any]:
    """Every webhook of the MLflow server (all pages)."""
    client, found, token = mlflow.MlflowClient(), [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def ensure_webhook(url: str, events: Sequence[str], secret: str, name: str = WEBHOOK_NAME) -> tuple[str, str]:
    """The webhook ``name`` posts ``events`` to ``url`` signed with ``secret``: (its id, "created" or "updated")."""
    client = mlflow.MlflowClient()
    subscribed: list[Any] = [WebhookEvent(*event.rsplit(".", 1)) for event in events]
    same = sorted((w for w in list_webhooks() if w.name == name), key=lambda w: w.creation_timestamp)
    if not same:
        hook = client.create_webhook(
            name=name, url=url, events=subscribed, description=DESCRIPTION, secret=secret, status="ACTIVE"
        )
        return str(hook.webhook_id), "created"
    keep, *duplicates = same
    for duplicate in duplicates:
        client.delete_webhook(duplicate.webhook_id)
    client.update_webhook(
        keep.webhook_id, url=url, events=subscribed, description=DESCRIPTION, secret=secret, status="ACTIVE"
    )
    return str(keep.webhook_id), "updated"


def probe_webhook(webhook_id: str) -> tuple[bool, str]:
    """MLflow's own test delivery (its example payload, signed): whether the receiver answered 2xx, and what."""
    result = mlflow.MlflowClient().test_webhook(webhook_id)
    if result.success:
        return True, f"{result.response_status} {result.response_body or ''}".strip()
    answer = f"{result.response_status} {result.response_body or ''}".strip() if result.response_status else ""
    return False, answer or str(result.error_message)
