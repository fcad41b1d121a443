"""Small models the tests register in MLflow (importable, so the pickle flavor can load them)."""

from __future__ import annotations

import mlflow
import torch
from torch import nn

from tasks.track import log_pytorch_model


class Flat100(nn.Module):
    """Expects ``(N, 100)`` inputs: the digits data ``(N, 1, 8, 8)`` does not fit it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return y
        return -y


class GatedNet(nn.Module):
    """Runs fine eagerly on digits, but ``block`` cannot be symbolically traced."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Gate()
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).flatten(1))


def register(model: nn.Module, name: str, example: torch.Tensor, alias: str = "champion") -> str:
    """Log ``model`` to the current MLflow store as ``name`` version N with ``alias``; return its URI."""
    with mlflow.start_run(run_name=f"register {name}"):
        uri = log_pytorch_model(model.eval(), example)
    mv = mlflow.register_model(uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, mv.version)
    return f"models:/{name}@{alias}"
