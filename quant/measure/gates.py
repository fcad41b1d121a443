"""Promotion gates: named checks of measured numbers against thresholds."""

from __future__ import annotations

import dataclasses
import math

from pydantic import BaseModel, ConfigDict, Field

from quantstage.quant.measure.benchmark import BenchmarkReport
from quantstage.quant.measure.coverage import Coverage
from quantstage.quant.measure.evaluate import AccuracyReport

__all__ = ["TASK_DEFAULTS", "GateResult", "GatesConfig", "check_gates", "speedup_gate"]


# The gates every task gets unless the config sets them (a value, or null to switch one off): a damaged
# model fails them. Embedding thresholds from all-MiniLM-L6-v2 on 48 sentences (mean-pooled cosine vs
# fp32, mean / worst): good int8 variants 0.991-0.993 / 0.957-0.978; per-tensor weights with 7-bit
# activations 0.942 / 0.814, ONNX Runtime's default dynamic int8 0.962 / 0.880, static int8 0.49 / 0.21.
# Every task also gets min_speedup 1.0: int8 must beat the float model (as loaded) by more than the
# measured noise at the headline batch, else quantizing bought nothing and the alias stays.
TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "classification": {"max_accuracy_drop": 0.01, "min_agreement": 0.90, "min_speedup": 1.0},
    "embedding": {"min_cosine": 0.93, "min_mean_cosine": 0.98, "min_speedup": 1.0},
    "regression": {"min_output_sqnr_db": 20.0, "min_speedup": 1.0},
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
        default=None,
        gt=0.0,
        description="Smallest allowed float/int8 latency ratio at the headline batch (the first batch size and "
        "thread count benchmarked; the median of the paired per-call ratios), which the speedup must exceed by "
        "the measured noise (the one-sided 95% margin of that median, from the ratios' MAD). Default 1.0 in every "
        "task: int8 must be faster than the float model; null switches it off.",
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

    def screening(self) -> GatesConfig:
        """The gates a sweep candidate measured beside other candidates is judged on: all but the speed
        gate, which its quiet re-benchmark decides (parallel timings are only a screen)."""
        return self.model_copy(update={"min_speedup": None})

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


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value >= 1.0 else f"{value:.4g} ms"  # 1.234 ms, 0.2401 ms, 0.006123 ms


def speedup_gate(bench: BenchmarkReport | None, threshold: float) -> GateResult:
    """Passes when the headline speedup reaches ``threshold`` plus the measured noise
    (``BenchmarkReport.speedup_noise``); the reason names both latencies."""
    if bench is None or not (bench.float_times_ms and bench.quant_times_ms):
        value = bench.speedup if bench is not None else None
        return _gate("min_speedup", value, threshold, True, "speedup")  # no per-call times: no noise to judge
    speedup, noise = bench.speedup, bench.speedup_noise
    if math.isnan(speedup) or math.isnan(noise):
        return GateResult("min_speedup", None, threshold, False, "speedup could not be measured")
    passed = speedup - noise >= threshold - 1e-9 * max(1.0, threshold)
    where = (
        f"int8 p50 {_ms(bench.quant_latency.p50_ms)} vs float p50 {_ms(bench.float_latency.p50_ms)} at batch "
        f"{bench.batch_size}, {bench.threads} thread{'' if bench.threads == 1 else 's'}"
    )
    op = ">=" if passed else "<"
    return GateResult(
        "min_speedup",
        speedup,
        threshold,
        passed,
        f"speedup {speedup:.2f}x {op} {threshold:.2f} (+noise {noise:.2f}): {where}"
        f"{'' if bench.stable else ' (unstable timing)'}: {'passed' if passed else 'FAILED'}",
    )


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
        timed = bench is not None and bool(bench.float_times_ms) and bool(bench.quant_times_ms)
        if timed or "min_speedup" not in config.task_defaults:  # the default judges noise: it needs per-call times
            results.append(speedup_gate(bench, config.min_speedup))
    if config.max_size_ratio is not None:
        value = bench.size_ratio if bench is not None else None
        results.append(_gate("max_size_ratio", value, config.max_size_ratio, False, "size ratio"))
    return results
