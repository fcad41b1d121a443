"""Candidate stage of a sweep: one candidate spec, converted, validated, benchmarked and logged
as a nested MLflow run — one unit of work that can run on any worker.

A unit of work receives only small serialisable values (a ``CandidateJob``: spec, data and
evaluation specs, gates, the MLflow tracking URI and its nested run id) and returns only a
``CandidateResult`` (metrics, gate verdicts, MLflow run id and artifact URIs): it loads the
float model and the data itself, and its quantized model travels as the TorchScript artifact
it logged, never as a pickled GraphModule. Workers must therefore reach the MLflow tracking
server and read/write its artifact store (a shared folder, or the server's proxied artifact
store). The sweep's other MLflow I/O (the candidates' nested runs, the re-benchmark numbers,
the comparison table on the parent run) lives here too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from quant.artifacts import export_torchscript, load_torchscript, to_torchscript
from quant.benchmark import benchmark, benchmark_table
from quant.convert import convert_with_spec
from quant.coverage import coverage_report
from quant.evaluate import EvaluationSpec, evaluate
from quant.gates import GatesConfig, check_gates
from quant.errors import TracingError
from quant.inputs import args_of, head
from quant.model_source import ModelSource
from quant.prepare import calibrate, check_inputs_fit, prepare
from quant.ranking import CandidateScore, Ranking, tradeoff_chart
from quant.sensitivity import layer_sensitivity, sensitivity_chart, sensitivity_table
from quant.skips import check_skips
from quant.sources import DataSpec, Dataset
from quant.sources import load_data as build_data
from quant.spec import QuantSpec
from quant.tracing import quantize_submodules
from quant.variants import select_variant
from tasks._common import io_retry_condition, run_logger
from tasks.load import load_model
from tasks.report import artifact_key
from tasks.track import experiment_id, log_conversion

__all__ = [
    "CandidateJob",
    "CandidateResult",
    "describe_error",
    "log_sweep",
    "publish_sweep_table",
    "rebenchmark_candidate",
    "run_candidate",
    "start_candidate_runs",
    "tracking_uri",
]

_IO = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=io_retry_condition, cache_policy=NO_CACHE)
_VERIFY_BATCHES = 4
TORCHSCRIPT_PATH = "torchscript/model_int8.pt"


def tracking_uri() -> str:
    """The MLflow tracking URI of this process (handed to every unit of work explicitly)."""
    return mlflow.get_tracking_uri()


class CandidateJob(BaseModel):
    """Everything one unit of work needs: small, serialisable, no model objects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(description="Position of the candidate in the sweep.")
    name: str = Field(description="Short label: what the candidate changes.")
    spec: QuantSpec
    source: ModelSource = Field(description="Float source model; every worker loads it itself.")
    data: DataSpec
    evaluation: EvaluationSpec
    gates: GatesConfig = Field(description="The gates, already adapted to the evaluation task.")
    run_id: str = Field(description="The candidate's nested MLflow run (created by the flow).")
    tracking_uri: str = Field(description="MLflow tracking URI the worker must use.")
    benchmark_iterations: int = Field(20, description="Timed calls per model (a screening: other candidates run beside it).")
    benchmark_max_cv: float | None = Field(None, description="Re-measure above this CV (None: no re-measure).")
    ship_tolerance: float = 0.0
    sensitivity: bool = False
    sensitivity_batches: int = 4


class CandidateResult(BaseModel):
    """What one unit of work returns: numbers, verdicts, and where its artifacts are."""

    index: int
    name: str
    run_id: str
    spec_hash: str
    backend: str
    mode: str
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[dict[str, Any]] = Field(default_factory=list)
    passed: bool = False
    model_uri: str | None = Field(None, description="runs:/<nested run>/model, what the registry gets.")
    torchscript_uri: str | None = Field(None, description="runs:/<nested run>/torchscript/model_int8.pt.")
    error: str | None = Field(None, description="The unit of work raised: type and first line.")
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall time per step in the unit of work.")
    worker: str = ""

    @classmethod
    def failed(cls, job: CandidateJob, error: str) -> CandidateResult:
        return cls(
            index=job.index, name=job.name, run_id=job.run_id, spec_hash=job.spec.digest(),
            backend=job.spec.backend, mode=job.spec.mode, error=error,
        )

    def score(self, sequential_p50_ms: float | None = None) -> CandidateScore:
        """The ranking's view of this candidate (``sequential_p50_ms``: its quiet re-measurement)."""
        return CandidateScore(
            index=self.index,
            name=self.name,
            passed=self.passed and self.error is None,
            accuracy_drop=self.metrics.get("accuracy_drop"),
            latency_ms=sequential_p50_ms,
            parallel_latency_ms=self.metrics.get("int8_latency_p50_ms"),
            failed_gates=tuple(str(g["reason"]) for g in self.gates if not g.get("passed")),
            error=self.error,
            metrics=dict(self.metrics),
        )


def describe_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception (what the comparison table shows)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class _ProcessGate:
    """What the units of work running as threads of one process must not do at the same time.

    ``torch.backends.quantized.engine`` and ``torch.set_num_threads`` are process-wide, and FX
    symbolic tracing (prepare, the numeric suite) patches ``torch.nn.Module.__call__`` for the
    whole process while it runs, so a module called from another thread meanwhile is traced
    into the wrong graph. ``shared(engine)`` lets units of work with the same engine overlap;
    ``exclusive(engine)`` (tracing) waits until no other unit holds the gate and keeps it alone.
    A waiting exclusive holder goes first. The first holder sets one intra-op thread, the last
    one restores the previous count. Dask workers with one thread each never wait.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._engine: str | None = None
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._threads_before = 0

    def _blocked(self, engine: str, exclusive: bool) -> bool:
        if self._exclusive:
            return True
        if exclusive:
            return self._shared > 0
        return self._waiting > 0 or (self._shared > 0 and self._engine != engine)

    @contextlib.contextmanager
    def _hold(self, engine: str, exclusive: bool) -> Iterator[None]:
        with self._cond:
            self._waiting += exclusive
            while self._blocked(engine, exclusive):
                self._cond.wait()
            self._waiting -= exclusive
            if not (self._shared or self._exclusive):
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(1)
            torch.backends.quantized.engine = engine
            self._engine = engine
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                if not (self._shared or self._exclusive):
                    torch.set_num_threads(self._threads_before)
                    self._engine = None
                self._cond.notify_all()

    def shared(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._hold(engine, exclusive=False)

    def exclusive(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._hold(engine, exclusive=True)


_GATE = _ProcessGate()


@task(name="start_candidate_runs", **_IO)
def start_candidate_runs(parent_run_id: str, experiment: str, names: Sequence[str], tags: Mapping[str, str]) -> list[str]:
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


def _verify_inputs(dataset: Dataset) -> list[tuple[Any, ...]]:
    batches = [args_of(inputs) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    return batches + [args_of(head(dataset.evaluation[0][0], 1))]  # batch 1 too: the serving shape


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _trace(job: CandidateJob, model: torch.nn.Module, dataset: Dataset) -> tuple[str, Any]:
    """Prepare (FX-trace) the model, or quantize it by submodules when it does not trace as a
    whole (``spec.tracing``, as convert_flow's choose_tracing); run under the exclusive gate."""
    spec = job.spec
    if spec.tracing != "submodules":
        try:
            prepared = prepare(model, dataset.example_inputs, spec)
        except TracingError:
            if spec.tracing == "whole":
                raise
        else:
            for unused in check_skips(model, prepared, spec):  # raises instead when spec.strict_skips
                run_logger().warning(unused.message)
            return "whole", prepared
    calibration = [args_of(x) for x, _ in dataset.calibration[: spec.calibration_batches]]
    return "submodules", quantize_submodules(model, spec, dataset.example_inputs, calibration)


def _convert_and_check(job: CandidateJob, work_dir: str) -> CandidateResult:
    logger = run_logger()
    clock = _Clock()
    spec = job.spec
    source = load_model.fn(job.source)
    dataset = build_data(job.data, source.model)
    with _GATE.shared(spec.backend):
        check_inputs_fit(source.model, dataset.example_inputs, dataset.input_names)
    clock.lap("load_s")
    with _GATE.exclusive(spec.backend):  # FX tracing: nothing else in this process may call a module
        tracing, traced = _trace(job, source.model, dataset)
    clock.lap("convert_s")
    with _GATE.shared(spec.backend):
        if tracing == "whole":
            prepared = traced
            if spec.mode == "static":
                calibrate(prepared, dataset.calibration, max_batches=spec.calibration_batches)
            reference, quantized = convert_with_spec(prepared, spec)
        else:
            prepared, reference, quantized = None, None, traced.model
        clock.lap("convert_s")
        accuracy = evaluate(source.model, quantized, dataset.evaluation, job.evaluation)
        coverage = coverage_report(source.model, reference, quantized) if reference is not None else traced.report
        clock.lap("validate_s")
        verify = _verify_inputs(dataset)
        method, module, variants = select_variant(quantized, verify, tolerance=job.ship_tolerance)
        artifact = export_torchscript(
            module, Path(work_dir) / "model_int8.pt", verify, reference=quantized, tolerance=job.ship_tolerance,
            method=method,
        )
        clock.lap("export_s")
        float_script, _ = to_torchscript(source.model.eval(), args_of(head(dataset.evaluation[0][0], 1)))
        report = benchmark(
            source.model, artifact.module, dataset.example_inputs,
            iterations=job.benchmark_iterations, num_threads=1, max_cv=job.benchmark_max_cv,
            float_size_model=float_script, quant_size_model=artifact.module,
        )
        clock.lap("benchmark_s")
    gates = check_gates(job.gates, accuracy, report, coverage)
    passed = all(g.passed for g in gates)
    metrics = accuracy.as_metrics() | report.as_metrics()
    metrics |= {f"gate.{g.name}.passed": float(g.passed) for g in gates}
    metrics |= {
        "gates_passed": float(passed),
        "quantized_layers": float(coverage.quantized_count),
        "quantized_fraction": coverage.quantized_fraction,
    }
    tables = {
        "benchmark/latency.json": benchmark_table([report]),
        "export/variants.json": {k: [getattr(v, k) for v in variants] for k in ("name", "p50_ms", "max_abs_diff", "matches", "shippable")},
        "coverage/coverage.json": coverage.as_table(),
    }
    files = {str(artifact.path): str(Path(TORCHSCRIPT_PATH).parent)}
    if job.sensitivity and prepared is not None:
        try:
            with _GATE.exclusive(spec.backend):  # the numeric suite traces too
                layers = layer_sensitivity(prepared, quantized, dataset.calibration, max_batches=job.sensitivity_batches)
        except Exception as exc:  # diagnostics must not fail a candidate that is otherwise fine
            logger.warning("per-layer sensitivity is unavailable: %s", describe_error(exc))
            layers = []
        if layers:
            tables["sensitivity/sensitivity.json"] = sensitivity_table(layers)
            files[str(sensitivity_chart(layers, Path(work_dir) / "sensitivity.png"))] = "sensitivity"
        clock.lap("sensitivity_s")
    logger.info(
        "candidate %d (%s): accuracy drop %s, SQNR %.1f dB, int8 p50 %.3f ms (parallel), speedup %.2fx, gates %s",
        job.index, job.name, metrics.get("accuracy_drop"), accuracy.sqnr_db, report.quant_latency.p50_ms,
        report.speedup, "passed" if passed else "FAILED",
    )
    metrics |= {f"candidate.{k}": v for k, v in clock.seconds.items()}
    documents = {"spec.json": spec.to_json(), "code/quantized.py": getattr(quantized, "code", "")}
    if reference is not None:
        documents["reference/reference.py"] = reference.code
    with _GATE.shared(spec.backend):  # logging the model calls it once (signature)
        model_uri = log_conversion.fn(
            job.run_id,
            params={
                **spec.as_params(),
                "source_uri": job.source.uri or job.source.label,
                "source_version": source.version or "",
                "candidate.index": str(job.index),
                "candidate.name": job.name[:500],
                "resolved.tracing": tracing,
                "data.source": job.data.source,
                "data.batch_size": str(job.data.batch_size),
                "data.inputs": dataset.describe()[:500],
                "export.method": artifact.method,
            },
            metrics=metrics,
            documents=documents,
            json_documents={"gates.json": [g.as_dict() for g in gates]},
            tables=tables,
            artifact=artifact,
            example=dataset.example_inputs,
            input_names=dataset.input_names,
            files=files,
        )
    clock.lap("log_s")
    return CandidateResult(
        index=job.index, name=job.name, run_id=job.run_id, spec_hash=spec.digest(), backend=spec.backend,
        mode=spec.mode, metrics=metrics, gates=[g.as_dict() for g in gates], passed=passed, model_uri=model_uri,
        torchscript_uri=f"runs:/{job.run_id}/{TORCHSCRIPT_PATH}", seconds=clock.seconds,
    )


def _fail_run(run_id: str, error: str, detail: str) -> None:
    with contextlib.suppress(Exception):  # the original error matters more than this bookkeeping
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "quantstage.error", error[:5000])
        client.log_text(run_id, detail, "error.txt")
        client.set_terminated(run_id, status="FAILED")


@task(name="run_candidate", task_run_name="candidate-{job.index}", cache_policy=NO_CACHE)
def run_candidate(job: CandidateJob) -> CandidateResult:
    """Convert, validate, export, benchmark and log one candidate as its nested MLflow run."""
    # The task's function travels to Dask workers by value (cloudpickle); it only names
    # module-level functions, which travel by reference, never the per-process gate (a lock).
    return _run_candidate(job)


def _run_candidate(job: CandidateJob) -> CandidateResult:
    import socket

    started = time.perf_counter()
    mlflow.set_tracking_uri(job.tracking_uri)
    run_logger().info("candidate %d: %s (spec %s) on %s", job.index, job.name, job.spec.digest(), socket.gethostname())
    try:
        with tempfile.TemporaryDirectory(prefix="quantstage-candidate-") as work_dir:
            result = _convert_and_check(job, work_dir)
    except BaseException as exc:
        _fail_run(job.run_id, describe_error(exc), traceback.format_exc())
        raise
    seconds = result.seconds | {"total_s": time.perf_counter() - started}
    with contextlib.suppress(Exception):
        mlflow.MlflowClient().log_metric(job.run_id, "candidate.total_s", seconds["total_s"])
    return result.model_copy(update={"seconds": seconds, "worker": f"{socket.gethostname()}:{os.getpid()}"})


@task(name="rebenchmark_candidate", task_run_name="rebenchmark-{index}", cache_policy=NO_CACHE)
def rebenchmark_candidate(
    index: int,
    run_id: str,
    torchscript_uri: str,
    backend: str,
    float_model: torch.nn.Module,
    dataset: Dataset,
    *,
    iterations: int = 100,
    max_cv: float | None = 0.25,
) -> dict[str, float]:
    """Benchmark one candidate's TorchScript against the float model, alone on the machine;
    log the numbers to its nested run as ``sequential_*`` metrics and return them."""
    with tempfile.TemporaryDirectory(prefix="quantstage-rebenchmark-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=torchscript_uri, dst_path=tmp)
        with _GATE.shared(backend):
            shipped = load_torchscript(path)
            report = benchmark(float_model, shipped, dataset.example_inputs, iterations=iterations, num_threads=1, max_cv=max_cv)
    metrics = {
        "sequential_int8_latency_p50_ms": report.quant_latency.p50_ms,
        "sequential_int8_latency_p90_ms": report.quant_latency.p90_ms,
        "sequential_float_latency_p50_ms": report.float_latency.p50_ms,
        "sequential_speedup": report.speedup,
        "sequential_latency_stable": float(report.stable),
    }
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()]
    )
    run_logger().info(
        "re-benchmark #%d alone: int8 p50 %.3f ms, float p50 %.3f ms, speedup %.2fx%s",
        index, report.quant_latency.p50_ms, report.float_latency.p50_ms, report.speedup,
        "" if report.stable else " (unstable)",
    )
    return metrics


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@task(name="log_sweep", **_IO)
def log_sweep(
    run_id: str,
    *,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    table: Mapping[str, list],
    scores: Sequence[CandidateScore],
    ranking: Ranking,
    documents: Mapping[str, str],
) -> None:
    """Log the sweep's params, metrics, comparison table (MLflow table), trade-off chart and
    documents to the parent run."""
    with tempfile.TemporaryDirectory(prefix="quantstage-sweep-") as work_dir:
        chart = tradeoff_chart(scores, ranking, Path(work_dir) / "tradeoff.png")
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params(dict(params))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            with warnings.catch_warnings():  # MLflow's own pandas-3 notice, raised inside log_table
                warnings.filterwarnings("ignore", message=r"For backward compatibility, 'str' dtypes")
                mlflow.log_table(
                    data={k: [_finite(v) for v in column] for k, column in table.items()},
                    artifact_file="sweep/comparison.json",
                )
            mlflow.log_artifact(str(chart), "sweep")
            for name, text in documents.items():
                mlflow.log_text(text, name)
    run_logger().info("logged the comparison of %d candidates to run %s", len(scores), run_id)


@task(name="publish_sweep_table", cache_policy=NO_CACHE)
def publish_sweep_table(table: Mapping[str, list], name: str, description: str) -> str:
    """Publish the comparison table as a Prefect table artifact; return its key."""
    key = f"sweep-{artifact_key(name)}"
    rows = [
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in zip(table, map(_finite, values))}
        for values in zip(*table.values())
    ]
    create_table_artifact(table=json.loads(json.dumps(rows, default=str)), key=key, description=description)
    run_logger().info("published table artifact %r", key)
    return key
