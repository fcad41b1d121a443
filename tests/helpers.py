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


class DigitsMLP(nn.Module):
    """Flatten, then ``depth`` Linear+ReLU layers, then a classifier: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self, width: int = 48, depth: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x.flatten(1)))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


def sensitive_digits_mlp(sensitive: int = 3, epochs: int = 6) -> DigitsMLP:
    """A digits MLP trained briefly, then made sensitive on purpose in ``layers.<sensitive>``.

    Unit 0 of the layer before it is made dead (always 0 after ReLU) and the sensitive
    layer's weight column 0 huge: the float function barely changes, but per-channel int8
    spends every level on that column and rounds the weights that carry the signal to zero.
    """
    from quant.sources import digits_split
    from quant.train import train_classifier

    torch.manual_seed(0)
    model = DigitsMLP()
    x, y, _, _ = digits_split()
    train_classifier(model, x, y, epochs=epochs)
    with torch.no_grad():
        before = model.layers[sensitive - 1]
        before.weight[0].zero_()
        before.bias[0] = -1.0
        model.layers[sensitive].weight[:, 0] = 500.0
    return model.eval()
