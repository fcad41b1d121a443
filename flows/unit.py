"""One conversion unit: a float model and a spec in; a verified, measured int8 model logged to its
MLflow run out. Both flows compose it: ``convert_flow`` runs one, ``sweep_flow`` one per
candidate (``convert_candidate``, a task that can run on any worker).

The unit is the chain of stage tasks — calibrate_model → convert_reference → lower_model →
validate_accuracy (``engine: auto``: pick_engine races these and the export over the candidate engines) →
(analyze_sensitivity) → (search_float_layers) → export_model (unless the race shipped it) → benchmark_model →
log_conversion — so a sweep candidate gets everything a single conversion gets: coverage, sensitivity when
asked, the fallback, the rebuild bundle when no TorchScript form reproduces the model, the reference model, the
report. It takes and returns only small serialisable values (``UnitJob``, ``UnitResult``: numbers, verdicts, run
ids, URIs); models travel as the artifacts it logged.
Registration is not part of it: the flows publish the unit (or the sweep's winner) through
``tasks.run``. Units running as threads of one process say so (``in_parallel``); each stage task
declares what it needs of the process gate itself (``tasks._gate``).
"""

from __future__ import annotations

import dataclasses
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
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import AUTO, QuantSpec
from quantstage.quant.engines.base import ShippedFile
from quantstage.quant.measure.benchmark import BenchmarkReport
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GateResult, GatesConfig, check_gates
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.quantize import Quantized
from quantstage.quant.report.markdown import PENDING_PROMOTION, render_report
from quantstage.quant.search.engines import EngineRace
from quantstage.quant.search.fallback import FallbackResult
from quantstage.quant.search.ranking import CandidateScore
from quantstage.tasks._gate import in_parallel
from quantstage.tasks.benchmark import benchmark_model
from quantstage.tasks.calibrate import calibrate_model
from quantstage.tasks.export import Shipped, export_model, export_reference
from quantstage.tasks.fallback import search_float_layers
from quantstage.tasks.load import SourceModel, fetch_file, load_dataset, load_model
from quantstage.tasks.log_model import log_conversion
from quantstage.tasks.lower import lower_model
from quantstage.tasks.race_engines import pick_engine
from quantstage.tasks.record import ConversionRecord, conversion_record
from quantstage.tasks.reference_convert import convert_reference
from quantstage.tasks.run import Winner
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
    stages: StageParams = Field(
        description="Source, data, evaluation, gates, fallback, sensitivity, benchmark and export settings: the "
        "flow's parameters as StageParams (a worker loads the source itself)."
    )
    qat_checkpoint: str | None = None
    run_id: str = Field(description="The unit's MLflow run (created by the flow).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI a worker must use (None: this process's).")
    parallel: bool = Field(False, description="Runs beside other units in one process: process gate, one thread.")
    promotion: str = Field(PENDING_PROMOTION, description="The report's verdict until the promotion is decided.")
    extra_params: dict[str, str] = Field(default_factory=dict, description="More MLflow params (candidate index...).")
    documents: dict[str, str] = Field(default_factory=dict, description="More text artifacts (the flow's params...).")

    @property
    def gates(self) -> GatesConfig:
        """The gates, adapted to the evaluation task."""
        return self.stages.gates.for_task(self.stages.evaluation.task)

    @property
    def target_name(self) -> str:
        """Registry name of the result (the report's and the charts' title)."""
        return self.stages.target_name


class UnitResult(BaseModel):
    """What one unit returns: numbers, verdicts, the report, and where its model is."""

    index: int = 0
    name: str = ""
    run_id: str
    spec: QuantSpec = Field(description="The spec the shipped model was made with (after the race, the fallback).")
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

    def winner(self, description: str, extra: Mapping[str, str] | None = None, candidate: int | None = None) -> Winner:
        """What publishing this unit's model needs (``candidate``: its index when a sweep's winner)."""
        assert self.model_uri is not None, "only a unit that logged its model can be published"
        return Winner(
            run_id=self.run_id,
            model_uri=self.model_uri,
            spec=self.spec,
            passed=self.passed,
            metrics=self.metrics,
            report=self.report,
            description=description,
            extra_lineage=dict(extra or {}),
            candidate=candidate,
        )

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


@dataclasses.dataclass
class _Work:
    """One unit's work so far: its inputs and what each stage produced."""

    job: UnitJob
    source: SourceModel
    dataset: Dataset
    work_dir: str
    clock: _Clock
    quantized: Quantized
    accuracy: AccuracyReport
    layers: list[LayerSensitivity] = dataclasses.field(default_factory=list)
    chart: str | None = None
    fallback: FallbackResult | None = None
    race: EngineRace | None = None  # engine: auto


@dataclasses.dataclass
class _Measured:
    """What shipping and benchmarking produced."""

    shipped: Shipped
    reference: ShippedFile | None
    benchmarks: list[BenchmarkReport]
    machine: dict[str, Any]
    latency_png: str | None


def _failure(gates: list[Any], fallback: FallbackResult | None) -> str:
    message = "; ".join(g.reason for g in gates if not g.passed)
    if fallback is not None and fallback.chosen is None and fallback.best is not None:
        best = fallback.best
        message += (
            f"; the fallback ran {fallback.evaluations} trial(s) and none passed, best: float "
            f"{list(best.float_layers)} with accuracy drop {best.accuracy_drop:.4f}"
        )
    return message


def _quantize(
    source: SourceModel,
    dataset: Dataset,
    spec: QuantSpec,
    job: UnitJob,
    qat: str | None = None,
    clock: _Clock | None = None,
) -> tuple[Quantized, AccuracyReport]:
    """calibrate → reference → lower → validate: the quantized model and its accuracy."""
    quantized = lower_model(convert_reference(calibrate_model(source.model, dataset, spec, qat)))
    if clock is not None:
        clock.lap("convert_s")
    return quantized, validate_accuracy(source.model, quantized.model, dataset, job.stages.evaluation)


def _convert(job: UnitJob, source: SourceModel, data: Dataset, tmp: str, clock: _Clock, qat: str | None) -> _Work:
    """The quantized model and its accuracy; with ``engine: auto`` the race's winner (shipped already)."""
    if job.spec.engine != AUTO:
        return _Work(job, source, data, tmp, clock, *_quantize(source, data, job.spec, job, qat, clock))
    race = pick_engine(source.model, data, job.spec, job.stages, job.gates, tmp, job.target_name, qat)
    return _Work(job, source, data, tmp, clock, race.winner.quantized, race.winner.accuracy, race=race)


def _search(work: _Work, qat: str | None) -> None:
    """Sensitivity when asked, or when the fallback needs its ranking; the fallback when the accuracy gates fail."""
    job, stages = work.job, work.job.stages
    accuracy_ok = all(g.passed for g in check_gates(job.gates.accuracy_only(), work.accuracy))
    search = stages.fallback.enabled and not accuracy_ok and work.quantized.prepared is not None and qat is None
    if not (stages.sensitivity or search):
        return
    work.layers, work.chart = analyze_sensitivity(
        work.quantized, work.dataset, work.work_dir, job.target_name, stages.sensitivity_batches
    )
    work.clock.lap("sensitivity_s")
    if not (search and work.layers):
        return
    work.fallback, chosen = search_float_layers(
        job.run_id,
        work.source.model,
        work.dataset,
        work.quantized.spec,
        job.gates,
        [layer.name for layer in work.layers],
        stages.fallback,
        stages.evaluation,
    )
    if chosen is not None:
        work.quantized, work.accuracy = _quantize(work.source, work.dataset, chosen, job)
    work.clock.lap("fallback_s")


def _ship(work: _Work) -> _Measured:
    """The deployable form and the reference model, exported and benchmarked against the float model."""
    job, stages, quantized, dataset = work.job, work.job.stages, work.quantized, work.dataset
    shipped = (work.race and work.race.shipped_for(quantized)) or export_model(
        quantized, dataset, work.work_dir, stages.source, stages.ship_tolerance, stages.export_budget_s
    )
    reference = export_reference(quantized, dataset, work.work_dir)
    work.clock.lap("export_s")
    benchmarks, machine, latency_png = benchmark_model(
        work.source.model,
        shipped.load,
        dataset,
        batch_sizes=stages.benchmark_batch_sizes,
        threads=stages.benchmark_threads,
        iterations=stages.benchmark_iterations,
        max_cv=stages.benchmark_max_cv,
        budget_s=stages.benchmark_budget_s,
        out_dir=work.work_dir,
        name=job.target_name,
        headline_only=job.parallel,
    )
    work.clock.lap("benchmark_s")
    return _Measured(shipped, reference, benchmarks, machine, latency_png)


def _judge(work: _Work, measured: _Measured) -> tuple[list[GateResult], str]:
    """The gates (beside other candidates the timing is a screen: a sweep judges speed on the quiet
    re-benchmark) and the report, its verdict pending the promotion."""
    job, quantized, shipped = work.job, work.quantized, measured.shipped
    judged = job.gates.screening() if job.parallel else job.gates
    gates = check_gates(judged, work.accuracy, measured.benchmarks[0], quantized.coverage)
    report = render_report(
        source_uri=job.stages.source_label,
        spec=quantized.spec,
        accuracy=work.accuracy,
        benchmarks=measured.benchmarks,
        gates=gates,
        registered=job.target_name,
        promotion=job.promotion,
        sensitivity=work.layers,
        fallback=work.fallback,
        coverage=quantized.coverage,
        variants=shipped.variants,
        machine=measured.machine,
        shipped_as=shipped.note or None,
        engines=work.race.choice if work.race is not None else None,
    )
    return gates, report


def _record(work: _Work, measured: _Measured, gates: list[GateResult], report: str) -> ConversionRecord:
    """Everything the unit's run gets besides the model."""
    job, shipped = work.job, measured.shipped
    files = {
        path: folder for path, folder in ((measured.latency_png, "benchmark"), (work.chart, "sensitivity")) if path
    }
    if measured.reference is not None:
        files[str(measured.reference.path)] = "reference"
    return conversion_record(
        spec=work.quantized.spec,
        quantized=work.quantized,
        accuracy=work.accuracy,
        benchmarks=measured.benchmarks,
        gates=gates,
        dataset=work.dataset,
        data=job.stages.data,
        source_label=job.stages.source_label,
        source_version=work.source.version,
        shipped_as=shipped.method,
        report=report,
        variants=shipped.variants,
        sensitivity=work.layers,
        machine=measured.machine,
        files=files,
        extra_params={"fallback.enabled": str(job.stages.fallback.enabled), **job.extra_params},
        extra_metrics={f"candidate.{k}": v for k, v in work.clock.seconds.items()} if job.parallel else None,
        documents=job.documents,
        engines=work.race.choice if work.race is not None else None,
    )


def _log(work: _Work, measured: _Measured) -> UnitResult:
    """Judge, report, log the run and its model; what the unit returns."""
    job, shipped, fallback = work.job, measured.shipped, work.fallback
    gates, report = _judge(work, measured)
    record = _record(work, measured, gates, report)
    model_uri = log_conversion(
        job.run_id,
        record,
        form=shipped.form,
        example=work.dataset.example_inputs,
        input_names=work.dataset.input_names,
    )
    work.clock.lap("log_s")
    passed = all(g.passed for g in gates)
    return UnitResult(
        index=job.index,
        name=job.name,
        run_id=job.run_id,
        spec=work.quantized.spec,
        metrics=record.metrics,
        gates=[g.as_dict() for g in gates],
        passed=passed,
        model_uri=model_uri,
        shipped_as=shipped.method,
        float_layers=list(fallback.chosen.float_layers) if fallback and fallback.chosen else [],
        report=report,
        failure="" if passed else _failure(gates, fallback),
        source_name=work.source.name,
        source_version=work.source.version,
        source_run_id=work.source.run_id,
        seconds=work.clock.seconds,
    )


def convert_unit(job: UnitJob, source: SourceModel | None = None, dataset: Dataset | None = None) -> UnitResult:
    """Run the stages of one conversion and log them to ``job.run_id`` (see the module docstring)."""
    clock, stages = _Clock(), job.stages
    with in_parallel(job.spec.backend, job.parallel), tempfile.TemporaryDirectory(prefix="quantstage-") as work_dir:
        source = source or load_model(stages.source)
        dataset = dataset or load_dataset(stages.data, source.model, stages.output)
        qat = fetch_file(job.qat_checkpoint) if job.qat_checkpoint else None
        clock.lap("load_s")
        work = _convert(job, source, dataset, work_dir, clock, qat)
        clock.lap("validate_s")
        _search(work, qat)
        return _log(work, _ship(work))


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
