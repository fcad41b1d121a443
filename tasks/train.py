"""Demo training stage: train the digits CNN and log it to MLflow as a float source model."""

from __future__ import annotations

import mlflow
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.demo import DigitsCNN, train_classifier
from quantstage.quant.data.sources import digits_split
from quantstage.tasks._common import run_logger
from quantstage.tasks.log_model import log_pytorch_model
from quantstage.tasks.runs import experiment_id

__all__ = ["train_digits"]


@task(name="train_digits", cache_policy=NO_CACHE)
def train_digits(experiment: str, epochs: int, seed: int) -> tuple[str, float, str]:
    """Train DigitsCNN on the digits training split, log it to MLflow; return (model URI, test accuracy, run id)."""
    logger = run_logger()
    x_train, y_train, x_test, y_test = digits_split(seed=seed)
    torch.manual_seed(seed)  # the initial weights too: the same seed gives the same model
    model = train_classifier(DigitsCNN(), x_train, y_train, epochs=epochs, seed=seed)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    logger.info("trained DigitsCNN for %d epochs: test accuracy %.4f", epochs, accuracy)
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name="train digits-cnn") as run:
        mlflow.log_params({"epochs": epochs, "seed": seed, "model": "DigitsCNN"})
        mlflow.log_metric("test_accuracy", accuracy)
        model_uri = log_pytorch_model(model, x_test[:2])
    return model_uri, accuracy, run.info.run_id
