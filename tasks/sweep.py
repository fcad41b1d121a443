"""Sweep stage I/O: the candidates' nested MLflow runs, the finalists' quiet re-benchmark, the
comparison table on the parent run (MLflow) and as a Prefect artifact.

Each candidate itself is one conversion unit (``flows.unit``), the same chain of tasks a
single conversion runs; this module holds only what a sweep adds around it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import QuantSpec, engine_for
from quantstage.quant.measure.benchmark import benchmark
from quantstage.quant.measure.gates import GateResult, speedup_gate
from quantstage.quant.search.ranking import CandidateScore, Ranking, tradeoff_chart
from quantstage.tasks._common import IO_RETRIES, run_logger
from quantstage.tasks.log_model import log_record
from quantstage.tasks.record import ConversionRecord
from quantstage.tasks.report import artifact_key
from quantstage.tasks.runs import experiment_id

__all__ = [
    "describe_error",
    "log_sweep",
    "publish_sweep_table",
    "rebenchmark_candidate",
    "start_candidate_runs",
    "tracking_uri",
]


def tracking_uri() -> str:
    """The MLflow tracking URI of this process (handed to every unit of work explicitly)."""
    return str(mlflow.get_tracking_uri())


def describe_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception (what the comparison table shows)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@task(name="start_candidate_runs", **IO_RETRIES)
def start_candidate_runs(
    parent_run_id: str, experiment: str, names: Sequence[str], tags: Mapping[str, str]
) -> list[str]:
    """Open one MLflow run per candidate, nested under ``parent_run_id``; return their ids."""
    client = mlflow.MlflowClient()
    exp = experiment_id(experiment)
    ids = []
    for index, name in enumerate(names):
        run = client.create_run(
            exp,
            run_name=f"candidate {index}: {name}"[:250],
            tags={**tags, "mlflow.parentRunId": parent_run_id, "quantstage.candidate": str(index)},
        )
        ids.append(run.info.run_id)
    run_logger().info("opened %d nested candidate runs under %s", len(ids), parent_run_id)
    return ids


def _load_shipped(model_uri: str, spec: QuantSpec, tmp: str) -> torch.nn.Module:
    """The model a candidate's run logged, downloaded and loaded by the engine that shipped it."""
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
    return engine_for(spec).load(folder).eval()


@task(name="rebenchmark_candidate", task_run_name="rebenchmark-{index}", cache_policy=NO_CACHE)
def rebenchmark_candidate(
    index: int,
    run_id: str,
    model_uri: str,
    spec: QuantSpec,
    float_model: torch.nn.Module,
    dataset: Dataset,
    *,
    iterations: int = 100,
    max_cv: float | None = 0.25,
    min_speedup: float | None = None,
) -> tuple[dict[str, float], list[GateResult]]:
    """Benchmark one candidate's shipped model (as its run logged it, loaded by ``spec``'s engine) against the
    float model, alone on the machine; log the numbers to its nested run as ``sequential_*`` metrics, judge the
    speed gate (``min_speedup``) on them, and return both."""
    with tempfile.TemporaryDirectory(prefix="quantstage-rebenchmark-") as tmp:
        shipped = _load_shipped(model_uri, spec, tmp)
        report = benchmark(
            float_model, shipped, dataset.example_inputs, iterations=iterations, num_threads=1, max_cv=max_cv
        )
    metrics = {
        "sequential_int8_latency_p50_ms": report.quant_latency.p50_ms,
        "sequential_int8_latency_p90_ms": report.quant_latency.p90_ms,
        "sequential_float_latency_p50_ms": report.float_latency.p50_ms,
        "sequential_speedup": report.speedup,
        "sequential_latency_stable": float(report.stable),
    }
    gates = [speedup_gate(report, min_speedup)] if min_speedup is not None else []
    metrics |= {f"gate.{g.name}.passed": float(g.passed) for g in gates}
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()]
    )
    run_logger().info(
        "re-benchmark #%d alone: int8 p50 %.3f ms, float p50 %.3f ms, speedup %.2fx%s",
        index,
        report.quant_latency.p50_ms,
        report.float_latency.p50_ms,
        report.speedup,
        "" if report.stable else " (unstable)",
    )
    for g in gates:
        run_logger().info("re-benchmark #%d: %s", index, g.reason)
    return metrics, gates


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@task(name="log_sweep", **IO_RETRIES)
def log_sweep(
    run_id: str,
    *,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    table: Mapping[str, list[Any]],
    scores: Sequence[CandidateScore],
    ranking: Ranking,
    documents: Mapping[str, str],
) -> None:
    """Log the sweep's params, metrics, comparison table (MLflow table), trade-off chart and
    documents to the parent run."""
    with tempfile.TemporaryDirectory(prefix="quantstage-sweep-") as work_dir:
        chart = tradeoff_chart(scores, ranking, Path(work_dir) / "tradeoff.png")
        record = ConversionRecord(
            params=dict(params),
            metrics={k: float(v) for k, v in metrics.items() if v is not None},
            documents=dict(documents),
            json_documents={},
            tables={"sweep/comparison.json": dict(table)},
            files={str(chart): "sweep"},
        )
        log_record(mlflow.MlflowClient(), run_id, record)
    run_logger().info("logged the comparison of %d candidates to run %s", len(scores), run_id)


@task(name="publish_sweep_table", cache_policy=NO_CACHE)
def publish_sweep_table(table: Mapping[str, list[Any]], name: str, description: str) -> str:
    """Publish the comparison table as a Prefect table artifact; return its key."""
    key = f"sweep-{artifact_key(name)}"
    rows = [
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in zip(table, map(_finite, values))}
        for values in zip(*table.values())
    ]
    create_table_artifact(table=json.loads(json.dumps(rows, default=str)), key=key, description=description)
    run_logger().info("published table artifact %r", key)
    return key
