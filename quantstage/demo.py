"""The demo: a digits CNN and the small deterministic loop that trains it (not part of the library).

No ``from __future__ import annotations`` here: FX copies string annotations into the
generated code (``x: _torch_Tensor_``), which ``torch.jit.script`` cannot resolve.

Models logged to MLflow with the pickle format are rebuilt by importing their class, so
demo models live in this importable package rather than in a flow file.
"""

import logging

import torch
from torch import nn

__all__ = ["DigitsCNN", "train_classifier"]

logger = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits (input ``(N, 1, 8, 8)``, 10 classes)."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(x))
    return model.eval()
