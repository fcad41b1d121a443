"""train_demo: the demo's training pipeline — train a digits CNN, register it, alias it."""

from __future__ import annotations

from prefect import flow

from quantstage.tasks.events import REGISTERED, emit_model_event, registered_event_id
from quantstage.tasks.registry import register_model
from quantstage.tasks.train import train_digits

__all__ = ["train_demo"]


@flow(name="train_demo", log_prints=True)
def train_demo(
    registered_name: str = "digits-cnn",
    alias: str = "champion",
    epochs: int = 4,
    seed: int = 0,
    experiment: str = "quantstage-demo-training",
) -> str:
    """Train DigitsCNN, register it as ``registered_name`` and point ``alias`` at it.

    Emits ``quantstage.model.registered`` (resource ``mlflow.model.<name>.<version>``, payload
    ``model_uri``) once the version is registered and aliased, with the event id MLflow's webhook
    receiver gives the same registration: with both on, one event.

    Returns the URI of the registered version (``models:/<name>/<version>``).
    """
    model_uri, accuracy, run_id = train_digits(experiment, epochs, seed)
    tags = {"test_accuracy": f"{accuracy:.4f}", "trained_by": "train_demo"}
    version = register_model(model_uri, registered_name, tags, alias)
    # lets deployments react (deploy/prefect.yaml: on-registered); any training pipeline can emit it
    emit_model_event(
        REGISTERED,
        registered_name,
        version,
        {"alias": alias, "test_accuracy": accuracy, "run_id": run_id, "source": model_uri},
        event_id=registered_event_id(registered_name, version, model_uri),
    )
    return f"models:/{registered_name}/{version}"
