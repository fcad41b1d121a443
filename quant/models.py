"""Small reference models: the demo's digits CNN.

No ``from __future__ import annotations`` here: FX copies string annotations into the
generated code (``x: _torch_Tensor_``), which ``torch.jit.script`` cannot resolve.

Models logged to MLflow with the pickle format are rebuilt by importing their class, so
demo models live in this importable package rather than in a flow file.
"""

import torch
from torch import nn

__all__ = ["DigitsCNN"]


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
        return self.head(self.features(x))
