"""MLflow registry webhooks → Prefect events: ``quantstage webhook serve``.

A training job that only talks to MLflow registers a model; MLflow's webhook posts
``model_version.created`` here; the receiver checks MLflow's signature, timestamp and delivery id,
filters (by default: anything quantstage did not register itself), and emits the Prefect event
``quantstage.model.registered`` that deploy/prefect.yaml's ``convert/on-registered`` turns into a
conversion. ``quantstage webhook register URL`` creates MLflow's side (``tasks/webhooks.py``).
"""

from typing import TYPE_CHECKING

from quantstage.webhook.config import EVENTS, OWN_TAGS, WebhookConfig, config_from_env
from quantstage.webhook.signature import Refused, sign, verify

if TYPE_CHECKING:
    from quantstage.webhook.app import create_app

__all__ = ["EVENTS", "OWN_TAGS", "Refused", "WebhookConfig", "config_from_env", "create_app", "sign", "verify"]


def __getattr__(name: str) -> object:
    if name == "create_app":  # Starlette and Prefect load on first use
        from quantstage.webhook.app import create_app

        return create_app
    raise AttributeError(f"module 'quantstage.webhook' has no attribute {name!r}")
