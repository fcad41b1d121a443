"""Data sources: where calibration and evaluation batches come from.

A batch is ``(inputs, targets)`` with ``targets`` ``None`` when the data has no labels.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from quant.errors import DataError

__all__ = ["Batch", "DataSpec", "Dataset", "digits_split", "load_data"]

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


class DataSpec(BaseModel):
    """Where calibration and evaluation data come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["digits"] = Field(
        "digits", description="Data set: 'digits' is scikit-learn's bundled 8x8 digits (no download)."
    )
    batch_size: int = Field(32, ge=1, description="Samples per batch.")
    test_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="Share held out for evaluation (the rest calibrates)."
    )
    seed: int = Field(0, description="Seed of the train/test split and the calibration order.")


@dataclasses.dataclass
class Dataset:
    """Calibration batches (from the training split) and evaluation batches (held out)."""

    calibration: list[Batch]
    evaluation: list[Batch]

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs of one evaluation batch, as the positional args of ``forward``."""
        return (self.evaluation[0][0],)

    @property
    def num_eval_samples(self) -> int:
        return sum(int(x.shape[0]) for x, _ in self.evaluation)


def digits_split(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``; x is ``(N, 1, 8, 8)`` in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[Batch]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def load_data(spec: DataSpec) -> Dataset:
    """Build calibration and evaluation batches for ``spec``."""
    if spec.source != "digits":  # pragma: no cover - guarded by the Literal
        raise DataError(f"unknown data source {spec.source!r}; allowed: 'digits'")
    x_train, y_train, x_test, y_test = digits_split(spec.test_fraction, spec.seed)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(spec.seed))
    calibration = _batches(x_train[order], y_train[order], spec.batch_size)
    evaluation = _batches(x_test, y_test, spec.batch_size)
    logger.info(
        "digits: %d calibration batches, %d evaluation samples", len(calibration), len(x_test)
    )
    return Dataset(calibration=calibration, evaluation=evaluation)
