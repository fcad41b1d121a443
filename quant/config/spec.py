"""What every spec shares: ``SpecBase``, the fields and methods all engines understand, as data.

A spec is a frozen pydantic model (``extra="forbid"``), loadable from YAML or JSON. Each engine
owns a subclass with its own fields and checks (``quant.engines.fx.spec.FxSpec``,
``quant.engines.pt2e.spec.Pt2eSpec``); ``quant.engines.registry`` joins them into ``QuantSpec``,
the union a spec is parsed into by its ``engine`` field. This package imports no engine: building
a spec needs no quantization framework (the engine builds its torch objects from the spec, and
checks what only it can check, before any work).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from quantstage.quant.config.dotted import resolve_all
from quantstage.quant.config.files import read_mapping
from quantstage.quant.config.qconfig import MappingPreset, QConfigMappingSpec, QConfigOverride

__all__ = ["BACKENDS", "Backend", "Mode", "SpecBase", "SpecModel", "first_error", "read_spec_file"]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
Backend = Literal["x86", "fbgemm", "qnnpack", "onednn"]
Mode = Literal["static", "dynamic", "float16", "qat"]

# mode -> the QConfigMapping preset it implies
_MODE_PRESET: dict[Mode, MappingPreset] = {"static": "static", "dynamic": "dynamic", "float16": "float16", "qat": "qat"}


class SpecModel(BaseModel):
    """Frozen, closed, and hashable by content (dict fields included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class SpecBase(SpecModel):
    """How to quantize one model, the part every engine understands; an engine's spec adds its own fields.

    Subclasses set ``engine`` to a one-value ``Literal`` (their registry name) with that value as default.
    """

    version: Literal[1] = Field(default=1, description="Schema version of this spec.")
    engine: str = Field(description="Quantization engine (quant.engines.registry lists them).")
    backend: Backend = Field(
        default="x86",
        description="Quantized engine the model targets; picks the default qconfigs "
        "and torch.backends.quantized.engine.",
    )
    mode: Mode = Field(
        default="static",
        description="static: int8 weights and activations, calibrated on data; dynamic: int8 "
        "weights, activations quantized on the fly (Linear, LSTM, GRU, RNN cells); float16: "
        "fp16 weights (Linear, LSTM, GRU); qat: a prepare_qat_fx model trained elsewhere, "
        "converted without recalibration.",
    )
    calibration_batches: int = Field(
        default=8, ge=1, description="Number of calibration batches run through the observers (static)."
    )
    tracing: Literal["auto", "whole", "submodules"] = Field(
        default="auto",
        description="auto: FX-trace the whole model; when its forward does not trace, quantize its largest "
        "traceable submodules each on its own (calibrated on the inputs they see inside the whole model) and "
        "leave the glue float. whole: the whole model or an error. submodules: always by submodules.",
    )
    qconfig_mapping: QConfigMappingSpec | None = Field(
        default=None,
        description="Prepare-time QConfigMapping: a preset and ordered overrides. Default: the "
        "preset the mode implies, no overrides.",
    )
    skip_modules: tuple[str, ...] = Field(
        default=(),
        description="Shorthand, applied after qconfig_mapping: module paths kept float (set_module_name(name, None)).",
    )
    skip_object_types: tuple[str, ...] = Field(
        default=(),
        description="Shorthand, applied after qconfig_mapping: module classes, functions or ops "
        "kept float by dotted path ('torch.nn.Linear', 'torch.nn.functional.linear', "
        "'operator.add'), including the fused modules they start (LinearReLU, ...).",
    )
    target: Literal["native", "reference"] = Field(
        default="native",
        description="What the stage ships: 'native' lowers to the backend's quantized ops; "
        "'reference' ships the reference quantized model (quantize/dequantize + reference "
        "modules) for compilers that consume it. The reference model is logged either way.",
    )
    strict_skips: bool = Field(
        default=False,
        description="A skip (module name, regex or object type set to null) that matches nothing in "
        "the traced model is an error instead of a warning.",
    )

    @field_validator("skip_object_types")
    @classmethod
    def _object_types_resolve(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        resolve_all(value)
        return value

    @field_validator("skip_modules")
    @classmethod
    def _module_names_nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or name != name.strip():
                raise ValueError(
                    f"skip_modules entry {name!r} is not a module path; use the dotted name "
                    f"from model.named_modules(), e.g. 'features.0'"
                )
        return value

    @model_validator(mode="after")
    def _preset_matches_mode(self) -> SpecBase:
        if self.qconfig_mapping is not None:
            allowed = {_MODE_PRESET[self.mode], "none"}
            if self.qconfig_mapping.preset not in allowed:
                raise ValueError(
                    f"qconfig_mapping.preset {self.qconfig_mapping.preset!r} contradicts mode {self.mode!r}; "
                    f"use preset {_MODE_PRESET[self.mode]!r} (or 'none'), or change mode"
                )
        return self

    @model_serializer(mode="wrap")
    def _keeps_its_engine(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """``engine`` is dumped even with ``exclude_defaults``: parsed again, a spec without it is the
        default engine's, whatever engine it came from."""
        data = handler(self)
        if info.exclude_defaults and isinstance(data, dict) and "engine" not in data:
            data = {"engine": self.engine, **data}
        return data

    # -- the mappings as data (the engine builds the torch objects from them) ---------------
    def mapping_spec(self) -> QConfigMappingSpec:
        """The prepare-time mapping as data, with the skip shorthands appended as overrides."""
        base = self.qconfig_mapping or QConfigMappingSpec(preset=_MODE_PRESET[self.mode])
        return base.model_copy(update={"overrides": (*base.overrides, *self._skip_overrides())})

    def _skip_overrides(self) -> list[QConfigOverride]:
        """skip_object_types / skip_modules as null overrides, for both mappings: a part kept
        float at prepare stays float at convert, and convert_fx needs its key there too."""
        skips = [QConfigOverride(set="object_type", key=p, qconfig=None) for p in self.skip_object_types]
        skips += [QConfigOverride(set="module_name", key=n, qconfig=None) for n in self.skip_modules]
        return skips

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def kernels(self) -> str:
        """Whose int8 kernels run the model, for the machine-dependent defaults: the backend's here; an
        engine whose kernels are not the backend's says whose (PT2E: ``"pt2e"``, Inductor's oneDNN)."""
        return self.backend

    def resolved(self) -> dict[str, bool | int | str]:
        """The settings this spec leaves to the machine, as this machine resolves them: ``reduce_range``
        (7-bit static activations on x86/fbgemm/onednn without VNNI/AMX), the dynamic preset's weight
        granularity and bits. Part of ``digest``: the same spec makes a different model on a CPU that
        resolves them differently."""
        mapping = self.mapping_spec()
        if self.mode == "static":
            return {"reduce_range": mapping.effective_reduce_range(self.kernels)[0]}
        if self.mode == "dynamic" and mapping.preset == "dynamic":
            weight, activation_bits, weight_bits, _ = mapping.effective_dynamic(self.kernels)
            return {
                "dynamic.weight": weight,
                "dynamic.activation_bits": activation_bits,
                "dynamic.weight_bits": weight_bits,
            }
        return {}

    def digest(self) -> str:
        """A short stable hash of the spec and its resolved settings (lineage tags, idempotency keys)."""
        canonical = json.dumps({"spec": self.model_dump(mode="json"), "resolved": self.resolved()}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def as_params(self) -> dict[str, str]:
        """Flat ``spec.<field>`` strings for experiment-tracker params (nested parts as JSON)."""
        params = {}
        for key, value in self.model_dump(mode="json").items():
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                params[f"spec.{key}"] = ",".join(value)
            elif isinstance(value, (dict, list)):
                params[f"spec.{key}"] = json.dumps(value, sort_keys=True)[:6000]
            else:
                params[f"spec.{key}"] = str(value)
        mapping = self.mapping_spec()
        if self.mode == "static":
            reduce_range, why = mapping.effective_reduce_range(self.kernels)
            params["resolved.reduce_range"] = f"{reduce_range} ({why})"
        elif self.mode == "dynamic" and mapping.preset == "dynamic":
            weight, activation_bits, weight_bits, why = mapping.effective_dynamic(self.kernels)
            params["resolved.dynamic"] = (
                f"{weight} weights, {activation_bits}-bit activations, {weight_bits}-bit weights ({why})"
            )
        return params


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The raw fields a ``.yaml``/``.yml``/``.json`` spec file holds (a lone ``spec:`` key unwrapped);
    SpecError for a missing or unreadable file. ``quant.engines.registry.load_spec`` validates them."""
    data = read_mapping(path, "spec file")
    if "spec" in data and len(data) == 1:
        data = data["spec"]
    return data or {}


def first_error(exc: ValidationError) -> str:
    """One line for the first error of a pydantic ValidationError: where, what, what was given."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not where:  # a check across fields: its message names them; the whole input would only repeat it
        return msg
    if len(err["loc"]) == 1 and msg.startswith(where):  # the message names the field already
        return f"{msg} (got {err.get('input')!r})"
    return f"{where}: {msg} (got {err.get('input')!r})"
