"""train_demo: the demo's training pipeline — train a digits CNN, register it, alias it."""

from __future__ import annotations

from prefect import flow

from tasks.track import promote, register_model
from tasks.train import train_digits

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

    Returns the URI of the registered version (``models:/<name>/<version>``).
    """
    model_uri, accuracy = train_digits(experiment, epochs, seed)
    version = register_model(model_uri, registered_name, {"test_accuracy": f"{accuracy:.4f}", "trained_by": "train_demo"})
    promote(registered_name, version, alias)
    return f"models:/{registered_name}/{version}"
