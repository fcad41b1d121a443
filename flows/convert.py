"""convert_flow: a float model → a verified int8 model, logged, registered and promoted.

Orchestration only: one run lifecycle (``tasks.run.ConversionRun``: the idempotency key, orphaned
runs closed, a registered version skipped or its promotion resumed, the MLflow run opened and always
closed, the publication and the report) around one conversion unit (``flows.unit``: every stage task
from calibrate_model to log_conversion).
"""

from __future__ import annotations

from prefect import flow, runtime
from pydantic import BaseModel, Field, model_validator

from quantstage.flows.hooks import CLOSE_RUNS_ON_CANCEL, CLOSE_RUNS_ON_CRASH
from quantstage.flows.params import StageParams
from quantstage.flows.unit import UnitJob, UnitResult, convert_unit
from quantstage.quant.digest import digest
from quantstage.quant.engines import CheckedSpec, QuantSpec, default_spec, parse_spec
from quantstage.quant.errors import QuantStageError
from quantstage.tasks.publish import Publication
from quantstage.tasks.run import ConversionRun, Settled

__all__ = ["ConvertParams", "ConvertResult", "GateFailure", "convert_flow"]


class GateFailure(QuantStageError):
    """The quantized model was logged but failed a promotion gate."""


class ConvertParams(StageParams):
    """Parameters of one conversion."""

    spec: CheckedSpec = Field(default_factory=default_spec, description="How to quantize.")
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
    spec = parse_spec((params or {}).get("spec", {}))
    return f"convert {ConvertParams.raw_source_label(params)} {_spec_label(spec)}"


def _settled(params: ConvertParams, settled: Settled) -> ConvertResult:
    """The result of a conversion the registry already held: skipped, or its promotion resumed."""
    return ConvertResult(
        run_id=settled.run_id,
        model_uri=settled.model_uri,
        registered_name=params.target_name,
        version=settled.version,
        promoted=settled.promoted,
        metrics=settled.metrics,
        gates=[],
        skipped=settled.skipped,
        idempotency_key=settled.key,
        reason=settled.reason,
    )


def _converted(params: ConvertParams, run: ConversionRun, unit: UnitResult, published: Publication) -> ConvertResult:
    """The verdict: GateFailure when a gate failed (registered, alias not moved), else the result."""
    name = params.target_name
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
    return ConvertResult(
        run_id=unit.run_id,
        model_uri=unit.model_uri or "",
        registered_name=name,
        version=published.version or "",
        promoted=published.promoted,
        metrics=unit.metrics,
        gates=unit.gates,
        float_layers=unit.float_layers,
        idempotency_key=run.key,
        reason=published.reason,
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
    run = ConversionRun(params, "convert")
    if (settled := run.settle()) is not None:  # converted before (or stopped after registering: resumed)
        return _settled(params, settled)
    source, dataset = run.load()
    with run.opened(f"{params.target_name} from {params.source_label}") as run_id:
        job = UnitJob(
            spec=params.spec,
            stages=params.stage_params(),
            qat_checkpoint=params.qat_checkpoint,
            run_id=run_id,
            documents={"params.json": params.model_dump_json(indent=2)},
        )
        unit = convert_unit(job, source, dataset)
        described = f"int8 ({unit.spec.backend}, {unit.spec.mode}) of {params.source_label} (version {source.version})"
        published = run.publish(unit.winner(described))
        if isinstance(published, Settled):  # registered meanwhile by a concurrent run of the same key
            return _settled(params, published)
        return _converted(params, run, unit, published)
