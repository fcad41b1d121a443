"""QConfigMapping as data: a preset plus ordered overrides, and the convert-time rule.

```yaml
qconfig_mapping:
  preset: static                  # static | qat | dynamic | float16 | none
  overrides:                      # applied in order, exactly like the QConfigMapping setters
    - {set: object_type, key: torch.nn.functional.add, qconfig: null}   # skip (the seed's example)
    - {set: module_name, key: foo.bar, qconfig: null}
    - {set: module_name_regex, key: "features\\.[0-3]", qconfig: null}
    - {set: module_name_object_type_order, key: "", object_type: torch.add, index: 0, qconfig: null}
    - {set: global, qconfig: default}
```

A ``qconfig`` is a named preset (below) or ``null``, which skips quantization.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quant import _fx
from quant.hardware import default_reduce_range
from quant.errors import SpecError

__all__ = [
    "MAPPING_PRESETS",
    "ObserverSpec",
    "QCONFIG_PRESETS",
    "QConfigMappingSpec",
    "QConfigOverride",
    "check_convert_mapping",
    "qconfig_for",
]

QConfigName = Literal[
    "default", "qat", "per_tensor", "dynamic", "per_channel_dynamic", "float16_dynamic",
    "float16_static", "weight_only",
]
MappingPreset = Literal["static", "qat", "dynamic", "float16", "none"]
SetKind = Literal["global", "object_type", "module_name", "module_name_regex", "module_name_object_type_order"]

_qc = _fx.ao_quantization
# name -> factory(backend) of a torch QConfig.
QCONFIG_PRESETS: dict[str, Callable[[str], Any]] = {
    "default": lambda backend: _qc.get_default_qconfig(backend),
    "qat": lambda backend: _qc.get_default_qat_qconfig(backend),
    "per_tensor": lambda backend: _qc.default_qconfig,
    "dynamic": lambda backend: _qc.default_dynamic_qconfig,
    "per_channel_dynamic": lambda backend: _qc.per_channel_dynamic_qconfig,
    "float16_dynamic": lambda backend: _qc.float16_dynamic_qconfig,
    "float16_static": lambda backend: _qc.float16_static_qconfig,
    "weight_only": lambda backend: _qc.float_qparams_weight_only_qconfig,
}


def _global_mapping(qconfig: Any) -> Any:
    return _fx.QConfigMapping().set_global(qconfig)


def _dynamic_mapping() -> Any:
    # Embeddings get int8 weight-only (float qparams) too, so an encoder's largest tables
    # shrink ~4x like ONNX Runtime's dynamic quantization, instead of staying fp32.
    return (
        _global_mapping(_qc.default_dynamic_qconfig)
        .set_object_type(torch.nn.Embedding, _qc.float_qparams_weight_only_qconfig)
        .set_object_type(torch.nn.EmbeddingBag, _qc.float_qparams_weight_only_qconfig)
    )


# preset -> factory(backend) of a torch QConfigMapping.
MAPPING_PRESETS: dict[str, Callable[[str], Any]] = {
    "static": lambda backend: _fx.get_default_qconfig_mapping(backend),
    "qat": lambda backend: _fx.get_default_qat_qconfig_mapping(backend),
    # Global, not per-type: prepare_fx fuses Linear+ReLU etc. and needs one qconfig across a
    # fused pattern. Only what the BackendConfig supports dynamically gets quantized.
    "dynamic": lambda backend: _dynamic_mapping(),
    "float16": lambda backend: _global_mapping(_qc.float16_dynamic_qconfig),
    "none": lambda backend: _fx.QConfigMapping(),
}


def qconfig_for(name: str | None, backend: str) -> Any:
    """The torch QConfig a preset name stands for (``None`` stays ``None``: skip)."""
    return None if name is None else QCONFIG_PRESETS[name](backend)


def _resolve(path: str) -> Any:
    from quant.spec import resolve_dotted

    return resolve_dotted(path)


_ACTIVATION_OBSERVERS = {
    "minmax": _qc.MinMaxObserver,
    "moving_average": _qc.MovingAverageMinMaxObserver,
    "histogram": _qc.HistogramObserver,
}


class ObserverSpec(BaseModel):
    """Which observers calibrate static int8: replaces the preset's default qconfig everywhere it is used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    activation: Literal["minmax", "moving_average", "histogram"] = Field(
        "histogram", description="Activation observer: min/max, moving-average min/max, or histogram (MSE search)."
    )
    weight: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="Weight observer: per-output-channel or per-tensor symmetric int8."
    )
    reduce_range: bool | None = Field(
        None,
        description="7-bit activations. Default (null): x86/fbgemm use 7 bits only on a CPU without an int8 "
        "dot-product ISA (VNNI/AMX), whose kernels saturate in int16; otherwise 8 bits (qnnpack/onednn: always 8).",
    )

    def qconfig(self, backend: str) -> Any:
        reduce_range = self.reduce_range if self.reduce_range is not None else default_reduce_range(backend)[0]
        activation = _ACTIVATION_OBSERVERS[self.activation].with_args(dtype=torch.quint8, reduce_range=reduce_range)
        weight = (
            _qc.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
            if self.weight == "per_channel"
            else _qc.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        )
        return _qc.QConfig(activation=activation, weight=weight)


class QConfigOverride(BaseModel):
    """One QConfigMapping setter call: ``set_<set>(key[, object_type, index], qconfig)``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    set: SetKind = Field(description="Which QConfigMapping setter this entry calls.")
    key: str = Field(
        "",
        description="object_type: dotted path of a module class, function or op; module_name(_regex): "
        "module path or regex; module_name_object_type_order: the module path. Unused for global.",
    )
    object_type: str | None = Field(None, description="module_name_object_type_order only: dotted type/function.")
    index: int | None = Field(None, ge=0, description="module_name_object_type_order only: call order index.")
    qconfig: QConfigName | None = Field(description="Named qconfig preset, or null to skip quantizing.")

    @model_validator(mode="after")
    def _check_shape(self) -> QConfigOverride:
        if self.set == "object_type":
            if not self.key:
                raise ValueError("an object_type override needs key: a dotted path such as 'torch.nn.Linear'")
            _resolve(self.key)
        elif self.set == "module_name_regex":
            try:
                re.compile(self.key)
            except re.error as exc:
                raise ValueError(f"module_name_regex {self.key!r} is not a valid regex: {exc}") from None
        elif self.set == "module_name_object_type_order":
            if self.object_type is None or self.index is None:
                raise ValueError(
                    "a module_name_object_type_order override needs key (module path), "
                    "object_type (dotted path) and index (call order)"
                )
            _resolve(self.object_type)
        elif self.set == "global" and self.key:
            raise ValueError(f"a global override takes no key (got {self.key!r})")
        if self.set != "module_name_object_type_order" and (self.object_type is not None or self.index is not None):
            raise ValueError("object_type and index belong only to module_name_object_type_order overrides")
        return self

    def apply(self, mapping: Any, backend: str) -> None:
        qconfig = qconfig_for(self.qconfig, backend)
        if self.set == "global":
            mapping.set_global(qconfig)
        elif self.set == "object_type":
            mapping.set_object_type(_resolve(self.key), qconfig)
        elif self.set == "module_name":
            mapping.set_module_name(self.key, qconfig)
        elif self.set == "module_name_regex":
            mapping.set_module_name_regex(self.key, qconfig)
        else:
            mapping.set_module_name_object_type_order(self.key, _resolve(self.object_type), self.index, qconfig)

    def describe(self) -> str:
        if self.set == "global":
            return "global"
        if self.set == "module_name_object_type_order":
            return f"module_name_object_type_order ({self.key!r}, {self.object_type}, {self.index})"
        return f"{self.set} {self.key!r}"


class QConfigMappingSpec(BaseModel):
    """A QConfigMapping: a preset, then overrides applied in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: MappingPreset = Field(
        "static",
        description="Starting mapping: static = get_default_qconfig_mapping(backend), qat = "
        "get_default_qat_qconfig_mapping(backend), dynamic = global dynamic int8, float16 = "
        "global float16 dynamic (weight-only fp16), none = empty.",
    )
    overrides: tuple[QConfigOverride, ...] = Field((), description="Setter calls applied in order.")
    observers: ObserverSpec | None = Field(
        None,
        description="static preset only: calibrate with these observers instead of the backend's defaults "
        "(torch keeps its fixed-qparams qconfigs for sigmoid/tanh/softmax...).",
    )

    @model_validator(mode="after")
    def _observers_need_static(self) -> QConfigMappingSpec:
        if self.observers is not None and self.preset != "static":
            raise ValueError(f"observers apply to the static preset, not {self.preset!r}")
        return self

    def effective_reduce_range(self, backend: str) -> tuple[bool, str]:
        """Whether static activations are observed in 7 bits, and why (spec or this CPU)."""
        if self.observers is not None and self.observers.reduce_range is not None:
            return self.observers.reduce_range, "set in the spec (observers.reduce_range)"
        return default_reduce_range(backend)

    def build(self, backend: str) -> Any:
        if self.observers is not None:
            mapping = _fx._get_default_qconfig_mapping_with_default_qconfig(False, backend, self.observers.qconfig(backend))
            if backend in ("x86", "fbgemm"):  # as torch's defaults: no per-channel weights for ConvTranspose there
                transpose = _qc.QConfig(
                    activation=self.observers.qconfig(backend).activation,
                    weight=_qc.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
                )
                for cls in (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d):
                    mapping.set_object_type(cls, transpose)
        elif self.preset == "static" and backend in ("x86", "fbgemm") and not default_reduce_range(backend)[0]:
            mapping = _eight_bit_activations(MAPPING_PRESETS["static"](backend))
        else:
            mapping = MAPPING_PRESETS[self.preset](backend)
        for override in self.overrides:
            override.apply(mapping, backend)
        return mapping


def _eight_bit_activations(mapping: Any) -> Any:
    """``mapping`` with every activation observer that asks for ``reduce_range`` asking for 8 bits
    instead (torch's x86/fbgemm defaults otherwise unchanged: ConvTranspose, LayerNorm, fixed qparams)."""

    def widen(qconfig: Any) -> Any:
        p = getattr(qconfig.activation, "p", None) if qconfig is not None else None
        if p is None or not p.keywords.get("reduce_range"):
            return qconfig
        activation = p.func.with_args(**{**p.keywords, "reduce_range": False})
        return _qc.QConfig(activation=activation, weight=qconfig.weight)

    mapping.set_global(widen(mapping.global_qconfig))
    for key, qconfig in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(key, widen(qconfig))
    return mapping


def _name(key: Any) -> str:
    if isinstance(key, str):
        return repr(key)
    module = (getattr(key, "__module__", None) or "").removeprefix("_")
    qualname = getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or repr(key)
    return f"{module}.{qualname}" if module else qualname


def _observer(factory: Any) -> str:
    """An observer factory as ``Class(arg=value, ...)``: the with_args keywords tell presets apart."""
    p = getattr(factory, "p", None)
    func = getattr(p, "func", p)
    name = getattr(func, "__name__", None)
    if name is None:
        return repr(factory)
    kwargs = ", ".join(f"{k}={v}" for k, v in (getattr(p, "keywords", None) or {}).items())
    return f"{name}({kwargs})" if kwargs else name


def _show(qconfig: Any) -> str:
    if qconfig is None:
        return "None"
    return f"QConfig(activation={_observer(qconfig.activation)}, weight={_observer(qconfig.weight)})"


def check_convert_mapping(prepare_mapping: Any, convert_mapping: Any) -> None:
    """Raise SpecError unless ``convert_mapping`` is a valid convert-time mapping for ``prepare_mapping``.

    The rule (convert_fx's documentation): every key of the prepare-time mapping is present
    with the same qconfig or ``None``; extra keys are allowed only with ``None``.
    """
    qconfig_equals = _fx.qconfig_equals

    rule = (
        "rule: a convert-time qconfig_mapping keeps every prepare-time key with the same qconfig "
        "or null (skip), and may add keys only with null"
    )
    if not qconfig_equals(prepare_mapping.global_qconfig, convert_mapping.global_qconfig) and not (
        prepare_mapping.global_qconfig is None and convert_mapping.global_qconfig is None
    ):
        raise SpecError(
            f"convert-time qconfig_mapping changes the global qconfig: prepare {_show(prepare_mapping.global_qconfig)}, "
            f"convert {_show(convert_mapping.global_qconfig)}; the global qconfig must stay the same "
            f"(skip parts with null overrides instead); {rule}"
        )
    tables = [
        ("object_type", prepare_mapping.object_type_qconfigs, convert_mapping.object_type_qconfigs),
        ("module_name", prepare_mapping.module_name_qconfigs, convert_mapping.module_name_qconfigs),
        ("module_name_regex", prepare_mapping.module_name_regex_qconfigs, convert_mapping.module_name_regex_qconfigs),
        (
            "module_name_object_type_order",
            prepare_mapping.module_name_object_type_order_qconfigs,
            convert_mapping.module_name_object_type_order_qconfigs,
        ),
    ]
    for kind, before, after in tables:
        for key, value in before.items():
            if key not in after:
                raise SpecError(
                    f"convert-time qconfig_mapping lacks {kind} {_name(key)} (prepare: {_show(value)}); "
                    f"fix: add it with the same qconfig or null; {rule}"
                )
            new = after[key]
            if new is not None and not qconfig_equals(value, new):
                raise SpecError(
                    f"convert-time qconfig_mapping changes {kind} {_name(key)}: prepare {_show(value)}, "
                    f"convert {_show(new)}; fix: use the prepare-time qconfig or null; {rule}"
                )
        for key, new in after.items():
            if key not in before and new is not None:
                raise SpecError(
                    f"convert-time qconfig_mapping adds {kind} {_name(key)} with {_show(new)}, which was not "
                    f"in the prepare-time mapping; fix: set it to null (skip) or add it at prepare; {rule}"
                )
