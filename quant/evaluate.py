"""Accuracy of a quantized model against its float original."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import torch

from quant.sources import Batch

__all__ = ["AccuracyReport", "evaluate", "sqnr_db"]

logger = logging.getLogger(__name__)


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    reference = reference.detach().float()
    noise = (reference - test.detach().float()).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclasses.dataclass(frozen=True)
class AccuracyReport:
    """Float vs quantized on the same evaluation data."""

    samples: int
    float_accuracy: float | None
    quant_accuracy: float | None
    agreement: float
    sqnr_db: float

    @property
    def accuracy_drop(self) -> float | None:
        """Float minus quantized top-1 accuracy (absolute, in [0, 1]); None without labels."""
        if self.float_accuracy is None or self.quant_accuracy is None:
            return None
        return self.float_accuracy - self.quant_accuracy

    def as_metrics(self) -> dict[str, float]:
        metrics = {"agreement": self.agreement, "output_sqnr_db": self.sqnr_db}
        if self.float_accuracy is not None and self.quant_accuracy is not None:
            metrics |= {
                "float_accuracy": self.float_accuracy,
                "int8_accuracy": self.quant_accuracy,
                "accuracy_drop": self.float_accuracy - self.quant_accuracy,
            }
        return metrics


@torch.no_grad()
def evaluate(
    float_model: torch.nn.Module, quant_model: torch.nn.Module, batches: Sequence[Batch]
) -> AccuracyReport:
    """Top-1 accuracy (when labels exist), top-1 agreement and output SQNR over ``batches``."""
    float_outputs, quant_outputs, targets = [], [], []
    for inputs, target in batches:
        float_outputs.append(float_model(inputs))
        quant_outputs.append(quant_model(inputs))
        if target is not None:
            targets.append(target)
    f = torch.cat(float_outputs)
    q = torch.cat(quant_outputs)
    f_top1, q_top1 = f.argmax(dim=-1), q.argmax(dim=-1)
    has_labels = len(targets) == len(batches)
    y = torch.cat(targets) if has_labels else None
    report = AccuracyReport(
        samples=int(f.shape[0]),
        float_accuracy=(f_top1 == y).float().mean().item() if y is not None else None,
        quant_accuracy=(q_top1 == y).float().mean().item() if y is not None else None,
        agreement=(f_top1 == q_top1).float().mean().item(),
        sqnr_db=sqnr_db(f, q),
    )
    logger.info("evaluated %d samples: %s", report.samples, report.as_metrics())
    return report
