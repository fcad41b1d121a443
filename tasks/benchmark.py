"""Benchmark stage: float vs the shipped quantized model, interleaved, per batch size and thread count."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.inputs import args_of, batch_len, head
from quantstage.quant.data.outputs import with_output
from quantstage.quant.data.sources import Dataset
from quantstage.quant.errors import ArtifactError
from quantstage.quant.hardware import machine_info
from quantstage.quant.measure.benchmark import BenchmarkReport, benchmark, benchmark_table, latency_chart
from quantstage.quant.ship.jit import to_torchscript
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated
from quantstage.tasks.report import artifact_key

__all__ = ["benchmark_model"]


def _float_size_model(float_model: torch.nn.Module, inputs: Any) -> torch.nn.Module:
    """What the float model's size is measured on: TorchScript, as the int8 model ships (else the
    module, as torch.save stores it)."""
    try:
        return to_torchscript(float_model, args_of(head(inputs, 1)))[0]
    except ArtifactError:
        return float_model


def _log_report(report: BenchmarkReport, n_threads: int) -> None:
    run_logger().info(
        "batch %d, %d thread(s): float p50 %.3f ms, int8 p50 %.3f ms, speedup %.2fx%s",
        report.batch_size,
        n_threads,
        report.float_latency.p50_ms,
        report.quant_latency.p50_ms,
        report.speedup,
        "" if report.stable else " (UNSTABLE: noisy machine)",
    )


def _publish_table(reports: list[BenchmarkReport], name: str, cpu_model: str) -> None:
    """The latency table as a Prefect table artifact."""
    table = benchmark_table(reports)
    create_table_artifact(
        table=[dict(zip(table, row)) for row in zip(*table.values())],
        key=f"latency-{artifact_key(name)}",
        description=f"float vs int8 latency of {name} on {cpu_model}",
    )


@task(name="benchmark_model", cache_policy=NO_CACHE)
@gated("shared")
def benchmark_model(
    float_model: torch.nn.Module,
    shipped: torch.nn.Module | Callable[[], torch.nn.Module],
    dataset: Dataset,
    *,
    batch_sizes: Sequence[int] | None = None,
    threads: Sequence[int] = (1,),
    iterations: int = 100,
    max_cv: float | None = 0.25,
    out_dir: str | None = None,
    name: str = "model",
    headline_only: bool = False,
    budget_s: float | None = None,
) -> tuple[list[BenchmarkReport], dict[str, Any], str | None]:
    """Latency percentiles, throughput, speedup, sizes and peak memory for each batch size and
    thread count; the machine it ran on; a latency chart (PNG) when ``out_dir`` is given.

    Default batch sizes: the data's batch size (the headline numbers), then 1; ``headline_only``: the
    first configuration alone (a sweep's screening).

    ``shipped`` is a module, or what loads the shipped model (``Shipped.load``). Loaded, every configuration
    times a freshly loaded copy, as a server loading the model sees it: a TorchScript module that
    has already run other input shapes re-specializes and runs slower (the demo model's int8 p50
    0.63 -> 0.75 ms after mixed batch sizes), which made in-flow speedups 13 % lower than a
    standalone measurement of the same file.
    """
    logger = run_logger()
    inputs = dataset.evaluation[0][0]
    batch_sizes = list(batch_sizes or (batch_len(inputs), 1))
    float_model = with_output(float_model.eval(), dataset.output_key)
    if isinstance(shipped, torch.nn.Module):
        shipped = with_output(shipped, dataset.output_key)
    float_size_model = _float_size_model(float_model, inputs)
    info = machine_info()
    logger.info("benchmarking on %s (%s), engine %s", info["cpu_model"], info["isa_int8"], info["quantized_engine"])
    runs = [(b, t) for t in threads for b in batch_sizes][: 1 if headline_only else None]
    reports = []
    for i, (batch_size, n_threads) in enumerate(runs, start=1):
        example = args_of(head(inputs, batch_size))
        model = shipped if isinstance(shipped, torch.nn.Module) else shipped()
        logger.info(
            "benchmark %d/%d: batch %d, %d thread(s), %d calls each", i, len(runs), batch_size, n_threads, iterations
        )
        report = benchmark(
            float_model,
            model,
            example,
            iterations=iterations,
            num_threads=n_threads,
            max_cv=max_cv,
            budget_s=budget_s,
            float_size_model=float_size_model,
            quant_size_model=model,
        )
        _log_report(report, n_threads)
        reports.append(report)
    _publish_table(reports, name, str(info["cpu_model"]))
    chart = str(latency_chart(reports, Path(out_dir) / "benchmark" / "latency.png")) if out_dir else None
    return reports, info, chart
