"""What every flow that converts one model shares: where the model comes from, the data and the
evaluation it is measured on, the registry name of the result (``SourceParams``), and how each
conversion unit is checked, measured and published (``StageParams``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.sources import DataSpec
from quantstage.quant.digest import digest
from quantstage.quant.measure.evaluate import EvaluationSpec
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.search.fallback import FallbackConfig

__all__ = ["MODEL_URI", "SourceParams", "StageParams", "check_alias", "check_registry_name"]

MODEL_URI = re.compile(r"^(models:/[^/@]+(/\d+|@[^/]+)|runs:/[^/]+/.+)$")
# MLflow's rules (no '/' or ':' in a name; aliases of word characters and '-', 'latest' and 'v<N>'
# reserved) plus quantstage's: a name starts with a letter, digit or '_' and has no '..'.
REGISTRY_NAME = re.compile(r"^[A-Za-z0-9_][^/:]{0,255}$")
ALIAS = re.compile(r"^[\w\-]{1,255}$")


def check_registry_name(name: str, what: str) -> str:
    """``name`` when MLflow can register it, else ValueError naming ``what`` and the rule."""
    if not REGISTRY_NAME.match(name) or ".." in name or name != name.strip():
        raise ValueError(
            f"{what} {name!r} is not a registry name: it must start with a letter, digit or '_', have no '/', ':' "
            f"or '..' and no surrounding spaces (at most 256 characters); fix: e.g. 'my-model-int8'"
        )
    return name


def check_alias(alias: str) -> str:
    """``alias`` when MLflow accepts it as an alias, else ValueError with the rule."""
    if not ALIAS.match(alias):
        raise ValueError(
            f"alias {alias!r} may hold only letters, digits, '_' and '-' (1-255 of them); fix: e.g. 'champion'"
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"alias {alias!r} is reserved by MLflow ('latest' and 'v<number>'); fix: e.g. 'champion'")
    return alias


class SourceParams(BaseModel):
    """Source model, data, evaluation and registry name (base of ConvertParams and SweepParams)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str | None = Field(
        None,
        description="Float source model in MLflow: models:/<name>/<version>, models:/<name>@<alias> or "
        "runs:/<run_id>/<path> (shorthand for model: {uri: ...}).",
    )
    model: ModelSource | None = Field(
        None,
        description="Float source model: {uri}, {factory, kwargs, folder, weights} or {path, trust_pickle}; "
        "give this or model_uri. Wherever the flow's tasks run, factories must be importable and files readable.",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Calibration and evaluation data.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Task metrics (classification, regression, embedding, user metric)."
    )
    output: str | None = Field(
        None,
        description="When forward returns a ModelOutput, dict, tuple or dataclass: the field (or index) every stage "
        "compares and the registered model returns; default: the first tensor (last_hidden_state, logits).",
    )
    registered_name: str | None = Field(
        None, description="Registry name of the quantized model; default '<source name>-int8'."
    )

    @field_validator("model_uri")
    @classmethod
    def _known_uri_form(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_URI.match(value):
            raise ValueError(
                f"model_uri {value!r} is not of a supported form; use models:/<name>/<version>, "
                f"models:/<name>@<alias> or runs:/<run_id>/<path>"
            )
        return value

    @field_validator("registered_name")
    @classmethod
    def _registrable(cls, value: str | None) -> str | None:
        return None if value is None else check_registry_name(value, "registered_name")

    @model_validator(mode="after")
    def _one_model(self) -> SourceParams:
        if (self.model_uri is None) == (self.model is None):
            raise ValueError(
                "give exactly one of model_uri (an MLflow model URI) or model (a model source: uri, factory + "
                "weights, or a trusted pickle)"
            )
        check_registry_name(self.target_name, "the registered name derived from the source")
        source = self.source_registry_name
        if source is not None and self.target_name == source:
            raise ValueError(
                f"registered_name {self.target_name!r} is the source model's own name: the int8 model would become "
                f"a version of the float model and could take its alias; fix: pick another name (default "
                f"{source}-int8)"
            )
        return self

    @property
    def source_registry_name(self) -> str | None:
        """The registered name of a ``models:/`` source (None for other sources)."""
        uri = self.source.uri or ""
        return re.split(r"[/@]", uri[len("models:/") :])[0] if uri.startswith("models:/") else None

    @property
    def source(self) -> ModelSource:
        """The model source, whichever field gave it."""
        return self.model if self.model is not None else ModelSource(uri=self.model_uri)

    @property
    def source_label(self) -> str:
        """What the source is called in tags, run names and reports: the URI, the full factory path, or the label."""
        return self.source.uri or self.source.factory or self.source.label

    @staticmethod
    def raw_source_label(raw: dict[str, Any] | None) -> str:
        """The source label of not-yet-validated parameters (a flow run name must not fail)."""
        raw = raw or {}
        model = raw.get("model") or {}
        return raw.get("model_uri") or model.get("uri") or model.get("factory") or "?"

    def eval_digest(self) -> str:
        """Digest of what the metrics are measured on (data + evaluation): comparable iff equal."""
        return digest(
            {"data": self.data.model_dump(mode="json"), "evaluation": self.evaluation.model_dump(mode="json")}
        )[:16]

    @property
    def target_name(self) -> str:
        """``registered_name``, else ``<registered source name>-int8``, ``run-<id8>-int8``, or for a factory
        ``<module>-<function>-int8`` (``my_pkg.minilm_src:build`` -> ``minilm-src-build-int8``)."""
        if self.registered_name:
            return self.registered_name
        uri = self.source.uri
        if uri is None:  # 'minilm_src:build' -> 'minilm-src-build-int8'
            return re.sub(r"[^a-z0-9]+", "-", self.source.label.lower()).strip("-") + "-int8"
        if uri.startswith("models:/"):
            return re.split(r"[/@]", uri[len("models:/") :])[0] + "-int8"
        return "run-" + uri[len("runs:/") :].split("/")[0][:8] + "-int8"


class StageParams(SourceParams):
    """What a conversion unit checks and measures, and how its result is published (base of
    ConvertParams and SweepParams)."""

    gates: GatesConfig = Field(default_factory=GatesConfig, description="Checks that must pass before promotion.")
    fallback: FallbackConfig = Field(
        default_factory=FallbackConfig,
        description="Accuracy-aware fallback: when the accuracy gates fail, keep the most sensitive layers float "
        "(the per-layer sensitivity is measured for it even when sensitivity is off).",
    )
    sensitivity: bool = Field(
        True, description="Measure per-layer sensitivity (the engine's numeric suite) and log it."
    )
    sensitivity_batches: int = Field(4, ge=1, description="Calibration batches the sensitivity analysis runs.")
    alias: str = Field("champion", description="Alias moved to the new version when every gate passes.")

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str) -> str:
        return check_alias(value)

    promote_if: Literal["gates", "better"] = Field(
        "better",
        description="'gates': move the alias when every gate passes; 'better': only when, in addition, the new "
        "version is at least as good as the current alias holder on the same evaluation (int8_accuracy, else "
        "output_sqnr_db); a holder evaluated on other data falls back to the gates.",
    )
    force: bool = Field(
        False, description="Convert even when a version with the same idempotency key is already registered."
    )
    experiment: str = Field("quantstage", description="MLflow experiment of the conversion run(s).")
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
    benchmark_budget_s: float | None = Field(
        10.0,
        gt=0.0,
        description="Seconds one benchmark configuration may take: fewer calls (at least 10) for a large model; "
        "null: always benchmark_iterations.",
    )
    export_budget_s: float | None = Field(
        10.0,
        gt=0.0,
        description="Seconds the deployable forms (TorchScript, frozen, optimized) may be timed against each other "
        "(at least 3 rounds); null: 30 rounds.",
    )
    ship_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="Largest absolute output difference a shipped form may have against the lowered model (0: bit-exact).",
    )

    @field_validator("benchmark_threads", "benchmark_batch_sizes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int) else value

    def stage_params(self, **overrides: Any) -> StageParams:
        """These parameters as a plain ``StageParams`` (what a conversion unit reads, without the flow's
        own fields: spec, candidates...), with ``overrides`` (e.g. a sweep's screening iterations)."""
        values = {name: getattr(self, name) for name in StageParams.model_fields}
        return StageParams.model_validate(values | overrides)

    def eval_key(self) -> dict[str, Any]:
        """What a conversion's verdict depends on besides the source and the spec: data, evaluation, gates, fallback."""
        return {
            "data": self.data.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "gates": self.gates.for_task(self.evaluation.task).model_dump(mode="json"),
            "fallback": self.fallback.model_dump(mode="json"),
        }
