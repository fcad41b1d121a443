"""The default speedup gate: int8 must beat float by more than the measured noise at the headline batch."""

from __future__ import annotations

import dataclasses

import pytest

from quantstage.quant.measure.benchmark import BenchmarkReport, LatencyStats
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GatesConfig, check_gates

ACCURACY = AccuracyReport(100, 1.0, 1.0, 1.0, 40.0)


def _report(ratios: list[float], quant_ms: float = 1.0, batch_size: int = 1, threads: int = 1) -> BenchmarkReport:
    """A report whose interleaved pairs have these float/int8 ratios (int8 takes ``quant_ms`` per call)."""
    float_times = [quant_ms * r for r in ratios]
    quant_times = [quant_ms] * len(ratios)
    return BenchmarkReport(
        batch_size=batch_size,
        threads=threads,
        iterations=len(ratios),
        float_latency=LatencyStats.from_times([t / 1000 for t in float_times], batch_size),
        quant_latency=LatencyStats.from_times([t / 1000 for t in quant_times], batch_size),
        float_size_bytes=1000,
        quant_size_bytes=250,
        float_times_ms=tuple(float_times),
        quant_times_ms=tuple(quant_times),
    )


def _speedup(gates: GatesConfig, bench: BenchmarkReport | None) -> list:
    return [r for r in check_gates(gates.for_task("classification"), ACCURACY, bench) if r.name == "min_speedup"]


def _spread(center: float, half_width: float, n: int = 100) -> list[float]:
    """``n`` ratios evenly spread over ``center`` ± ``half_width``."""
    return [center - half_width + 2 * half_width * i / (n - 1) for i in range(n)]


def test_the_noise_is_the_robust_margin_of_the_median() -> None:
    report = _report(_spread(1.5, 0.5))  # 1.0, 1.0101, ... 2.0: MAD 25/99, n = 100
    assert report.speedup_noise == pytest.approx(1.645 * 1.2533 * 1.4826 * (25 / 99) / 10)
    assert report.speedup_bound == pytest.approx(report.speedup - report.speedup_noise)
    bare = dataclasses.replace(report, float_times_ms=(), quant_times_ms=())
    assert bare.speedup_noise == 0.0 and bare.speedup_bound == bare.speedup  # no per-call times: no noise


def test_a_few_hiccups_do_not_sink_a_clear_win() -> None:
    """10 pairs (benchmark_iterations 5), two of them hit by a stall on the int8 call: still 5x."""
    ratios = [5.0, 4.9, 5.1, 0.3, 5.2, 4.8, 5.0, 0.5, 5.1, 4.9]
    (result,) = _speedup(GatesConfig(), _report(ratios, quant_ms=0.25, batch_size=32))
    assert result.passed, result.reason
    assert result.reason.startswith("speedup 4.90x >= 1.00 (+noise 0.")


def test_every_task_defaults_to_speedup_one() -> None:
    for task in ("classification", "embedding", "regression"):
        gates = GatesConfig().for_task(task)
        assert gates.min_speedup == 1.0 and "min_speedup" in gates.task_defaults


def test_faster_beyond_the_noise_passes() -> None:
    (result,) = _speedup(GatesConfig(), _report(_spread(1.5, 0.1), quant_ms=0.8))
    assert result.passed and result.threshold == 1.0 and result.value == pytest.approx(1.5, abs=0.01)
    assert result.reason.startswith("speedup 1.50x >= 1.00 (+noise 0.02): int8 p50 0.8 ms vs float p50 1.2")
    assert result.reason.endswith("at batch 1, 1 thread: passed")


def test_slower_fails_naming_both_latencies() -> None:
    (result,) = _speedup(GatesConfig(), _report(_spread(0.8, 0.02), quant_ms=1.5, batch_size=4, threads=2))
    assert not result.passed
    assert result.reason == (
        "speedup 0.80x < 1.00 (+noise 0.00): int8 p50 1.500 ms vs float p50 1.200 ms at batch 4, 2 threads: FAILED"
    )


def test_faster_within_the_noise_fails() -> None:
    """A median speedup above the threshold is not enough when the noise could account for it."""
    (result,) = _speedup(GatesConfig(), _report(_spread(1.05, 0.4)))
    assert result.value is not None and result.value > 1.0
    assert not result.passed
    assert "< 1.00 (+noise 0.06)" in result.reason and result.reason.endswith("FAILED")


def test_an_explicit_threshold_takes_the_noise_too() -> None:
    bench = _report(_spread(1.6, 0.2))
    assert not _speedup(GatesConfig(min_speedup=1.6), bench)[0].passed
    assert _speedup(GatesConfig(min_speedup=1.5), bench)[0].passed


def test_null_switches_the_speedup_gate_off() -> None:
    gates = GatesConfig.model_validate({"min_speedup": None})
    assert gates.for_task("classification").min_speedup is None
    assert _speedup(gates, _report(_spread(0.5, 0.01))) == []


def test_the_default_needs_per_call_times_an_explicit_gate_does_not() -> None:
    """Without paired timings there is no noise to judge: the default is skipped (like the accuracy default
    without labels); an explicit threshold still fails an unmeasured speedup."""
    assert _speedup(GatesConfig(), None) == []
    (explicit,) = _speedup(GatesConfig(min_speedup=1.0), None)
    assert not explicit.passed and explicit.reason == "speedup could not be measured"
