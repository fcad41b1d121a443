"""Registering the toy models (tests.models) in the test MLflow store."""

from __future__ import annotations

import mlflow
import torch
from torch import nn

from quantstage.tasks.log_model import log_pytorch_model


def register(model: nn.Module, name: str, example: torch.Tensor, alias: str = "champion") -> str:
    """Log ``model`` to the current MLflow store as ``name`` version N with ``alias``; return its URI."""
    with mlflow.start_run(run_name=f"register {name}"):
        uri = log_pytorch_model(model.eval(), example)
    mv = mlflow.register_model(uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, mv.version)
    return f"models:/{name}@{alias}"
