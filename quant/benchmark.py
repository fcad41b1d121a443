"""Latency of float vs quantized, measured interleaved (A B A B ...) in one process."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["BenchmarkReport", "LatencyStats", "benchmark", "serialized_size", "threads"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-call wall time of one model on one batch, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at p50

    @classmethod
    def from_times(cls, seconds: list[float], batch_size: int) -> LatencyStats:
        t = torch.tensor(seconds, dtype=torch.float64) * 1000.0
        p50, p90, p99 = (torch.quantile(t, q).item() for q in (0.5, 0.9, 0.99))
        return cls(p50, p90, p99, t.mean().item(), batch_size / (p50 / 1000.0))


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

    @property
    def speedup(self) -> float:
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
            }
        return metrics | {"speedup": self.speedup}


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
    """Bytes of the model as shipped: ``ScriptModule.save`` for TorchScript, else its state_dict."""
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
) -> BenchmarkReport:
    """Time both models interleaved on ``example_inputs`` so machine drift hits both alike.

    Sizes are taken from ``*_size_model`` when given (e.g. the TorchScript that ships).
    """
    float_model.eval()
    quant_model.eval()
    batch_size = int(example_inputs[0].shape[0]) if example_inputs else 1
    with threads(num_threads) as n:
        for _ in range(warmup):
            float_model(*example_inputs)
            quant_model(*example_inputs)
        float_times, quant_times = [], []
        for _ in range(iterations):
            float_times.append(_timed(lambda: float_model(*example_inputs)))
            quant_times.append(_timed(lambda: quant_model(*example_inputs)))
    report = BenchmarkReport(
        batch_size=batch_size,
        threads=n,
        iterations=iterations,
        float_latency=LatencyStats.from_times(float_times, batch_size),
        quant_latency=LatencyStats.from_times(quant_times, batch_size),
        float_size_bytes=serialized_size(float_size_model or float_model),
        quant_size_bytes=serialized_size(quant_size_model or quant_model),
    )
    logger.info(
        "batch %d, %d thread(s): float p50 %.3f ms, int8 p50 %.3f ms, speedup %.2fx",
        batch_size, n, report.float_latency.p50_ms, report.quant_latency.p50_ms, report.speedup,
    )
    return report
