"""What every flow that converts one model shares: where the model comes from, the data and the
evaluation it is measured on, and the registry name of the result."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quant.evaluate import EvaluationSpec
from quant.model_source import ModelSource
from quant.sources import DataSpec
from tasks.track import digest

__all__ = ["MODEL_URI", "SourceParams"]

MODEL_URI = re.compile(r"^(models:/[^/@]+(/\d+|@[^/]+)|runs:/[^/]+/.+)$")


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

    @model_validator(mode="after")
    def _one_model(self) -> SourceParams:
        if (self.model_uri is None) == (self.model is None):
            raise ValueError(
                "give exactly one of model_uri (an MLflow model URI) or model (a model source: uri, factory + "
                "weights, or a trusted pickle)"
            )
        return self

    @property
    def source(self) -> ModelSource:
        """The model source, whichever field gave it."""
        return self.model if self.model is not None else ModelSource(uri=self.model_uri)

    @property
    def source_label(self) -> str:
        return self.source.uri or self.source.label

    @staticmethod
    def raw_source_label(raw: dict | None) -> str:
        """The source label of not-yet-validated parameters (a flow run name must not fail)."""
        raw = raw or {}
        model = raw.get("model") or {}
        return raw.get("model_uri") or model.get("uri") or model.get("factory") or "?"

    def eval_digest(self) -> str:
        """Digest of what the metrics are measured on (data + evaluation): comparable iff equal."""
        return digest({"data": self.data.model_dump(mode="json"), "evaluation": self.evaluation.model_dump(mode="json")})[:16]

    @property
    def target_name(self) -> str:
        """``registered_name``, else ``<registered source name>-int8``, ``run-<id8>-int8`` or ``<factory>-int8``."""
        if self.registered_name:
            return self.registered_name
        uri = self.source.uri
        if uri is None:
            return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.source.label) + "-int8"
        if uri.startswith("models:/"):
            return re.split(r"[/@]", uri[len("models:/") :])[0] + "-int8"
        return "run-" + uri[len("runs:/") :].split("/")[0][:8] + "-int8"
