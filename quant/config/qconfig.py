"""QConfigMapping as data: a preset plus ordered overrides.

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

A ``qconfig`` is a named preset (``QConfigName``) or ``null``, which skips quantization. The
torch objects are built from this data by the engine (``quant.engines.fx.configs``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantstage.quant.config.dotted import resolve_dotted
from quantstage.quant.hardware import default_reduce_range, dynamic_bits

__all__ = ["DynamicSpec", "MappingPreset", "ObserverSpec", "QConfigMappingSpec", "QConfigName", "QConfigOverride"]

QConfigName = Literal[
    "default",
    "qat",
    "per_tensor",
    "dynamic",
    "per_channel_dynamic",
    "float16_dynamic",
    "float16_static",
    "weight_only",
]
MappingPreset = Literal["static", "qat", "dynamic", "float16", "none"]
SetKind = Literal["global", "object_type", "module_name", "module_name_regex", "module_name_object_type_order"]


class ObserverSpec(BaseModel):
    """Which observers calibrate static int8: replaces the preset's default qconfig everywhere it is used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    activation: Literal["minmax", "moving_average", "histogram"] = Field(
        default="histogram",
        description="Activation observer: min/max, moving-average min/max, or histogram (MSE search).",
    )
    weight: Literal["per_channel", "per_tensor"] = Field(
        default="per_channel", description="Weight observer: per-output-channel or per-tensor symmetric int8."
    )
    reduce_range: bool | None = Field(
        default=None,
        description="7-bit activations. Default (null): x86/fbgemm use 7 bits only on a CPU without an int8 "
        "dot-product ISA (VNNI/AMX), whose kernels saturate in int16; otherwise 8 bits (qnnpack/onednn: always 8).",
    )


class DynamicSpec(BaseModel):
    """How the dynamic preset quantizes Linear layers: int8 weights, activations quantized on the fly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: Literal["per_channel", "per_tensor"] = Field(
        default="per_channel",
        description="Linear weights per output channel (transformers need it: all-MiniLM-L6-v2's pooled cosine "
        "0.974 vs 0.942 per-tensor) or per tensor (torch's default_dynamic_qconfig). LSTM/GRU/RNN cells stay "
        "per tensor.",
    )
    activation_bits: Literal[7, 8] | None = Field(
        default=None,
        description="Bits of the activations quantized on the fly. Default (null): 8 (torch's lowered dynamic "
        "Linear uses 7 on x86/fbgemm whatever the qconfig says; MiniLM pooled cosine min 0.916 -> 0.972).",
    )
    weight_bits: Literal[7, 8] | None = Field(
        default=None,
        description="Bits of the weights. Default (null): 8 on a CPU with VNNI/AMX or with 7-bit activations; 7 "
        "with 8-bit activations on a CPU without them (fbgemm adds u8*s8 pairs in int16 there: 2*255*64 fits, "
        "2*255*128 saturates).",
    )


class QConfigOverride(BaseModel):
    """One QConfigMapping setter call: ``set_<set>(key[, object_type, index], qconfig)``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    set: SetKind = Field(description="Which QConfigMapping setter this entry calls.")
    key: str = Field(
        default="",
        description="object_type: dotted path of a module class, function or op; module_name(_regex): "
        "module path or regex; module_name_object_type_order: the module path. Unused for global.",
    )
    object_type: str | None = Field(
        default=None, description="module_name_object_type_order only: dotted type/function."
    )
    index: int | None = Field(default=None, ge=0, description="module_name_object_type_order only: call order index.")
    qconfig: QConfigName | None = Field(description="Named qconfig preset, or null to skip quantizing.")

    @model_validator(mode="after")
    def _check_shape(self) -> QConfigOverride:
        if self.set == "object_type":
            if not self.key:
                raise ValueError("an object_type override needs key: a dotted path such as 'torch.nn.Linear'")
            resolve_dotted(self.key)
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
            resolve_dotted(self.object_type)
        elif self.set == "global" and self.key:
            raise ValueError(f"a global override takes no key (got {self.key!r})")
        if self.set != "module_name_object_type_order" and (self.object_type is not None or self.index is not None):
            raise ValueError("object_type and index belong only to module_name_object_type_order overrides")
        return self

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
        default="static",
        description="Starting mapping: static = get_default_qconfig_mapping(backend), qat = "
        "get_default_qat_qconfig_mapping(backend), dynamic = global dynamic int8, float16 = "
        "global float16 dynamic (weight-only fp16), none = empty.",
    )
    overrides: tuple[QConfigOverride, ...] = Field(default=(), description="Setter calls applied in order.")
    observers: ObserverSpec | None = Field(
        default=None,
        description="static preset only: calibrate with these observers instead of the backend's defaults "
        "(torch keeps its fixed-qparams qconfigs for sigmoid/tanh/softmax...).",
    )
    dynamic: DynamicSpec | None = Field(
        default=None,
        description="dynamic preset only: weight granularity and bits (default: per-channel weights, 8-bit "
        "activations, weight bits by CPU; {weight: per_tensor, activation_bits: 7} is torch's own default).",
    )

    @model_validator(mode="after")
    def _settings_match_the_preset(self) -> QConfigMappingSpec:
        if self.observers is not None and self.preset != "static":
            raise ValueError(f"observers apply to the static preset, not {self.preset!r}")
        if self.dynamic is not None and self.preset != "dynamic":
            raise ValueError(f"dynamic settings apply to the dynamic preset, not {self.preset!r}")
        return self

    def effective_dynamic(self, backend: str) -> tuple[str, int, int, str]:
        """``(weight granularity, activation bits, weight bits, why)`` of the dynamic preset on this CPU."""
        dynamic = self.dynamic or DynamicSpec()
        activation, weight, why = dynamic_bits(backend, dynamic.activation_bits, dynamic.weight_bits)
        return dynamic.weight, activation, weight, why

    def effective_reduce_range(self, backend: str) -> tuple[bool, str]:
        """Whether static activations are observed in 7 bits, and why (spec or this CPU)."""
        if self.observers is not None and self.observers.reduce_range is not None:
            return self.observers.reduce_range, "set in the spec (observers.reduce_range)"
        return default_reduce_range(backend)
