"""convert_flow: float model in the registry → verified int8 model, logged, registered, promoted.

Orchestration only: every stage is a task in ``tasks/``; this flow passes results along
and decides the gates.
"""

from __future__ import annotations

import tempfile
from typing import Literal

from prefect import flow, runtime

from flows._source_params import SourceParams
from prefect.settings import PREFECT_UI_URL
from pydantic import BaseModel, Field, field_validator

from quant.benchmark import benchmark_table
from quant.errors import ArtifactError, QuantStageError
from quant.fallback import FallbackConfig, FallbackResult
from quant.gates import GateResult, GatesConfig, check_gates
from quant.report import render_report
from quant.sensitivity import sensitivity_table
from quant.spec import QuantSpec
from tasks.benchmark import benchmark_model
from tasks.calibrate import calibrate, load_qat
from tasks.coverage import measure_coverage
from tasks.export import export_model, export_rebuild, export_reference
from tasks.fallback import fallback_search
from tasks.events import PROMOTED, emit_model_event
from tasks.load import fetch_file, load_data, load_model, source_identity
from tasks.submodules import choose_tracing, quantize_by_submodules
from tasks.lower import lower
from tasks.reference_convert import reference_convert
from tasks.report import publish_report
from tasks.sensitivity import analyze_sensitivity
from tasks.track import (
    compare_with_holder,
    digest,
    end_run,
    find_version_by_key,
    log_conversion,
    log_data_lineage,
    promote,
    register_model,
    registry_lock,
    start_run,
    tag_version,
)
from tasks.validate import validate_accuracy

__all__ = ["ConvertParams", "ConvertResult", "GateFailure", "convert_flow"]



class GateFailure(QuantStageError):
    """The quantized model was logged but failed a promotion gate."""


class ConvertParams(SourceParams):
    """Parameters of one conversion."""

    spec: QuantSpec = Field(default_factory=QuantSpec, description="How to quantize.")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="Checks that must pass before promotion.")
    fallback: FallbackConfig = Field(
        default_factory=FallbackConfig,
        description="Accuracy-aware fallback: when the accuracy gates fail, keep the most sensitive layers float.",
    )
    sensitivity: bool = Field(True, description="Measure per-layer sensitivity (FX numeric suite) and log it.")
    sensitivity_batches: int = Field(4, ge=1, description="Calibration batches the sensitivity analysis runs.")
    alias: str = Field("champion", description="Alias moved to the new version when every gate passes.")
    promote_if: Literal["gates", "better"] = Field(
        "better",
        description="'gates': move the alias when every gate passes; 'better': only when, in addition, the new "
        "version is at least as good as the current alias holder on the same evaluation (int8_accuracy, else "
        "output_sqnr_db); a holder evaluated on other data falls back to the gates.",
    )
    force: bool = Field(
        False, description="Convert even when a version with the same idempotency key is already registered."
    )
    experiment: str = Field("quantstage", description="MLflow experiment of the conversion run.")
    benchmark_iterations: int = Field(100, ge=5, description="Timed calls per model, batch size and thread count.")
    benchmark_threads: tuple[int, ...] = Field(
        (1,), min_length=1, description="torch intra-op thread counts to benchmark (the first gives the headline)."
    )
    benchmark_batch_sizes: tuple[int, ...] | None = Field(
        None, description="Batch sizes to benchmark; default: the data's batch size (headline), then 1."
    )
    benchmark_max_cv: float | None = Field(
        0.25, gt=0.0, description="Coefficient of variation above which a timing is re-measured, then marked unstable."
    )
    ship_tolerance: float = Field(
        0.0, ge=0.0,
        description="Largest absolute output difference a shipped TorchScript form may have against the lowered "
        "model (0: bit-exact).",
    )

    qat_checkpoint: str | None = Field(
        None,
        description="A model trained with prepare_qat_fx elsewhere: path or MLflow artifact URI of a "
        "quantstage QAT checkpoint (state_dict + the spec that prepared it); converted without "
        "recalibration, with the checkpoint's spec.",
    )

    @field_validator("benchmark_threads", "benchmark_batch_sizes", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, int) else value

    def idempotency_key(self, identity: str) -> str:
        """sha256 of the resolved source (``tasks.load.source_identity``: registry version, run, or
        the digests of factory, kwargs and weight files), the spec, the data, the evaluation, the
        gates, the fallback and the QAT checkpoint: equal keys, same conversion."""
        return digest({
            "source": identity,
            "spec": self.spec.digest(),
            "data": self.data.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "gates": self.gates.model_dump(mode="json"),
            "fallback": self.fallback.model_dump(mode="json"),
            "qat_checkpoint": self.qat_checkpoint,
        })


class ConvertResult(BaseModel):
    """What one conversion produced."""

    run_id: str
    model_uri: str
    registered_name: str
    version: str
    promoted: bool
    metrics: dict[str, float]
    gates: list[dict[str, object]]
    float_layers: list[str] = Field(default_factory=list, description="Layers the fallback kept float.")
    skipped: bool = Field(False, description="Nothing converted: a version with the same idempotency key exists.")
    idempotency_key: str = ""
    reason: str = Field("", description="Why the alias moved or not, or why the run was skipped.")


def _run_name() -> str:
    params = runtime.flow_run.parameters.get("params")
    if isinstance(params, ConvertParams):
        uri = params.source_label
    else:
        uri = ConvertParams.raw_source_label(params)
    spec = params.spec if isinstance(params, ConvertParams) else QuantSpec.model_validate((params or {}).get("spec", {}))
    return f"convert {uri} [{spec.backend}/{spec.mode}]"


def _failure_message(name: str, version: str, alias: str, gates: list[GateResult], fallback: FallbackResult | None) -> str:
    reasons = "; ".join(g.reason for g in gates if not g.passed)
    message = f"{name} version {version} failed its gates ({reasons})"
    if fallback is not None and fallback.chosen is None and fallback.best is not None:
        best = fallback.best
        message += (
            f"; the fallback ran {fallback.evaluations} trial(s) and none passed, best: float "
            f"{list(best.float_layers)} with accuracy drop {best.accuracy_drop:.4f}"
        )
    return message + f"; it is registered but models:/{name}@{alias} was not moved"


def _skipped(params: ConvertParams, existing: dict, key: str, why: str) -> ConvertResult:
    reason = (
        f"{why}: {params.target_name} version {existing['version']} has idempotency key {key[:12]}… "
        f"(gates_passed={existing['tags'].get('gates_passed')}); pass force=True to convert again"
    )
    print(f"skipped: {reason}")
    return ConvertResult(
        run_id=existing["run_id"], model_uri=existing["source"], registered_name=params.target_name,
        version=existing["version"], promoted=False, metrics=existing["metrics"], gates=[],
        skipped=True, idempotency_key=key, reason=reason,
    )


def _convert(prepared, spec):  # noqa: ANN001, ANN202 - orchestration helper
    reference = reference_convert(prepared, spec)
    return reference, lower(reference, spec)


def _quantize(source_model, dataset, spec):  # noqa: ANN001, ANN202 - orchestration helper
    prepared = calibrate(source_model, dataset, spec)
    return (prepared, *_convert(prepared, spec))


@flow(name="convert", flow_run_name=_run_name, log_prints=True)
def convert_flow(params: ConvertParams) -> ConvertResult:
    """Convert a registered float model to int8, validate, benchmark, log, register and promote."""
    spec = params.spec
    gates_config = params.gates.for_task(params.evaluation.task)
    source_uri = params.source_label
    key = params.idempotency_key(source_identity(params.source))
    if not params.force and (existing := find_version_by_key(params.target_name, key)):
        return _skipped(params, existing, key, "already converted")
    source = load_model(params.source)
    if (loaded_key := params.idempotency_key(source.identity)) != key:
        print(f"{source_uri} changed while loading (now {source.identity}); idempotency key recomputed")
        key = loaded_key
    dataset = load_data(params.data, source.model)
    run_id = start_run(
        params.experiment,
        f"{params.target_name} from {source_uri}",
        {"quantstage.source_uri": source_uri, "quantstage.flow_run_id": str(runtime.flow_run.id)},
    )
    try:
        log_data_lineage(run_id, dataset, params.data)
        tracing, why = ("whole", "") if params.qat_checkpoint else choose_tracing(source.model, dataset, spec)
        submodules = None
        if params.qat_checkpoint:
            prepared, spec = load_qat(source.model, dataset, fetch_file(params.qat_checkpoint), spec)
            reference, quantized = _convert(prepared, spec)
        elif tracing == "submodules":
            submodules = quantize_by_submodules(source.model, dataset, spec)
            prepared, reference, quantized = None, None, submodules.model
        else:
            prepared, reference, quantized = _quantize(source.model, dataset, spec)
        accuracy = validate_accuracy(source.model, quantized, dataset, params.evaluation)
        coverage = submodules.report if submodules else measure_coverage(source.model, reference, quantized)
        with tempfile.TemporaryDirectory(prefix="quantstage-") as work_dir:
            layers, chart = (
                analyze_sensitivity(prepared, quantized, dataset, work_dir, params.target_name, params.sensitivity_batches)
                if params.sensitivity and prepared is not None
                else ([], None)
            )
            fallback = None
            accuracy_ok = all(g.passed for g in check_gates(gates_config.accuracy_only(), accuracy))
            if params.fallback.enabled and not accuracy_ok and layers and not params.qat_checkpoint and not submodules:
                fallback, chosen = fallback_search(
                    run_id, source.model, dataset, spec, gates_config, [layer.name for layer in layers], params.fallback,
                    params.evaluation,
                )
                if chosen is not None:
                    spec = chosen
                    prepared, reference, quantized = _quantize(source.model, dataset, spec)
                    accuracy = validate_accuracy(source.model, quantized, dataset, params.evaluation)
                    coverage = measure_coverage(source.model, reference, quantized)
            bundle = None
            try:
                artifact, variants = export_model(quantized, dataset, work_dir, params.ship_tolerance)
            except ArtifactError as exc:  # no TorchScript form reproduces it: ship what rebuilds it
                bundle = export_rebuild(quantized, dataset, work_dir, spec, params.source, tracing, str(exc))
                artifact, variants = None, []
            reference_artifact = export_reference(reference, dataset, work_dir) if reference is not None else None
            benchmarks, machine, latency_png = benchmark_model(
                source.model, str(artifact.path) if artifact else quantized, dataset,
                batch_sizes=params.benchmark_batch_sizes,
                threads=params.benchmark_threads,
                iterations=params.benchmark_iterations,
                max_cv=params.benchmark_max_cv,
                out_dir=work_dir,
                name=params.target_name,
            )
            gates = check_gates(gates_config, accuracy, benchmarks[0], coverage)
            passed = all(g.passed for g in gates)
            metrics = accuracy.as_metrics() | benchmarks[0].as_metrics()
            for b in benchmarks[1:]:
                metrics |= {f"{k}_bs{b.batch_size}_t{b.threads}": v for k, v in b.latency_metrics().items()}
            if benchmarks[0].peak_rss_mib is not None:
                metrics["peak_rss_mib"] = benchmarks[0].peak_rss_mib
            metrics |= {f"gate.{g.name}.passed": float(g.passed) for g in gates}
            metrics["gates_passed"] = float(passed)
            metrics |= {"quantized_layers": float(coverage.quantized_count), "quantized_fraction": coverage.quantized_fraction}
            if not passed:
                promoted, reason = False, "gates failed"
            elif params.promote_if == "better":
                promoted, reason = compare_with_holder(params.target_name, "", params.alias, metrics, params.eval_digest())
            else:
                promoted, reason = True, "every gate passed (promote_if=gates)"
            promoted_alias = params.alias if promoted else None
            report = render_report(
                source_uri=source_uri, spec=spec, accuracy=accuracy, benchmarks=benchmarks,
                gates=gates, registered=params.target_name, promoted_alias=promoted_alias,
                sensitivity=layers, fallback=fallback, coverage=coverage, variants=variants, machine=machine,
                shipped_as=None if bundle is None else (
                    "No TorchScript form (script, trace, frozen) reproduces this model, so it ships as the factory "
                    f"`{params.source.factory}`, the spec and the quantized state_dict (`model/artifacts/rebuild/`, "
                    "verified bit-exact by rebuilding). Load it with `mlflow.pyfunc.load_model(uri)` or "
                    "`quant.rebuild.rebuild(folder)`; the factory must be importable there."),
            )
            files = {latency_png: "benchmark"}
            if reference_artifact is not None:
                files[str(reference_artifact.path)] = "reference"
            documents = {
                "report.md": report,
                "spec.json": spec.to_json(),
                "params.json": params.model_dump_json(indent=2),
                "code/quantized.py": getattr(quantized, "code", ""),
            }
            if reference is not None:
                documents["reference/reference.py"] = reference.code
            for path, ref in (submodules.references.items() if submodules else ()):
                documents[f"reference/submodules/{path}.py"] = ref.code
                documents[f"code/submodules/{path}.py"] = submodules.lowered[path].code
            if chart:
                files[chart] = "sensitivity"
            model_uri = log_conversion(
                run_id,
                params={
                    **spec.as_params(),
                    "source_uri": source_uri,
                    "resolved.tracing": tracing + (f" ({why[:200]})" if why else ""),
                    "data.evaluation_source": params.data.evaluation_source or "",
                    "data.inputs": dataset.describe()[:500],
                    "source_version": source.version or "",
                    "data.source": params.data.source,
                    "data.batch_size": str(params.data.batch_size),
                    "export.method": artifact.method if artifact else "rebuild_bundle",
                    **{f"machine.{k}": str(v) for k, v in machine.items()},
                    "fallback.enabled": str(params.fallback.enabled),
                },
                metrics=metrics,
                documents=documents,
                json_documents={"gates.json": [g.as_dict() for g in gates]},
                tables={
                    "benchmark/latency.json": benchmark_table(benchmarks),
                    "export/variants.json": {k: [getattr(v, k) for v in variants] for k in ("name", "p50_ms", "max_abs_diff", "matches", "shippable")},
                    "coverage/coverage.json": coverage.as_table(),
                    "sensitivity/sensitivity.json": sensitivity_table(layers),
                },
                artifact=artifact,
                bundle=bundle,
                example=dataset.example_inputs,
                input_names=dataset.input_names,
                files=files,
            )
        lineage = {
                "source_uri": source_uri,
                "source_name": source.name or "",
                "source_version": source.version or "",
                "source_run_id": source.run_id or "",
                "spec_hash": spec.digest(),
                "backend": spec.backend,
                "mode": spec.mode,
                "gates_passed": str(passed).lower(),
                "flow_run_id": str(runtime.flow_run.id),
                "mlflow_run_id": run_id,
                "idempotency_key": key,
                "eval_digest": params.eval_digest(),
                "promote_if": params.promote_if,
        }
        if PREFECT_UI_URL.value() and (url := runtime.flow_run.ui_url):  # known only with a Prefect server/UI
            lineage["flow_run_url"] = url
        with registry_lock():  # check-then-register, one registrar at a time
            existing = None if params.force else find_version_by_key(params.target_name, key)
            if existing is None:
                version = register_model(
                    model_uri, params.target_name, lineage,
                    description=f"int8 ({spec.backend}, {spec.mode}) of {source_uri} (version {source.version})",
                )
        if existing is not None:  # a concurrent run with the same key registered first
            end_run(run_id, "FINISHED", {"quantstage.duplicate_of": f"{params.target_name}/{existing['version']}"})
            return _skipped(params, existing, key, "registered meanwhile by another run")
        publish_report(report, params.target_name)
        if not passed:
            tag_version(params.target_name, version, {"promoted": "false", "promotion_reason": reason})
            raise GateFailure(_failure_message(params.target_name, version, params.alias, gates, fallback))
        if promoted:
            promote(params.target_name, version, params.alias)
            emit_model_event(PROMOTED, params.target_name, version, {
                "alias": params.alias, "source_uri": source_uri, "source_version": source.version or "",
                "reason": reason, "mlflow_run_id": run_id, "flow_run_id": str(runtime.flow_run.id),
                "metrics": {k: metrics[k] for k in ("int8_accuracy", "output_sqnr_db", "speedup") if k in metrics},
            })
            print(f"models:/{params.target_name}@{params.alias} -> version {version}: {reason}")
        else:
            print(f"not promoted: {reason}")
        tag_version(params.target_name, version, {"promoted": str(promoted).lower(), "promotion_reason": reason[:4000]})
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id, "FINISHED")
    return ConvertResult(
        run_id=run_id, model_uri=model_uri, registered_name=params.target_name, version=version,
        promoted=promoted, metrics=metrics, gates=[g.as_dict() for g in gates],
        float_layers=list(fallback.chosen.float_layers) if fallback and fallback.chosen else [],
        idempotency_key=key, reason=reason,
    )
