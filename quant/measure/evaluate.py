"""Accuracy of a quantized model against its float original."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantstage.quant.data.inputs import args_of
from quantstage.quant.data.outputs import select_output
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
    pooling: Literal["mean", "cls", "none"] = Field(
        default="mean",
        description="embedding: how per-token outputs (batch, tokens, hidden) become the embeddings compared: mean "
        "over the tokens the attention mask keeps (padding excluded), the first token (cls), or none (each "
        "sample's whole output, padding included). Outputs of shape (batch, hidden) are compared as they are.",
    )
    mask_input: str = Field(
        default="attention_mask",
        description="embedding: the forward argument holding the attention mask (1 = token, 0 = padding); without "
        "one every token counts.",
    )
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


def _user_metric(path: str, f: Any, q: Any, y: torch.Tensor | None) -> dict[str, float]:
    """``fn(float_outputs, int8_outputs, targets)``: tensors, or lists of per-batch tensors when the
    batches' outputs differ in shape (sequences)."""
    from quantstage.quant.config.dotted import resolve_dotted

    fn = resolve_dotted(path)
    name = path.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    value = fn(f, q, y)
    if isinstance(value, dict):
        return {f"metric.{k}": float(v) for k, v in value.items()}
    return {f"metric.{name}": float(value)}


def _mask(inputs: Any, names: Sequence[str] | None, mask_input: str) -> torch.Tensor | None:
    args = args_of(inputs)
    if names and mask_input in names and names.index(mask_input) < len(args):
        mask = args[names.index(mask_input)]
        return mask if isinstance(mask, torch.Tensor) else None
    return None


def _pool(outputs: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(batch, tokens, hidden) outputs as (batch, hidden) embeddings; other shapes flattened per sample."""
    if outputs.dim() != 3 or pooling == "none":
        return outputs.flatten(1).float()
    if pooling == "cls":
        return outputs[:, 0].float()
    keep = torch.ones(outputs.shape[:2]) if mask is None else (mask[:, : outputs.shape[1]] != 0).float()
    summed = (outputs.float() * keep.unsqueeze(-1)).sum(1)
    return summed / keep.sum(1, keepdim=True).clamp(min=1.0)


def _same_shape_cat(outputs: list[torch.Tensor]) -> torch.Tensor | None:
    """The batches' outputs concatenated, or None when their shapes differ past the batch dimension
    (sequences padded to each batch's own length)."""
    if len({tuple(o.shape[1:]) for o in outputs}) != 1:
        return None
    return torch.cat(outputs)


def _sqnr_over(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """SQNR of every test element against its reference, over batches of any shape."""
    signal = sum(r.detach().float().pow(2).sum().item() for r, _ in pairs)
    noise = sum((r.detach().float() - t.detach().float()).pow(2).sum().item() for r, t in pairs)
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def _per_sample(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """MSE and mean cosine of each sample's whole output (flattened, padding included)."""
    cosines, squared, count = [], 0.0, 0
    for f, q in outputs:
        ff, qf = f.flatten(1).float(), q.flatten(1).float()
        cosines.append(F.cosine_similarity(ff, qf, dim=-1))
        squared += (ff - qf).pow(2).sum().item()
        count += ff.numel()
    return {"output_mse": squared / max(count, 1), "cosine_similarity": torch.cat(cosines).mean().item()}


def _embedding_metrics(pooled: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Cosine (mean and worst sample) and SQNR of the embeddings compared, batch by batch (their
    widths may differ when pooling is none)."""
    cosine = torch.cat([F.cosine_similarity(fe, qe, dim=-1) for fe, qe in pooled])
    return {
        "embedding_cosine_mean": cosine.mean().item(),
        "embedding_cosine_min": cosine.min().item(),
        "embedding_sqnr_db": _sqnr_over(pooled),
    }


@torch.no_grad()
def evaluate(
    float_model: torch.nn.Module,
    quant_model: torch.nn.Module,
    batches: Sequence[Batch],
    spec: EvaluationSpec | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_key: str | None = None,
) -> AccuracyReport:
    """Task metrics of both models over ``batches``, plus output SQNR of int8 against float.

    ``output_key`` selects the compared part of a structured output (``quant.data.outputs``);
    ``input_names`` (forward's argument names) locate the attention mask the embedding task pools with."""
    spec = spec or EvaluationSpec()
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    pooled: list[tuple[torch.Tensor, torch.Tensor]] = []
    targets = []
    for inputs, target in batches:
        fo = select_output(float_model(*args_of(inputs)), output_key)
        qo = select_output(quant_model(*args_of(inputs)), output_key)
        pairs.append((fo, qo))
        if spec.task == "embedding":
            mask = _mask(inputs, input_names, spec.mask_input)
            pooled.append((_pool(fo, mask, spec.pooling), _pool(qo, mask, spec.pooling)))
        if target is not None:
            targets.append(target)
    f = _same_shape_cat([fo for fo, _ in pairs])
    q = _same_shape_cat([qo for _, qo in pairs])
    y = torch.cat(targets) if len(targets) == len(batches) else None
    extra: dict[str, float] = {}
    float_acc = quant_acc = agreement = None
    if spec.task == "classification":
        if f is None or q is None:
            raise ValueError("classification outputs must have one shape across batches (batch, classes)")
        f_top1, q_top1 = f.argmax(dim=-1), q.argmax(dim=-1)
        agreement = (f_top1 == q_top1).float().mean().item()
        if y is not None:
            float_acc = (f_top1 == y).float().mean().item()
            quant_acc = (q_top1 == y).float().mean().item()
            if spec.top_k > 1:
                extra[f"float_top{spec.top_k}_accuracy"] = _topk(f, y, spec.top_k)
                extra[f"int8_top{spec.top_k}_accuracy"] = _topk(q, y, spec.top_k)
    else:
        extra |= _per_sample(pairs)
        if spec.task == "embedding":
            extra |= _embedding_metrics(pooled)
        if spec.task == "regression" and y is not None and f is not None and q is not None:
            ff, qf = f.flatten(1).float(), q.flatten(1).float()
            target = y.reshape(ff.shape).float()
            extra["float_mse"] = torch.mean((ff - target) ** 2).item()
            extra["int8_mse"] = torch.mean((qf - target) ** 2).item()
    if spec.metric:
        extra |= _user_metric(
            spec.metric, f if f is not None else [p[0] for p in pairs], q if q is not None else [p[1] for p in pairs], y
        )
    report = AccuracyReport(
        samples=sum(int(fo.shape[0]) for fo, _ in pairs),
        float_accuracy=float_acc,
        quant_accuracy=quant_acc,
        agreement=agreement,
        sqnr_db=_sqnr_over(pairs),
        extra=extra,
    )
    logger.info("evaluated %d samples: %s", report.samples, report.as_metrics())
    return report
