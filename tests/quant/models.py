"""Tiny models shared by the quant tests.

No ``from __future__ import annotations`` here: with string annotations FX generates
``x: _torch_Tensor_`` placeholders that torch.jit.script cannot resolve.
"""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, Conv-ReLU, pool, Flatten, Linear-ReLU, Linear: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
