"""QuantSpec: what to quantize and how, as data.

A spec is a frozen pydantic model (``extra="forbid"``), loadable from YAML or JSON. Every
argument of ``convert_fx`` — ``qconfig_mapping``, ``convert_custom_config``,
``_remove_qconfig``, ``backend_config``, ``keep_original_weights`` — and the prepare-time
configuration it depends on are reachable from it. The engine builds its torch objects from
it (the FX engine: ``QConfigMapping``, ``BackendConfig``, ``PrepareCustomConfig``,
``ConvertCustomConfig`` in ``quant.engines.fx.configs``) and checks on validation what only it
can check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantstage.quant.config.dotted import resolve_all, resolve_dotted
from quantstage.quant.config.files import read_mapping
from quantstage.quant.config.qconfig import MappingPreset, QConfigMappingSpec, QConfigOverride
from quantstage.quant.errors import SpecError

__all__ = [
    "BACKENDS",
    "BACKEND_CONFIG_NAMES",
    "ConvertCustomSpec",
    "PrepareCustomSpec",
    "ENGINES",
    "QuantSpec",
    "first_error",
    "load_spec",
]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
ENGINES = ("fx",)
Backend = Literal["x86", "fbgemm", "qnnpack", "onednn"]
Mode = Literal["static", "dynamic", "float16", "qat"]
QuantType = Literal["static", "dynamic", "weight_only"]
BACKEND_CONFIG_NAMES = ("native", "x86", "fbgemm", "qnnpack", "onednn", "executorch", "tensorrt")

# mode -> the QConfigMapping preset it implies
_MODE_PRESET: dict[Mode, MappingPreset] = {"static": "static", "dynamic": "dynamic", "float16": "float16", "qat": "qat"}


class _Spec(BaseModel):
    """Frozen, closed, and hashable by content (dict fields included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class PrepareCustomSpec(_Spec):
    """``PrepareCustomConfig``: what prepare_fx must not trace, treat apart, or keep."""

    non_traceable_module_names: tuple[str, ...] = Field(
        default=(), description="Module paths FX calls as leaves without tracing into them (they stay float)."
    )
    non_traceable_module_classes: tuple[str, ...] = Field(
        default=(), description="Module classes (dotted paths) FX does not trace into (they stay float)."
    )
    standalone_module_names: tuple[str, ...] = Field(
        default=(),
        description="Module paths prepared and converted as standalone units, with this spec's "
        "qconfig mapping; their example inputs are captured from a forward of the whole model.",
    )
    standalone_module_classes: tuple[str, ...] = Field(
        default=(), description="Module classes (dotted paths) handled as standalone units."
    )
    preserved_attributes: tuple[str, ...] = Field(
        default=(), description="Attributes of the root module that survive prepare (and convert)."
    )
    float_to_observed: dict[QuantType, dict[str, str]] = Field(
        default_factory=dict,
        description="Custom modules: per quant type, float class path -> observed class path "
        "(the observed class needs from_float).",
    )

    @model_validator(mode="after")
    def _paths_resolve(self) -> PrepareCustomSpec:
        resolve_all(self.non_traceable_module_classes)
        resolve_all(self.standalone_module_classes)
        for mapping in self.float_to_observed.values():
            resolve_all(list(mapping) + list(mapping.values()))
        return self


class ConvertCustomSpec(_Spec):
    """``ConvertCustomConfig``: custom observed → quantized modules and preserved attributes."""

    observed_to_quantized: dict[QuantType, dict[str, str]] = Field(
        default_factory=dict,
        description="Per quant type, observed class path -> quantized class path (needs from_observed).",
    )
    preserved_attributes: tuple[str, ...] = Field(
        default=(), description="Attributes of the root module that survive convert."
    )

    @model_validator(mode="after")
    def _paths_resolve(self) -> ConvertCustomSpec:
        for mapping in self.observed_to_quantized.values():
            resolve_all(list(mapping) + list(mapping.values()))
        return self


class QuantSpec(_Spec):
    """How to quantize one model: engine, backend, mode, and every convert_fx argument as data."""

    version: Literal[1] = Field(default=1, description="Schema version of this spec.")
    engine: Literal["fx", "pt2e"] = Field(
        default="fx",
        description="Quantization engine: fx (torch.ao FX graph mode: prepare_fx, convert_fx decomposed; ships "
        "TorchScript) or pt2e (torch.export + torchao's prepare_pt2e/convert_pt2e with X86InductorQuantizer, "
        "lowered by Inductor; ships an AOTInductor package; needs torchao, the pt2e extra).",
    )
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
    float_global_pool: bool = Field(
        default=True,
        description="static/qat: run global average pooling (AdaptiveAvgPool to size 1) and the flatten after it in "
        "float, so the pooled features get their own observer: torch's backend configs make pooling share its "
        "input's quantization step, far too coarse for the averaged values (ResNet-18 output SQNR +0.34 dB, as ORT's "
        "QLinearGlobalAveragePool does); costs one dequantize/quantize pair.",
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
    convert_qconfig_mapping: QConfigMappingSpec | None = Field(
        default=None,
        description="convert_fx qconfig_mapping: every prepare-time key with the same qconfig or "
        "null (skip at convert), extra keys only with null. Default: none (use prepare's).",
    )
    prepare_custom: PrepareCustomSpec = Field(
        default_factory=PrepareCustomSpec, description="prepare_fx prepare_custom_config."
    )
    convert_custom: ConvertCustomSpec = Field(
        default_factory=ConvertCustomSpec, description="convert_fx convert_custom_config."
    )
    backend_config: str = Field(
        default="native",
        description="BackendConfig for prepare and convert: native (torch's default), x86, fbgemm, "
        "qnnpack, onednn, executorch, tensorrt, or 'module:factory' for a custom one.",
    )
    target: Literal["native", "reference"] = Field(
        default="native",
        description="What the stage ships: 'native' lowers to the backend's quantized ops; "
        "'reference' ships the reference quantized model (quantize/dequantize + reference "
        "modules) for compilers that consume it. The reference model is logged either way.",
    )
    keep_original_weights: bool = Field(
        default=False, description="convert_fx keep_original_weights: keep float weights on lowered modules."
    )
    remove_qconfig: bool = Field(
        default=True, description="convert_fx _remove_qconfig: drop qconfig attributes after convert."
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

    @field_validator("backend_config")
    @classmethod
    def _known_backend_config(cls, value: str) -> str:
        if value in BACKEND_CONFIG_NAMES:
            return value
        if ":" not in value:
            raise ValueError(
                f"backend_config {value!r} is unknown; allowed: {', '.join(BACKEND_CONFIG_NAMES)}, "
                f"or 'module:factory' returning a torch BackendConfig"
            )
        resolve_dotted(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> QuantSpec:
        if self.qconfig_mapping is not None:
            allowed = {_MODE_PRESET[self.mode], "none"}
            if self.qconfig_mapping.preset not in allowed:
                raise ValueError(
                    f"qconfig_mapping.preset {self.qconfig_mapping.preset!r} contradicts mode {self.mode!r}; "
                    f"use preset {_MODE_PRESET[self.mode]!r} (or 'none'), or change mode"
                )
        from quantstage.quant.engines import engine_for  # the engine checks what only it can build

        try:
            engine_for(self).check(self)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return self

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

    def convert_mapping_spec(self) -> QConfigMappingSpec | None:
        """The convert-time mapping as data (skip shorthands appended), or None (use prepare's)."""
        if self.convert_qconfig_mapping is None:
            return None
        base = self.convert_qconfig_mapping
        return base.model_copy(update={"overrides": (*base.overrides, *self._skip_overrides())})

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def kernels(self) -> str:
        """Whose int8 kernels run the model, for the machine-dependent defaults: the backend (fx), or
        Inductor's oneDNN kernels (``"pt2e"``)."""
        return "pt2e" if self.engine == "pt2e" else self.backend

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


def load_spec(path: str | Path) -> QuantSpec:
    """Load a QuantSpec from a ``.yaml``/``.yml``/``.json`` file, validated."""
    data: Any = read_mapping(path, "spec file")
    if "spec" in data and len(data) == 1:
        data = data["spec"]
    try:
        return QuantSpec.model_validate(data or {})
    except ValidationError as exc:
        raise SpecError(f"spec file {str(path)!r} is invalid: {first_error(exc)}") from exc


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
