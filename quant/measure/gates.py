"""Promotion gates: named checks of measured numbers against thresholds."""

from __future__ import annotations

import dataclasses
import math

from pydantic import BaseModel, ConfigDict, Field

from quantstage.quant.measure.benchmark import BenchmarkReport
from quantstage.quant.measure.coverage import Coverage
from quantstage.quant.measure.evaluate import AccuracyReport

__all__ = ["TASK_DEFAULTS", "GateResult", "GatesConfig", "check_gates"]


# The gates every task gets unless the config sets them (a value, or null to switch one off): a damaged
# model fails them. Embedding thresholds from all-MiniLM-L6-v2 on 48 sentences (mean-pooled cosine vs
# fp32, mean / worst): good int8 variants 0.991-0.993 / 0.957-0.978; per-tensor weights with 7-bit
# activations 0.942 / 0.814, ONNX Runtime's default dynamic int8 0.962 / 0.880, static int8 0.49 / 0.21.
TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "classification": {"max_accuracy_drop": 0.01, "min_agreement": 0.90},
    "embedding": {"min_cosine": 0.93, "min_mean_cosine": 0.98},
    "regression": {"min_output_sqnr_db": 20.0},
}


class GatesConfig(BaseModel):
    """Thresholds a quantized model must meet before its alias moves.

    A gate left unset takes its task's default (``TASK_DEFAULTS``, applied by ``for_task``); ``null``
    switches it off explicitly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Largest allowed float-minus-int8 top-1 accuracy drop: absolute (0.01 = 1 point), or a "
        "share of the float accuracy when accuracy_drop_relative. Classification only (default 0.01, checked "
        "when the data has labels).",
    )
    accuracy_drop_relative: bool = Field(
        default=False, description="Read max_accuracy_drop as relative to the float accuracy (0.01 = 1% of it)."
    )
    min_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Smallest allowed top-1 agreement of int8 with float (classification default 0.90).",
    )
    min_cosine: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Smallest allowed cosine of the worst sample's embedding, int8 against float (embedding "
        "default 0.93; pooled as evaluation.pooling says).",
    )
    min_mean_cosine: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Smallest allowed mean embedding cosine, int8 against float (embedding default 0.98).",
    )
    min_output_sqnr_db: float | None = Field(
        default=None,
        description="Smallest allowed output SQNR of int8 against float, in dB (regression default 20).",
    )
    min_speedup: float | None = Field(
        default=None, gt=0.0, description="Smallest allowed float/int8 p50 latency ratio."
    )
    max_size_ratio: float | None = Field(
        default=None, gt=0.0, description="Largest allowed int8/float serialized size ratio."
    )
    require_quantized: bool = Field(
        default=True, description="Fail when no weighted layer ended as a quantized op (a spec that quantizes nothing)."
    )
    min_quantized_fraction: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Smallest allowed share of weighted-layer parameters that run quantized.",
    )
    task_defaults: tuple[str, ...] = Field(
        default=(),
        description="Filled by for_task: the gates set from the task's defaults (not for users to set).",
    )

    def for_task(self, task: str) -> GatesConfig:
        """The gates for ``task``: every gate left unset takes the task's default; top-1 accuracy exists
        only for classification, so other tasks drop ``max_accuracy_drop``."""
        defaults = {k: v for k, v in TASK_DEFAULTS.get(task, {}).items() if k not in self.model_fields_set}
        update: dict[str, object] = {**defaults, "task_defaults": tuple(sorted(defaults))}
        if task != "classification":
            update["max_accuracy_drop"] = None
        return self.model_copy(update=update)

    def accuracy_only(self) -> GatesConfig:
        """The gates that depend on accuracy alone (what a fallback trial must pass)."""
        return self.model_copy(
            update={
                "min_speedup": None,
                "max_size_ratio": None,
                "require_quantized": False,
                "min_quantized_fraction": None,
            }
        )


@dataclasses.dataclass(frozen=True)
class GateResult:
    """One gate: what was measured, the threshold, and whether it passed."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _gate(name: str, value: float | None, threshold: float, higher_is_better: bool, what: str) -> GateResult:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GateResult(name, None, threshold, False, f"{what} could not be measured")
    # A value at the threshold passes even when float rounding lands it a hair beyond
    # (0.95 - 0.94 > 0.01 in binary floating point).
    slack = 1e-9 * max(1.0, abs(threshold))
    passed = value >= threshold - slack if higher_is_better else value <= threshold + slack
    op = ">=" if higher_is_better else "<="
    verdict = "passed" if passed else "FAILED"
    return GateResult(name, value, threshold, passed, f"{what} {value:.4g} {op} {threshold:.4g}: {verdict}")


def check_gates(
    config: GatesConfig,
    accuracy: AccuracyReport,
    bench: BenchmarkReport | None = None,
    coverage: Coverage | None = None,
) -> list[GateResult]:
    """Evaluate every enabled gate in ``config``."""
    results: list[GateResult] = []
    if config.require_quantized and coverage is not None:
        results.append(
            GateResult(
                "quantized_any",
                float(coverage.quantized_count),
                1.0,
                False,
                f"the spec quantized nothing: no weighted layer ended as a quantized op ({coverage.summary()})",
            )
            if coverage.quantizes_nothing
            else GateResult(
                "quantized_any",
                float(coverage.quantized_count),
                1.0,
                True,
                f"{coverage.quantized_count} weighted layer(s) quantized: passed",
            )
        )
    if config.min_quantized_fraction is not None:
        value = coverage.quantized_fraction if coverage is not None else None
        results.append(
            _gate("min_quantized_fraction", value, config.min_quantized_fraction, True, "quantized parameter fraction")
        )
    if config.max_accuracy_drop is not None:
        if config.accuracy_drop_relative:
            value, what = accuracy.relative_accuracy_drop, "relative accuracy drop"
        else:
            value, what = accuracy.accuracy_drop, "accuracy drop"
        if value is not None or "max_accuracy_drop" not in config.task_defaults:  # a default needs labels
            results.append(_gate("max_accuracy_drop", value, config.max_accuracy_drop, False, what))
    if config.min_agreement is not None:
        results.append(_gate("min_agreement", accuracy.agreement, config.min_agreement, True, "top-1 agreement"))
    if config.min_cosine is not None:
        worst = accuracy.extra.get("embedding_cosine_min")
        results.append(_gate("min_cosine", worst, config.min_cosine, True, "worst embedding cosine"))
    if config.min_mean_cosine is not None:
        mean = accuracy.extra.get("embedding_cosine_mean")
        results.append(_gate("min_mean_cosine", mean, config.min_mean_cosine, True, "mean embedding cosine"))
    if config.min_output_sqnr_db is not None:
        results.append(
            _gate("min_output_sqnr_db", accuracy.sqnr_db, config.min_output_sqnr_db, True, "output SQNR (dB)")
        )
    if config.min_speedup is not None:
        value = bench.speedup if bench is not None else None
        results.append(_gate("min_speedup", value, config.min_speedup, True, "speedup"))
    if config.max_size_ratio is not None:
        value = bench.size_ratio if bench is not None else None
        results.append(_gate("max_size_ratio", value, config.max_size_ratio, False, "size ratio"))
    return results
