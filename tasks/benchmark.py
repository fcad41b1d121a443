"""Benchmark stage: float vs the shipped quantized model, interleaved, per batch size."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import to_torchscript
from quant.benchmark import BenchmarkReport, benchmark
from quant.sources import Dataset
from tasks._common import run_logger

__all__ = ["benchmark_model"]


@task(name="benchmark_model", cache_policy=NO_CACHE)
def benchmark_model(
    float_model: torch.nn.Module,
    shipped: torch.jit.ScriptModule,
    dataset: Dataset,
    *,
    batch_sizes: tuple[int, ...] | None = None,
    iterations: int = 100,
    num_threads: int = 1,
) -> list[BenchmarkReport]:
    """Latency percentiles, throughput, speedup and sizes for each batch size.

    Default batch sizes: the data's batch size (the headline numbers), then 1.
    """
    logger = run_logger()
    inputs = dataset.example_inputs[0]
    batch_sizes = batch_sizes or (int(inputs.shape[0]), 1)
    float_script, _ = to_torchscript(float_model.eval(), (inputs[:1],))
    reports = []
    for i, batch_size in enumerate(batch_sizes, start=1):
        example = (inputs[:batch_size],)
        logger.info("benchmark %d/%d: batch %d, %d thread(s)", i, len(batch_sizes), batch_size, num_threads)
        report = benchmark(
            float_model, shipped, example,
            iterations=iterations, num_threads=num_threads,
            float_size_model=float_script, quant_size_model=shipped,
        )
        logger.info(
            "batch %d: float p50 %.3f ms, int8 p50 %.3f ms, speedup %.2fx",
            report.batch_size, report.float_latency.p50_ms, report.quant_latency.p50_ms, report.speedup,
        )
        reports.append(report)
    return reports
