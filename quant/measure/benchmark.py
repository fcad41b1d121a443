"""Latency of float vs quantized, measured interleaved (A B A B ...) in one process."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from quantstage.quant.data.inputs import batch_len
from quantstage.quant.report.plots import save_figure, subplots

__all__ = [
    "BenchmarkReport",
    "LatencyStats",
    "benchmark",
    "benchmark_many",
    "benchmark_table",
    "latency_chart",
    "paired_speedup",
    "serialized_size",
    "threads",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-call wall time of one model on one batch, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at p50
    cv: float = 0.0  # coefficient of variation (std / mean) of the per-call times

    @classmethod
    def from_times(cls, seconds: list[float], batch_size: int) -> LatencyStats:
        t = torch.tensor(seconds, dtype=torch.float64) * 1000.0
        p50, p90, p99 = (torch.quantile(t, q).item() for q in (0.5, 0.9, 0.99))
        mean = t.mean().item()
        cv = t.std().item() / mean if len(seconds) > 1 and mean > 0 else 0.0
        return cls(p50, p90, p99, mean, batch_size / (p50 / 1000.0), cv)


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """Float vs quantized latency for one batch shape and thread count, and sizes."""

    batch_size: int
    threads: int
    iterations: int
    float_latency: LatencyStats
    quant_latency: LatencyStats
    float_size_bytes: int
    quant_size_bytes: int
    stable: bool = True  # False when the coefficient of variation stayed above the limit after re-measuring
    peak_rss_mib: float | None = None  # the process's peak resident memory after the run
    float_times_ms: tuple[float, ...] = ()
    quant_times_ms: tuple[float, ...] = ()

    @property
    def speedup(self) -> float:
        """Median over the interleaved pairs of float time / quantized time.

        Each pair ran back to back, so drift (frequency, a neighbour's load) hits both of its
        calls alike and cancels in the ratio; the ratio of the two medians keeps the drift of
        the whole run. Without per-call times: the ratio of the p50s.
        """
        pairs = [f / q for f, q in zip(self.float_times_ms, self.quant_times_ms) if q > 0]
        if not pairs:
            return self.float_latency.p50_ms / self.quant_latency.p50_ms
        return float(torch.tensor(pairs, dtype=torch.float64).median().item())

    @property
    def speedup_noise(self) -> float:
        """How much of ``speedup`` the measured noise could account for: the one-sided 95 % margin of the
        median of the paired ratios, ``1.645 * 1.253 * 1.4826 * MAD / sqrt(n)`` (its standard error
        estimated from the median absolute deviation, which a few calls hit by a hiccup do not inflate).
        0 without per-call times."""
        pairs = [f / q for f, q in zip(self.float_times_ms, self.quant_times_ms) if q > 0]
        if len(pairs) < 2:
            return 0.0
        ratios = torch.tensor(pairs, dtype=torch.float64)
        mad = (ratios - ratios.median()).abs().median().item()
        return 1.645 * 1.2533 * 1.4826 * mad / math.sqrt(len(pairs))

    @property
    def speedup_bound(self) -> float:
        """``speedup`` less its noise: what the gate compares with ``min_speedup``."""
        return self.speedup - self.speedup_noise

    @property
    def p50_ratio(self) -> float:
        """Float p50 / quantized p50 (the ratio of the medians; ``speedup`` is the median ratio)."""
        return self.float_latency.p50_ms / self.quant_latency.p50_ms

    @property
    def size_ratio(self) -> float:
        """Quantized size over float size (smaller is better)."""
        return self.quant_size_bytes / self.float_size_bytes

    def as_metrics(self) -> dict[str, float]:
        """Latency metrics, speedup and sizes."""
        return self.latency_metrics() | {
            "float_size_bytes": float(self.float_size_bytes),
            "int8_size_bytes": float(self.quant_size_bytes),
            "size_ratio": self.size_ratio,
        }

    def latency_metrics(self) -> dict[str, float]:
        """Percentiles, mean, throughput of both models, and the speedup."""
        metrics: dict[str, float] = {}
        for prefix, stats in (("float", self.float_latency), ("int8", self.quant_latency)):
            metrics |= {
                f"{prefix}_latency_p50_ms": stats.p50_ms,
                f"{prefix}_latency_p90_ms": stats.p90_ms,
                f"{prefix}_latency_p99_ms": stats.p99_ms,
                f"{prefix}_latency_mean_ms": stats.mean_ms,
                f"{prefix}_throughput_sps": stats.throughput,
                f"{prefix}_latency_cv": stats.cv,
            }
        return metrics | {"speedup": self.speedup, "latency_stable": float(self.stable)}


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run with ``torch.set_num_threads(n)``; the previous setting is restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def serialized_size(model: torch.nn.Module) -> int:
    """Bytes of the model as shipped: ``ScriptModule.save`` for TorchScript, the package file for a loaded
    AOTInductor package, else its state_dict."""
    size = getattr(model, "size_bytes", None)  # a loaded AOTInductor package: its file
    if isinstance(size, int):
        return size
    buffer = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.save` is deprecated", category=DeprecationWarning)
            torch.jit.save(model, buffer)
    else:
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(
    float_model: torch.nn.Module, quant_model: torch.nn.Module, example_inputs: tuple[Any, ...], iterations: int
) -> tuple[list[float], list[float]]:
    """Interleaved pairs, the order alternating (A B, B A, ...) so neither model always runs
    right after the other one has flushed the caches."""
    float_times: list[float] = []
    quant_times: list[float] = []
    for i in range(iterations):
        if i % 2:
            quant_times.append(_timed(lambda: quant_model(*example_inputs)))
            float_times.append(_timed(lambda: float_model(*example_inputs)))
        else:
            float_times.append(_timed(lambda: float_model(*example_inputs)))
            quant_times.append(_timed(lambda: quant_model(*example_inputs)))
    return float_times, quant_times


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@torch.no_grad()
def benchmark(
    float_model: torch.nn.Module,
    quant_model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    iterations: int = 100,
    warmup: int = 10,
    num_threads: int | None = 1,
    float_size_model: torch.nn.Module | None = None,
    quant_size_model: torch.nn.Module | None = None,
    max_cv: float | None = 0.25,
    budget_s: float | None = None,
) -> BenchmarkReport:
    """Time both models interleaved (A B A B ...) on ``example_inputs`` so machine drift hits both alike.

    When either model's coefficient of variation exceeds ``max_cv`` the measurement is
    repeated once; if it is still noisy the report is marked unstable rather than
    presenting a false precision. Sizes come from ``*_size_model`` when given (e.g. the
    TorchScript that ships). With ``budget_s`` the iterations are cut (to no fewer than 10) so that
    one measurement takes about that long, judged from the warm-up calls.
    """
    float_model.eval()
    quant_model.eval()
    batch_size = batch_len(example_inputs) if example_inputs else 1
    with threads(num_threads) as n:
        started = time.perf_counter()
        for _ in range(warmup):
            float_model(*example_inputs)
            quant_model(*example_inputs)
        if budget_s is not None and warmup > 0:
            per_pair = (time.perf_counter() - started) / warmup
            iterations = max(10, min(iterations, int(budget_s / max(per_pair, 1e-9))))
        float_times, quant_times = _measure(float_model, quant_model, example_inputs, iterations)
        stats = [LatencyStats.from_times(t, batch_size) for t in (float_times, quant_times)]
        stable = max_cv is None or max(s.cv for s in stats) <= max_cv
        if not stable:
            logger.info("latency CV %.2f/%.2f above %.2f: measuring again", stats[0].cv, stats[1].cv, max_cv)
            float_times, quant_times = _measure(float_model, quant_model, example_inputs, iterations)
            stats = [LatencyStats.from_times(t, batch_size) for t in (float_times, quant_times)]
            stable = max(s.cv for s in stats) <= cast(float, max_cv)  # not None: else stable above
            if not stable:
                logger.warning("latency still noisy (CV %.2f/%.2f): result marked unstable", stats[0].cv, stats[1].cv)
    report = BenchmarkReport(
        batch_size=batch_size,
        threads=n,
        iterations=iterations,
        float_latency=stats[0],
        quant_latency=stats[1],
        float_size_bytes=serialized_size(float_size_model or float_model),
        quant_size_bytes=serialized_size(quant_size_model or quant_model),
        stable=stable,
        peak_rss_mib=_peak_rss_mib(),
        float_times_ms=tuple(t * 1000.0 for t in float_times),
        quant_times_ms=tuple(t * 1000.0 for t in quant_times),
    )
    logger.info(
        "batch %d, %d thread(s): float p50 %.3f ms, int8 p50 %.3f ms, speedup %.2fx%s",
        batch_size,
        n,
        report.float_latency.p50_ms,
        report.quant_latency.p50_ms,
        report.speedup,
        "" if stable else " (unstable)",
    )
    return report


def paired_speedup(slow_times: Sequence[float], fast_times: Sequence[float]) -> tuple[float, float]:
    """How much faster ``fast`` ran than ``slow`` in calls timed as pairs: the median of the paired ratios and its
    noise, as ``BenchmarkReport.speedup`` and ``speedup_noise`` compute them (nan, 0 without pairs)."""
    pairs = [s / f for s, f in zip(slow_times, fast_times) if f > 0]
    if not pairs:
        return math.nan, 0.0
    ratios = torch.tensor(pairs, dtype=torch.float64)
    median = ratios.median().item()
    if len(pairs) < 2:
        return median, 0.0
    mad = (ratios - median).abs().median().item()
    return median, 1.645 * 1.2533 * 1.4826 * mad / math.sqrt(len(pairs))


def _measure_many(models: Sequence[torch.nn.Module], example_inputs: tuple[Any, ...], rounds: int) -> list[list[float]]:
    """One call of each model per round, in a fresh seeded random order every round (with three or more models a
    rotated order would have one always run right after the same other one, which flushed the caches): per
    model, its per-call seconds."""
    order, rng = list(range(len(models))), random.Random(0)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        rng.shuffle(order)
        for j in order:
            start = time.perf_counter()
            models[j](*example_inputs)
            times[j].append(time.perf_counter() - start)
    return times


@torch.no_grad()
def benchmark_many(
    float_model: torch.nn.Module,
    models: dict[str, torch.nn.Module],
    example_inputs: tuple[Any, ...],
    *,
    iterations: int = 100,
    warmup: int = 10,
    num_threads: int | None = 1,
    max_cv: float | None = 0.25,
    budget_s: float | None = None,
) -> dict[str, BenchmarkReport]:
    """``benchmark`` for several quantized forms at once: the float model and every model in ``models``
    interleaved round by round on the same inputs, so drift hits them all alike; per name, its report against
    the float model's calls of the same rounds (``paired_speedup`` of two reports' ``quant_times_ms`` compares
    two forms). Measured again once when a CV exceeds ``max_cv``; ``budget_s`` cuts the rounds as ``benchmark``."""
    names, timed = list(models), [float_model.eval(), *(models[n].eval() for n in models)]
    batch_size = batch_len(example_inputs) if example_inputs else 1
    with threads(num_threads) as n:
        started = time.perf_counter()
        for _ in range(warmup):
            for model in timed:
                model(*example_inputs)
        if budget_s is not None and warmup > 0:
            per_round = (time.perf_counter() - started) / warmup
            iterations = max(10, min(iterations, int(budget_s / max(per_round, 1e-9))))
        times = _measure_many(timed, example_inputs, iterations)
        stats = [LatencyStats.from_times(t, batch_size) for t in times]
        if max_cv is not None and max(s.cv for s in stats) > max_cv:
            logger.info("latency CV %.2f above %.2f: measuring again", max(s.cv for s in stats), max_cv)
            times = _measure_many(timed, example_inputs, iterations)
            stats = [LatencyStats.from_times(t, batch_size) for t in times]
    stable = max_cv is None or max(s.cv for s in stats) <= max_cv
    float_size = serialized_size(float_model)
    return {
        name: BenchmarkReport(
            batch_size=batch_size,
            threads=n,
            iterations=iterations,
            float_latency=stats[0],
            quant_latency=stats[i],
            float_size_bytes=float_size,
            quant_size_bytes=serialized_size(models[name]),
            stable=stable,
            peak_rss_mib=_peak_rss_mib(),
            float_times_ms=tuple(t * 1000.0 for t in times[0]),
            quant_times_ms=tuple(t * 1000.0 for t in times[i]),
        )
        for i, name in enumerate(names, start=1)
    }


def latency_chart(reports: Sequence[BenchmarkReport], path: str | Path) -> Path:
    """Box plots of per-call latency, float vs int8, for each batch size and thread count (PNG)."""
    fig, axes = subplots(1, len(reports), figsize=(3.2 * len(reports) + 1, 3.6), squeeze=False)
    for ax, r in zip(axes[0], reports):
        ax.boxplot([r.float_times_ms, r.quant_times_ms], showfliers=False)
        ax.set_xticks([1, 2], ["float", "int8"])
        ax.set_title(f"batch {r.batch_size}, {r.threads} thr: {r.speedup:.2f}x" + ("" if r.stable else " (noisy)"))
        ax.set_ylabel("ms per call")
    return save_figure(fig, path)


def benchmark_table(reports: Sequence[BenchmarkReport]) -> dict[str, list[Any]]:
    """Columns for a table artifact: one row per batch size and thread count."""
    return {
        "batch_size": [r.batch_size for r in reports],
        "threads": [r.threads for r in reports],
        "float_p50_ms": [r.float_latency.p50_ms for r in reports],
        "float_p90_ms": [r.float_latency.p90_ms for r in reports],
        "float_p99_ms": [r.float_latency.p99_ms for r in reports],
        "int8_p50_ms": [r.quant_latency.p50_ms for r in reports],
        "int8_p90_ms": [r.quant_latency.p90_ms for r in reports],
        "int8_p99_ms": [r.quant_latency.p99_ms for r in reports],
        "speedup": [r.speedup for r in reports],
        "int8_throughput_sps": [r.quant_latency.throughput for r in reports],
        "stable": [r.stable for r in reports],
    }
