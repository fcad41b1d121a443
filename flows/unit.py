"""One conversion unit: a float model and a spec in; a verified, measured int8 model logged to its
MLflow run out. Both flows compose it: ``convert_flow`` runs one, ``sweep_flow`` one per
candidate (``convert_candidate``, a task that can run on any worker).

The unit is the chain of stage tasks — calibrate → reference_convert → lower → validate →
(sensitivity) → (fallback) → export → benchmark → log — so a sweep candidate gets everything a
single conversion gets: coverage, sensitivity when asked, the fallback, the rebuild bundle when
no TorchScript form reproduces the model, the reference model, the report. It takes and returns
only small serialisable values (``UnitJob``, ``UnitResult``: numbers, verdicts, run ids, URIs);
models travel as the artifacts it logged. Registration is not part of it: the flows publish
the unit (or the sweep's winner) with ``tasks.publish``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from quantstage.flows.params import StageParams
from quantstage.quant.config.spec import QuantSpec
from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.sources import Dataset, DataSpec
from quantstage.quant.measure.evaluate import EvaluationSpec
from quantstage.quant.measure.gates import GateResult, GatesConfig, check_gates
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.report.markdown import render_report
from quantstage.quant.search.fallback import FallbackConfig, FallbackResult
from quantstage.quant.search.ranking import CandidateScore
from quantstage.tasks._gate import GATE, NO_GATE
from quantstage.tasks.benchmark import benchmark_model
from quantstage.tasks.calibrate import calibrate
from quantstage.tasks.export import export_model, export_reference
from quantstage.tasks.fallback import fallback_search
from quantstage.tasks.load import SourceModel, fetch_file, load_data, load_model
from quantstage.tasks.log_model import log_conversion
from quantstage.tasks.lower import lower
from quantstage.tasks.record import conversion_record
from quantstage.tasks.reference_convert import reference_convert
from quantstage.tasks.runs import end_run, fail_run, log_metrics, use_tracking_uri
from quantstage.tasks.sensitivity import analyze_sensitivity
from quantstage.tasks.sweep import describe_error
from quantstage.tasks.validate import validate_accuracy

__all__ = ["UnitJob", "UnitResult", "convert_candidate", "convert_unit"]


class UnitJob(BaseModel):
    """Everything one conversion unit needs: small, serialisable, no model objects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(0, description="Position of the candidate in a sweep (0 for a single conversion).")
    name: str = Field("", description="Short label: what the candidate changes.")
    spec: QuantSpec
    source: ModelSource = Field(description="Float source model; a worker loads it itself.")
    source_label: str
    data: DataSpec
    evaluation: EvaluationSpec
    gates: GatesConfig = Field(description="The gates, already adapted to the evaluation task.")
    fallback: FallbackConfig
    sensitivity: bool
    sensitivity_batches: int
    qat_checkpoint: str | None = None
    output: str | None = Field(None, description="The part of forward's output to compare (SourceParams.output).")
    benchmark_iterations: int
    benchmark_threads: tuple[int, ...] = (1,)
    benchmark_batch_sizes: tuple[int, ...] | None = None
    benchmark_max_cv: float | None = 0.25
    benchmark_budget_s: float | None = 10.0
    export_budget_s: float | None = 10.0
    ship_tolerance: float = 0.0
    run_id: str = Field(description="The unit's MLflow run (created by the flow).")
    target_name: str = Field(description="Registry name of the result (the report's and the charts' title).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI a worker must use (None: this process's).")
    parallel: bool = Field(False, description="Runs beside other units in one process: process gate, one thread.")
    promotion: str = Field("promotion decided at registration", description="The report's verdict until then.")
    extra_params: dict[str, str] = Field(default_factory=dict, description="More MLflow params (candidate index...).")
    documents: dict[str, str] = Field(default_factory=dict, description="More text artifacts (the flow's params...).")

    @classmethod
    def of(cls, params: StageParams, spec: QuantSpec, run_id: str, **fields: Any) -> UnitJob:
        """The job of ``params`` for ``spec`` logging to ``run_id`` (``fields`` override)."""
        values: dict[str, Any] = dict(
            spec=spec,
            source=params.source,
            source_label=params.source_label,
            data=params.data,
            output=params.output,
            evaluation=params.evaluation,
            gates=params.gates.for_task(params.evaluation.task),
            fallback=params.fallback,
            sensitivity=params.sensitivity,
            sensitivity_batches=params.sensitivity_batches,
            benchmark_iterations=params.benchmark_iterations,
            benchmark_threads=params.benchmark_threads,
            benchmark_batch_sizes=params.benchmark_batch_sizes,
            benchmark_max_cv=params.benchmark_max_cv,
            benchmark_budget_s=params.benchmark_budget_s,
            export_budget_s=params.export_budget_s,
            ship_tolerance=params.ship_tolerance,
            run_id=run_id,
            target_name=params.target_name,
        )
        return cls(**(values | fields))


class UnitResult(BaseModel):
    """What one unit returns: numbers, verdicts, the report, and where its model is."""

    index: int = 0
    name: str = ""
    run_id: str
    spec: QuantSpec = Field(description="The spec the shipped model was made with (after the fallback).")
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[dict[str, Any]] = Field(default_factory=list)
    passed: bool = False
    model_uri: str | None = Field(None, description="The logged model, what the registry gets.")
    shipped_as: str = Field("", description="torchscript, torchscript_frozen, ..., or rebuild_bundle.")
    float_layers: list[str] = Field(default_factory=list, description="Layers the fallback kept float.")
    report: str = Field("", description="The Markdown report, verdict line pending the promotion.")
    failure: str = Field("", description="Why the gates failed (with the fallback's best trial).")
    source_name: str | None = None
    source_version: str | None = None
    source_run_id: str | None = None
    error: str | None = Field(None, description="The unit raised: type and first line.")
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall time per step.")
    worker: str = ""

    @classmethod
    def failed(cls, job: UnitJob, error: str) -> UnitResult:
        return cls(index=job.index, name=job.name, run_id=job.run_id, spec=job.spec, error=error)

    def score(
        self, sequential: Mapping[str, float] | None = None, sequential_gates: Sequence[GateResult] = ()
    ) -> CandidateScore:
        """The ranking's view of this unit: ``sequential`` its quiet re-measurement (``sequential_*``
        metrics), ``sequential_gates`` the gates judged on it."""
        failed = [str(g["reason"]) for g in self.gates if not g.get("passed")]
        failed += [g.reason for g in sequential_gates if not g.passed]
        return CandidateScore(
            index=self.index,
            name=self.name,
            passed=self.passed and self.error is None and all(g.passed for g in sequential_gates),
            accuracy_drop=self.metrics.get("accuracy_drop"),
            latency_ms=(sequential or {}).get("sequential_int8_latency_p50_ms"),
            parallel_latency_ms=self.metrics.get("int8_latency_p50_ms"),
            failed_gates=tuple(failed),
            error=self.error,
            metrics=dict(self.metrics),
        )


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _failure(gates: list[Any], fallback: FallbackResult | None) -> str:
    message = "; ".join(g.reason for g in gates if not g.passed)
    if fallback is not None and fallback.chosen is None and fallback.best is not None:
        best = fallback.best
        message += (
            f"; the fallback ran {fallback.evaluations} trial(s) and none passed, best: float "
            f"{list(best.float_layers)} with accuracy drop {best.accuracy_drop:.4f}"
        )
    return message


def convert_unit(job: UnitJob, source: SourceModel | None = None, dataset: Dataset | None = None) -> UnitResult:
    """Run the stages of one conversion and log them to ``job.run_id`` (see the module docstring)."""
    gate, backend, clock = (GATE if job.parallel else NO_GATE), job.spec.backend, _Clock()
    with gate.shared(backend):  # loading the data runs the model once
        source = source or load_model(job.source)
        dataset = dataset or load_data(job.data, source.model, job.output)
    qat = fetch_file(job.qat_checkpoint) if job.qat_checkpoint else None
    clock.lap("load_s")
    with gate.exclusive(backend):  # tracing patches Module.__call__ process-wide
        prepared = calibrate(source.model, dataset, job.spec, qat)
    with gate.shared(backend):
        quantized = lower(reference_convert(prepared))
        clock.lap("convert_s")
        accuracy = validate_accuracy(source.model, quantized.model, dataset, job.evaluation)
    clock.lap("validate_s")
    accuracy_ok = all(g.passed for g in check_gates(job.gates.accuracy_only(), accuracy))
    search = job.fallback.enabled and not accuracy_ok and quantized.prepared is not None and qat is None
    with tempfile.TemporaryDirectory(prefix="quantstage-") as work_dir:
        layers: list[LayerSensitivity] = []
        chart: str | None = None
        fallback: FallbackResult | None = None
        if job.sensitivity or search:  # the fallback ranks layers by sensitivity
            with gate.exclusive(backend):  # the numeric suite traces too
                layers, chart = analyze_sensitivity(
                    quantized, dataset, work_dir, job.target_name, job.sensitivity_batches
                )
            clock.lap("sensitivity_s")
        if search and layers:
            with gate.exclusive(backend):
                fallback, chosen = fallback_search(
                    job.run_id,
                    source.model,
                    dataset,
                    quantized.spec,
                    job.gates,
                    [layer.name for layer in layers],
                    job.fallback,
                    job.evaluation,
                )
                if chosen is not None:
                    quantized = lower(reference_convert(calibrate(source.model, dataset, chosen)))
                    accuracy = validate_accuracy(source.model, quantized.model, dataset, job.evaluation)
            clock.lap("fallback_s")
        with gate.shared(backend):
            shipped = export_model(quantized, dataset, work_dir, job.source, job.ship_tolerance, job.export_budget_s)
            reference = export_reference(quantized, dataset, work_dir)
            clock.lap("export_s")
            benchmarks, machine, latency_png = benchmark_model(
                source.model,
                str(shipped.artifact.path) if shipped.artifact else quantized.model,
                dataset,
                batch_sizes=job.benchmark_batch_sizes,
                threads=job.benchmark_threads,
                iterations=job.benchmark_iterations,
                max_cv=job.benchmark_max_cv,
                budget_s=job.benchmark_budget_s,
                out_dir=work_dir,
                name=job.target_name,
                headline_only=job.parallel,
            )
            clock.lap("benchmark_s")
        spec = quantized.spec
        # beside other candidates the timing is a screen: a sweep judges speed on the quiet re-benchmark
        judged = job.gates.screening() if job.parallel else job.gates
        gates = check_gates(judged, accuracy, benchmarks[0], quantized.coverage)
        report = render_report(
            source_uri=job.source_label,
            spec=spec,
            accuracy=accuracy,
            benchmarks=benchmarks,
            gates=gates,
            registered=job.target_name,
            promotion=job.promotion,
            sensitivity=layers,
            fallback=fallback,
            coverage=quantized.coverage,
            variants=shipped.variants,
            machine=machine,
            shipped_as=None
            if shipped.bundle is None
            else (
                "No TorchScript form (script, trace, frozen) reproduces this model, so it ships as the factory "
                f"`{job.source.factory}`, the spec and the quantized state_dict (`model/artifacts/bundle/`, "
                "verified bit-exact by rebuilding). Load it with `mlflow.pyfunc.load_model(uri)` or "
                "`quantstage.quant.rebuild(folder)`; the factory must be importable there."
            ),
        )
        files = {path: folder for path, folder in ((latency_png, "benchmark"), (chart, "sensitivity")) if path}
        if reference is not None:
            files[str(reference.path)] = "reference"
        record = conversion_record(
            spec=spec,
            quantized=quantized,
            accuracy=accuracy,
            benchmarks=benchmarks,
            gates=gates,
            dataset=dataset,
            data=job.data,
            source_label=job.source_label,
            source_version=source.version,
            shipped_as=shipped.method,
            report=report,
            variants=shipped.variants,
            sensitivity=layers,
            machine=machine,
            files=files,
            extra_params={"fallback.enabled": str(job.fallback.enabled), **job.extra_params},
            extra_metrics={f"candidate.{k}": v for k, v in clock.seconds.items()} if job.parallel else None,
            documents=job.documents,
        )
        with gate.shared(backend):  # logging runs the shipped model once (its signature): no FX trace beside it
            model_uri = log_conversion(
                job.run_id,
                record,
                shipped=shipped.artifact,
                bundle=shipped.bundle,
                example=dataset.example_inputs,
                input_names=dataset.input_names,
            )
    clock.lap("log_s")
    passed = all(g.passed for g in gates)
    return UnitResult(
        index=job.index,
        name=job.name,
        run_id=job.run_id,
        spec=spec,
        metrics=record.metrics,
        gates=[g.as_dict() for g in gates],
        passed=passed,
        model_uri=model_uri,
        shipped_as=shipped.method,
        float_layers=list(fallback.chosen.float_layers) if fallback and fallback.chosen else [],
        report=report,
        failure="" if passed else _failure(gates, fallback),
        source_name=source.name,
        source_version=source.version,
        source_run_id=source.run_id,
        seconds=clock.seconds,
    )


@task(name="convert_candidate", task_run_name="candidate-{job.index}", cache_policy=NO_CACHE)
def convert_candidate(job: UnitJob) -> UnitResult:
    """One sweep candidate's conversion unit, on whichever worker runs it; its run FAILED when it raises."""
    started = time.perf_counter()
    use_tracking_uri(job.tracking_uri)
    try:
        result = convert_unit(job)
    except BaseException as exc:
        fail_run(job.run_id, describe_error(exc), traceback.format_exc())
        raise
    seconds = result.seconds | {"total_s": time.perf_counter() - started}
    log_metrics(job.run_id, {"candidate.total_s": seconds["total_s"]})
    end_run(job.run_id, "FINISHED")  # the candidate is complete; the sweep tags its winner later
    return result.model_copy(update={"seconds": seconds, "worker": f"{socket.gethostname()}:{os.getpid()}"})
