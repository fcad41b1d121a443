"""convert_flow: a float model → a verified int8 model, logged, registered and promoted.

Orchestration only: the idempotency check, one conversion unit (``flows.unit``: every stage
task from calibrate to logging), the publish step (``tasks.publish``: register → compare →
promote → event under the registry lock), the final report.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime
from prefect.settings import PREFECT_UI_URL
from pydantic import BaseModel, Field, model_validator

from quantstage.flows.hooks import CLOSE_RUNS_ON_CANCEL, CLOSE_RUNS_ON_CRASH
from quantstage.flows.params import StageParams
from quantstage.flows.unit import UnitJob, convert_unit
from quantstage.quant.config.spec import QuantSpec
from quantstage.quant.digest import digest
from quantstage.quant.errors import QuantStageError
from quantstage.quant.report.markdown import set_verdict
from quantstage.tasks.data_lineage import log_data_lineage
from quantstage.tasks.load import load_data, load_model, source_identity
from quantstage.tasks.preflight import check_tracking_store
from quantstage.tasks.publish import PublishRequest, event_payload, publish
from quantstage.tasks.record import lineage
from quantstage.tasks.registry import find_version_by_key
from quantstage.tasks.report import publish_report
from quantstage.tasks.runs import close_failed, end_run, recover_orphaned_runs, start_run

__all__ = ["ConvertParams", "ConvertResult", "GateFailure", "convert_flow"]


class GateFailure(QuantStageError):
    """The quantized model was logged but failed a promotion gate."""


class ConvertParams(StageParams):
    """Parameters of one conversion."""

    spec: QuantSpec = Field(default_factory=QuantSpec, description="How to quantize.")
    qat_checkpoint: str | None = Field(
        None,
        description="A model trained with prepare_qat_fx elsewhere: path or MLflow artifact URI of a "
        "quantstage QAT checkpoint (state_dict + the spec that prepared it); converted without "
        "recalibration, with the checkpoint's spec.",
    )

    @model_validator(mode="after")
    def _fallback_needs_calibration(self) -> ConvertParams:
        if self.fallback.enabled and self.qat_checkpoint:
            raise ValueError(
                "fallback.enabled re-quantizes with layers kept float, which a trained QAT checkpoint cannot do; "
                "fix: set fallback.enabled: false, or convert the float model without qat_checkpoint"
            )
        return self

    def idempotency_key(self, identity: str) -> str:
        """sha256 of the resolved source (registry version, run, or the digests of factory, kwargs and
        weight files), the spec with its machine-resolved settings, the data, the evaluation, the gates,
        the fallback and the QAT checkpoint: equal keys, same conversion."""
        return digest(
            {"source": identity, "spec": self.spec.digest(), "qat_checkpoint": self.qat_checkpoint} | self.eval_key()
        )


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


def _spec_label(spec: QuantSpec) -> str:
    engine = "" if spec.engine == "fx" else f"{spec.engine} "
    return f"[{engine}{spec.backend}/{spec.mode}]"


def _run_name() -> str:
    params = runtime.flow_run.parameters.get("params")
    if isinstance(params, ConvertParams):
        return f"convert {params.source_label} {_spec_label(params.spec)}"
    spec = QuantSpec.model_validate((params or {}).get("spec", {}))
    return f"convert {ConvertParams.raw_source_label(params)} {_spec_label(spec)}"


def _skipped(params: ConvertParams, existing: dict[str, Any], key: str, why: str) -> ConvertResult:
    reason = (
        f"{why}: {params.target_name} version {existing['version']} has idempotency key {key[:12]}… "
        f"(gates_passed={existing['tags'].get('gates_passed')}); pass force=True to convert again"
    )
    print(f"skipped: {reason}")
    return ConvertResult(
        run_id=existing["run_id"],
        model_uri=existing["source"],
        registered_name=params.target_name,
        version=existing["version"],
        promoted=False,
        metrics=existing["metrics"],
        gates=[],
        skipped=True,
        idempotency_key=key,
        reason=reason,
    )


def _request(
    params: ConvertParams,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    passed: bool,
    metrics: dict[str, float],
    description: str,
) -> PublishRequest:
    """What publishing one conversion's model asks for (the alias, the comparison, the event)."""
    event = event_payload(
        metrics,
        source_uri=params.source_label,
        source_version=tags.get("source_version", ""),
        mlflow_run_id=run_id,
        flow_run_id=tags.get("flow_run_id", ""),
    )
    return PublishRequest(
        name=params.target_name,
        model_uri=model_uri,
        run_id=run_id,
        lineage=tags,
        passed=passed,
        metrics=metrics,
        description=description,
        alias=params.alias,
        promote_if=params.promote_if,
        eval_digest=params.eval_digest(),
        force=params.force,
        event=event,
    )


def _resume(params: ConvertParams, existing: dict[str, Any], key: str) -> ConvertResult:
    """A version registered by a conversion stopped before its promotion was decided: decide it now."""
    tags, run_id = existing["tags"], existing["run_id"]
    passed = tags.get("gates_passed") == "true"
    published = publish(_request(params, existing["source"], run_id, tags, passed, existing["metrics"], ""))
    end_run(run_id, "FINISHED" if passed else "FAILED", {"quantstage.resumed_by": str(runtime.flow_run.id)})
    reason = f"resumed the publication of version {existing['version']} (its conversion stopped after registering it): {published.reason}"
    print(reason)
    return ConvertResult(
        run_id=run_id,
        model_uri=existing["source"],
        registered_name=params.target_name,
        version=existing["version"],
        promoted=published.promoted,
        metrics=existing["metrics"],
        gates=[],
        idempotency_key=key,
        reason=reason,
    )


@flow(
    name="convert",
    flow_run_name=_run_name,
    log_prints=True,
    on_cancellation=CLOSE_RUNS_ON_CANCEL,
    on_crashed=CLOSE_RUNS_ON_CRASH,
)
def convert_flow(params: ConvertParams) -> ConvertResult:
    """Convert a float model to int8, validate, benchmark, log, register and promote."""
    name, flow_run_id = params.target_name, str(runtime.flow_run.id)
    check_tracking_store()  # seconds, one line, before anything is loaded
    key = params.idempotency_key(source_identity(params.source))
    recover_orphaned_runs(params.experiment, key)
    if not params.force and (existing := find_version_by_key(name, key)):
        if "promoted" not in existing["tags"]:  # registered, promotion never decided: finish that conversion
            return _resume(params, existing, key)
        return _skipped(params, existing, key, "already converted")
    source = load_model(params.source)
    if (loaded_key := params.idempotency_key(source.identity)) != key:
        print(f"{params.source_label} changed while loading (now {source.identity}); idempotency key recomputed")
        key = loaded_key
    dataset = load_data(params.data, source.model, params.output)
    run_id = start_run(
        params.experiment,
        f"{name} from {params.source_label}",
        {
            "quantstage.source_uri": params.source_label,
            "quantstage.flow_run_id": flow_run_id,
            "quantstage.idempotency_key": key,
        },
    )
    try:
        log_data_lineage(run_id, dataset, params.data)
        job = UnitJob.of(
            params,
            params.spec,
            run_id,
            qat_checkpoint=params.qat_checkpoint,
            documents={"params.json": params.model_dump_json(indent=2)},
        )
        unit = convert_unit(job, source, dataset)
        assert unit.model_uri is not None  # a unit that returns has logged its model
        tags = lineage(
            source_label=params.source_label,
            source_name=source.name,
            source_version=source.version,
            source_run_id=source.run_id,
            spec=unit.spec,
            passed=unit.passed,
            run_id=run_id,
            flow_run_id=flow_run_id,
            idempotency_key=key,
            eval_digest=params.eval_digest(),
            promote_if=params.promote_if,
            flow_run_url=runtime.flow_run.ui_url if PREFECT_UI_URL.value() else None,
        )
        described = f"int8 ({unit.spec.backend}, {unit.spec.mode}) of {params.source_label} (version {source.version})"
        published = publish(_request(params, unit.model_uri, run_id, tags, unit.passed, unit.metrics, described))
        if published.duplicate_of is not None and (existing := find_version_by_key(name, key)):
            end_run(run_id, "FINISHED", {"quantstage.duplicate_of": f"{name}/{published.duplicate_of}"})
            return _skipped(params, existing, key, "registered meanwhile by another run")  # a concurrent run won
        alias = params.alias if published.promoted else None
        publish_report(set_verdict(unit.report, unit.passed, alias, published.reason), name, run_id)
        if not unit.passed:
            raise GateFailure(
                f"{name} version {published.version} failed its gates ({unit.failure}); it is registered but "
                f"models:/{name}@{params.alias} was not moved"
            )
        print(
            f"models:/{name}@{params.alias} -> version {published.version}: {published.reason}"
            if published.promoted
            else f"not promoted: {published.reason}"
        )
    except BaseException as exc:
        close_failed(run_id, exc)  # never raises: the error raised stays the original one
        raise
    end_run(run_id, "FINISHED")
    return ConvertResult(
        run_id=run_id,
        model_uri=unit.model_uri,
        registered_name=name,
        version=published.version or "",
        promoted=published.promoted,
        metrics=unit.metrics,
        gates=unit.gates,
        float_layers=unit.float_layers,
        idempotency_key=key,
        reason=published.reason,
    )
