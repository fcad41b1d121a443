"""QuantSpec: what to quantize and how, as data; the torch configs are built from it here.

A spec is a frozen pydantic model (``extra="forbid"``), loadable from YAML or JSON. Every
argument of ``convert_fx`` — ``qconfig_mapping``, ``convert_custom_config``,
``_remove_qconfig``, ``backend_config``, ``keep_original_weights`` — and the prepare-time
configuration it depends on are reachable from it, and the torch objects
(``QConfigMapping``, ``BackendConfig``, ``PrepareCustomConfig``, ``ConvertCustomConfig``)
are built from it in this one module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quant import _fx
from quant.errors import SpecError
from quant.qconfig import QConfigMappingSpec, QConfigOverride, check_convert_mapping

__all__ = [
    "BACKENDS",
    "BACKEND_CONFIG_NAMES",
    "ConvertCustomSpec",
    "PrepareCustomSpec",
    "QuantSpec",
    "load_spec",
    "resolve_dotted",
]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
Backend = Literal["x86", "fbgemm", "qnnpack", "onednn"]
Mode = Literal["static", "dynamic", "float16", "qat"]
QuantType = Literal["static", "dynamic", "weight_only"]
BACKEND_CONFIG_NAMES = ("native", "x86", "fbgemm", "qnnpack", "onednn", "executorch", "tensorrt")

# mode -> the QConfigMapping preset it implies
_MODE_PRESET = {"static": "static", "dynamic": "dynamic", "float16": "float16", "qat": "qat"}


def resolve_dotted(path: str) -> Any:
    """Resolve ``torch.nn.Linear`` / ``operator.add`` / ``pkg.mod:attr`` to the object."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        parts = [module_name, *attr_path.split(".")]
        split = 1
    else:
        parts = path.split(".")
        split = None
    candidates = [split] if split else range(len(parts) - 1, 0, -1)
    last_error: Exception | None = None
    for i in candidates:
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except (ImportError, ValueError, TypeError) as exc:  # "" and "." are not module names
            last_error = exc
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            last_error = exc
            continue
        return obj
    raise SpecError(
        f"cannot resolve {path!r} to a Python object ({last_error}); give an importable dotted "
        f"path such as 'torch.nn.Linear', 'torch.nn.functional.linear' or 'operator.add'"
    )


def _resolve_all(paths: tuple[str, ...] | list[str]) -> None:
    for path in paths:
        resolve_dotted(path)


class _Spec(BaseModel):
    """Frozen, closed, and hashable by content (dict fields included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class PrepareCustomSpec(_Spec):
    """``PrepareCustomConfig``: what prepare_fx must not trace, treat apart, or keep."""

    non_traceable_module_names: tuple[str, ...] = Field(
        (), description="Module paths FX calls as leaves without tracing into them (they stay float)."
    )
    non_traceable_module_classes: tuple[str, ...] = Field(
        (), description="Module classes (dotted paths) FX does not trace into (they stay float)."
    )
    standalone_module_names: tuple[str, ...] = Field(
        (), description="Module paths prepared and converted as standalone units, with this spec's "
        "qconfig mapping; their example inputs are captured from a forward of the whole model.",
    )
    standalone_module_classes: tuple[str, ...] = Field(
        (), description="Module classes (dotted paths) handled as standalone units."
    )
    preserved_attributes: tuple[str, ...] = Field(
        (), description="Attributes of the root module that survive prepare (and convert)."
    )
    float_to_observed: dict[QuantType, dict[str, str]] = Field(
        default_factory=dict,
        description="Custom modules: per quant type, float class path -> observed class path "
        "(the observed class needs from_float).",
    )

    @model_validator(mode="after")
    def _paths_resolve(self) -> PrepareCustomSpec:
        _resolve_all(self.non_traceable_module_classes)
        _resolve_all(self.standalone_module_classes)
        for mapping in self.float_to_observed.values():
            _resolve_all(list(mapping) + list(mapping.values()))
        return self


class ConvertCustomSpec(_Spec):
    """``ConvertCustomConfig``: custom observed → quantized modules and preserved attributes."""

    observed_to_quantized: dict[QuantType, dict[str, str]] = Field(
        default_factory=dict,
        description="Per quant type, observed class path -> quantized class path (needs from_observed).",
    )
    preserved_attributes: tuple[str, ...] = Field(
        (), description="Attributes of the root module that survive convert."
    )

    @model_validator(mode="after")
    def _paths_resolve(self) -> ConvertCustomSpec:
        for mapping in self.observed_to_quantized.values():
            _resolve_all(list(mapping) + list(mapping.values()))
        return self


class QuantSpec(_Spec):
    """How to quantize one model with FX graph mode quantization (every convert_fx argument)."""

    version: Literal[1] = Field(1, description="Schema version of this spec.")
    backend: Backend = Field(
        "x86",
        description="Quantized engine the model targets; picks the default qconfigs "
        "and torch.backends.quantized.engine.",
    )
    mode: Mode = Field(
        "static",
        description="static: int8 weights and activations, calibrated on data; dynamic: int8 "
        "weights, activations quantized on the fly (Linear, LSTM, GRU, RNN cells); float16: "
        "fp16 weights (Linear, LSTM, GRU); qat: a prepare_qat_fx model trained elsewhere, "
        "converted without recalibration.",
    )
    calibration_batches: int = Field(
        8, ge=1, description="Number of calibration batches run through the observers (static)."
    )
    float_global_pool: bool = Field(
        True,
        description="static/qat: run global average pooling (AdaptiveAvgPool to size 1) and the flatten after it in "
        "float, so the pooled features get their own observer: torch's backend configs make pooling share its "
        "input's quantization step, far too coarse for the averaged values (ResNet-18 output SQNR +0.34 dB, as ORT's "
        "QLinearGlobalAveragePool does); costs one dequantize/quantize pair.",
    )
    tracing: Literal["auto", "whole", "submodules"] = Field(
        "auto",
        description="auto: FX-trace the whole model; when its forward does not trace, quantize its largest "
        "traceable submodules each on its own (calibrated on the inputs they see inside the whole model) and "
        "leave the glue float. whole: the whole model or an error. submodules: always by submodules.",
    )
    qconfig_mapping: QConfigMappingSpec | None = Field(
        None,
        description="Prepare-time QConfigMapping: a preset and ordered overrides. Default: the "
        "preset the mode implies, no overrides.",
    )
    skip_modules: tuple[str, ...] = Field(
        (),
        description="Shorthand, applied after qconfig_mapping: module paths kept float "
        "(set_module_name(name, None)).",
    )
    skip_object_types: tuple[str, ...] = Field(
        (),
        description="Shorthand, applied after qconfig_mapping: module classes, functions or ops "
        "kept float by dotted path ('torch.nn.Linear', 'torch.nn.functional.linear', "
        "'operator.add'), including the fused modules they start (LinearReLU, ...).",
    )
    convert_qconfig_mapping: QConfigMappingSpec | None = Field(
        None,
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
        "native",
        description="BackendConfig for prepare and convert: native (torch's default), x86, fbgemm, "
        "qnnpack, onednn, executorch, tensorrt, or 'module:factory' for a custom one.",
    )
    target: Literal["native", "reference"] = Field(
        "native",
        description="What the stage ships: 'native' lowers to the backend's quantized ops; "
        "'reference' ships the reference quantized model (quantize/dequantize + reference "
        "modules) for compilers that consume it. The reference model is logged either way.",
    )
    keep_original_weights: bool = Field(
        False, description="convert_fx keep_original_weights: keep float weights on lowered modules."
    )
    remove_qconfig: bool = Field(
        True, description="convert_fx _remove_qconfig: drop qconfig attributes after convert."
    )
    strict_skips: bool = Field(
        False,
        description="A skip (module name, regex or object type set to null) that matches nothing in "
        "the traced model is an error instead of a warning.",
    )

    @field_validator("skip_object_types")
    @classmethod
    def _object_types_resolve(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _resolve_all(value)
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
        if self.convert_qconfig_mapping is not None:
            try:
                check_convert_mapping(self.qconfig_mapping_object(), self.convert_qconfig_mapping_object())
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        return self

    # -- torch objects built from the spec -------------------------------------------------
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

    def qconfig_mapping_object(self) -> Any:
        """The QConfigMapping for prepare_fx / prepare_qat_fx."""
        mapping = self.mapping_spec().build(self.backend)
        _skip_fused_forms(mapping, self.backend_config_object())
        return mapping

    def reference_convert_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``quant.convert.reference_convert`` for this spec."""
        return {
            "convert_custom_config": self.convert_custom_config(),
            "qconfig_mapping": self.convert_qconfig_mapping_object(),
            "backend_config": self.backend_config_object(),
        }

    def lower_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``quant.convert.lower`` for this spec."""
        return {"keep_original_weights": self.keep_original_weights, "remove_qconfig": self.remove_qconfig, "target": self.target}

    def convert_qconfig_mapping_object(self) -> Any | None:
        """The convert-time QConfigMapping for convert_fx, or None (use prepare's)."""
        if self.convert_qconfig_mapping is None:
            return None
        base = self.convert_qconfig_mapping
        mapping = base.model_copy(update={"overrides": (*base.overrides, *self._skip_overrides())}).build(self.backend)
        _skip_fused_forms(mapping, self.backend_config_object())
        return mapping

    def prepare_custom_config(self) -> Any:
        """The PrepareCustomConfig (standalone modules need example inputs: see quant.prepare)."""
        p = self.prepare_custom
        config = _fx.PrepareCustomConfig()
        # Skipped modules are left untraced too: a submodule FX cannot trace can be skipped.
        untraced = list(dict.fromkeys([*p.non_traceable_module_names, *self.skip_modules]))
        config.set_non_traceable_module_names(untraced)
        config.set_non_traceable_module_classes([resolve_dotted(c) for c in p.non_traceable_module_classes])
        config.set_preserved_attributes(list(p.preserved_attributes))
        for float_cls, observed_cls, quant_type in _class_pairs(p.float_to_observed):
            config.set_float_to_observed_mapping(float_cls, observed_cls, quant_type)
        return config

    def convert_custom_config(self) -> Any:
        """The ConvertCustomConfig for convert_fx."""
        c = self.convert_custom
        config = _fx.ConvertCustomConfig()
        config.set_preserved_attributes(list(c.preserved_attributes))
        for observed_cls, quantized_cls, quant_type in _class_pairs(c.observed_to_quantized):
            config.set_observed_to_quantized_mapping(observed_cls, quantized_cls, quant_type)
        return config

    def backend_config_object(self) -> Any:
        """The torch BackendConfig named by ``backend_config``."""
        if self.backend_config in BACKEND_CONFIG_NAMES:
            return _fx.backend_config_for(self.backend_config)
        config = resolve_dotted(self.backend_config)()
        if not isinstance(config, _fx.BackendConfig):
            raise SpecError(
                f"backend_config factory {self.backend_config!r} returned {type(config).__name__}, "
                f"not a torch BackendConfig"
            )
        return config

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def digest(self) -> str:
        """A short stable hash of the spec (for lineage tags and idempotency keys)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
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
        if self.mode == "static":
            reduce_range, why = self.mapping_spec().effective_reduce_range(self.backend)
            params["resolved.reduce_range"] = f"{reduce_range} ({why})"
        return params


def _class_pairs(by_quant_type: dict[str, dict[str, str]]) -> list[tuple[Any, Any, Any]]:
    """``(from_class, to_class, torch QuantType)`` for a ``{quant_type: {from_path: to_path}}`` mapping."""
    return [
        (resolve_dotted(src), resolve_dotted(dst), _quant_type(quant_type))
        for quant_type, mapping in by_quant_type.items()
        for src, dst in mapping.items()
    ]


def _quant_type(name: str) -> Any:
    return {"static": _fx.QuantType.STATIC, "dynamic": _fx.QuantType.DYNAMIC,
            "weight_only": _fx.QuantType.WEIGHT_ONLY}[name]


def _skip_fused_forms(mapping: Any, backend_config: Any) -> None:
    """A type or op skipped with ``None`` also skips the fused modules whose pattern holds it.

    Fusion turns Linear+ReLU into LinearReLU, Conv+add into ConvAdd2d (onednn), and so on;
    the fused module would otherwise still get the global qconfig and be quantized although
    a part of it was asked to stay float (a fused module is quantized whole or not at all).
    """
    skipped = [t for t, q in mapping.object_type_qconfigs.items() if q is None]
    if not skipped:
        return
    for config in backend_config.configs:
        if config.fused_module is None or config.fused_module in mapping.object_type_qconfigs:
            continue
        pattern = config.pattern if config.pattern is not None else config._pattern_complex_format
        members = set(_flatten(pattern))
        if any(obj in members for obj in skipped):
            mapping.set_object_type(config.fused_module, None)


def _flatten(pattern: Any) -> list[Any]:
    if isinstance(pattern, tuple):
        return [leaf for part in pattern for leaf in _flatten(part)]
    return [pattern]


def load_spec(path: str | Path) -> QuantSpec:
    """Load a QuantSpec from a ``.yaml``/``.yml``/``.json`` file, validated."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist; pass the path to a YAML or JSON spec")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"spec file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from exc
    if isinstance(data, dict) and "spec" in data and len(data) == 1:
        data = data["spec"]
    try:
        return QuantSpec.model_validate(data or {})
    except ValidationError as exc:
        raise SpecError(f"spec file {str(path)!r} is invalid: {first_error(exc)}") from exc


def first_error(exc: ValidationError) -> str:
    """One line for the first error of a pydantic ValidationError: where, what, what was given."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg} (got {err.get('input')!r})"
