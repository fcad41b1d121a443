"""Measuring a quantized model: accuracy, coverage, sensitivity, latency, and the gates on them."""

from quantstage.quant.measure.benchmark import BenchmarkReport, LatencyStats, benchmark, benchmark_table, latency_chart
from quantstage.quant.measure.coverage import Coverage, CoverageEntry, CoverageReport
from quantstage.quant.measure.evaluate import AccuracyReport, EvaluationSpec, evaluate, sqnr_db
from quantstage.quant.measure.gates import GateResult, GatesConfig, check_gates
from quantstage.quant.measure.sensitivity import LayerSensitivity, sensitivity_chart, sensitivity_table

__all__ = [
    "AccuracyReport",
    "BenchmarkReport",
    "Coverage",
    "CoverageEntry",
    "CoverageReport",
    "EvaluationSpec",
    "GateResult",
    "GatesConfig",
    "LatencyStats",
    "LayerSensitivity",
    "benchmark",
    "benchmark_table",
    "check_gates",
    "evaluate",
    "latency_chart",
    "sensitivity_chart",
    "sensitivity_table",
    "sqnr_db",
]
