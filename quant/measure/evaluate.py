"""Accuracy of a quantized model against its float original."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantstage.quant.data.inputs import args_of
from quantstage.quant.data.sources import Batch

__all__ = ["AccuracyReport", "EvaluationSpec", "evaluate", "sqnr_db"]

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


class EvaluationSpec(BaseModel):
    """What "accuracy" means for this model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Literal["classification", "regression", "embedding"] = Field(
        default="classification",
        description="classification: top-1/top-k accuracy against labels and top-1 agreement; regression: "
        "MSE against targets and between models; embedding: cosine similarity and MSE between models. "
        "Output SQNR is reported for every task.",
    )
    top_k: int = Field(default=5, ge=1, description="classification: also report top-k accuracy.")
    metric: str | None = Field(
        default=None,
        description="A user metric as 'module:function', called as fn(float_outputs, int8_outputs, targets) "
        "(targets may be None) and returning a float or a dict of floats; logged as metric.<name>.",
    )

    @field_validator("metric")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            if ":" not in value:
                raise ValueError(f"metric {value!r} must be 'module:function'")
            from quantstage.quant.config.dotted import resolve_dotted

            if not callable(resolve_dotted(value)):
                raise ValueError(f"metric {value!r} is not callable")
        return value


@dataclasses.dataclass(frozen=True)
class AccuracyReport:
    """Float vs quantized on the same evaluation data."""

    samples: int
    float_accuracy: float | None
    quant_accuracy: float | None
    agreement: float | None
    sqnr_db: float
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float | None:
        """Float minus quantized top-1 accuracy (absolute, in [0, 1]); None without labels."""
        if self.float_accuracy is None or self.quant_accuracy is None:
            return None
        return self.float_accuracy - self.quant_accuracy

    @property
    def relative_accuracy_drop(self) -> float | None:
        """The drop as a share of the float accuracy."""
        drop = self.accuracy_drop
        if drop is None or not self.float_accuracy:
            return None
        return drop / self.float_accuracy

    def as_metrics(self) -> dict[str, float]:
        metrics = {"output_sqnr_db": self.sqnr_db} | dict(self.extra)
        if self.agreement is not None:
            metrics["agreement"] = self.agreement
        if self.float_accuracy is not None and self.quant_accuracy is not None:
            metrics |= {
                "float_accuracy": self.float_accuracy,
                "int8_accuracy": self.quant_accuracy,
                "accuracy_drop": self.float_accuracy - self.quant_accuracy,
            }
        return metrics


def _topk(outputs: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    k = min(k, outputs.shape[-1])
    return (outputs.topk(k, dim=-1).indices == targets.unsqueeze(-1)).any(-1).float().mean().item()


def _user_metric(path: str, f: torch.Tensor, q: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
    from quantstage.quant.config.dotted import resolve_dotted

    fn = resolve_dotted(path)
    name = path.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    value = fn(f, q, y)
    if isinstance(value, dict):
        return {f"metric.{k}": float(v) for k, v in value.items()}
    return {f"metric.{name}": float(value)}


@torch.no_grad()
def evaluate(
    float_model: torch.nn.Module,
    quant_model: torch.nn.Module,
    batches: Sequence[Batch],
    spec: EvaluationSpec | None = None,
) -> AccuracyReport:
    """Task metrics of both models over ``batches``, plus output SQNR of int8 against float."""
    spec = spec or EvaluationSpec()
    float_outputs, quant_outputs, targets = [], [], []
    for inputs, target in batches:
        float_outputs.append(float_model(*args_of(inputs)))
        quant_outputs.append(quant_model(*args_of(inputs)))
        if target is not None:
            targets.append(target)
    f = torch.cat(float_outputs)
    q = torch.cat(quant_outputs)
    y = torch.cat(targets) if len(targets) == len(batches) else None
    extra: dict[str, float] = {}
    float_acc = quant_acc = agreement = None
    if spec.task == "classification":
        f_top1, q_top1 = f.argmax(dim=-1), q.argmax(dim=-1)
        agreement = (f_top1 == q_top1).float().mean().item()
        if y is not None:
            float_acc = (f_top1 == y).float().mean().item()
            quant_acc = (q_top1 == y).float().mean().item()
            if spec.top_k > 1:
                extra[f"float_top{spec.top_k}_accuracy"] = _topk(f, y, spec.top_k)
                extra[f"int8_top{spec.top_k}_accuracy"] = _topk(q, y, spec.top_k)
    else:
        ff, qf = f.flatten(1).float(), q.flatten(1).float()
        extra["output_mse"] = torch.mean((ff - qf) ** 2).item()
        extra["cosine_similarity"] = torch.nn.functional.cosine_similarity(ff, qf, dim=-1).mean().item()
        if spec.task == "regression" and y is not None:
            target = y.reshape(ff.shape).float()
            extra["float_mse"] = torch.mean((ff - target) ** 2).item()
            extra["int8_mse"] = torch.mean((qf - target) ** 2).item()
    if spec.metric:
        extra |= _user_metric(spec.metric, f, q, y)
    report = AccuracyReport(
        samples=int(f.shape[0]),
        float_accuracy=float_acc,
        quant_accuracy=quant_acc,
        agreement=agreement,
        sqnr_db=sqnr_db(f, q),
        extra=extra,
    )
    logger.info("evaluated %d samples: %s", report.samples, report.as_metrics())
    return report
