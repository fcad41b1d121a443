"""``FxSpec``: a spec for the FX engine — the shared fields plus every ``convert_fx`` argument as data.

``qconfig_mapping``, ``convert_custom_config``, ``_remove_qconfig``, ``backend_config``,
``keep_original_weights`` and the prepare-time configuration they depend on are reachable from
it; ``quant.engines.fx.configs`` builds the torch objects (``QConfigMapping``, ``BackendConfig``,
``PrepareCustomConfig``, ``ConvertCustomConfig``) from it. This module imports no torch.ao: the
convert-time mapping rule, which needs it, is the engine's ``check``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from quantstage.quant.config.dotted import resolve_all, resolve_dotted
from quantstage.quant.config.qconfig import QConfigMappingSpec
from quantstage.quant.config.spec import SpecBase, SpecModel
from quantstage.quant.errors import SpecError

__all__ = ["BACKEND_CONFIG_NAMES", "ConvertCustomSpec", "FxSpec", "PrepareCustomSpec", "QuantType", "fx_spec"]

QuantType = Literal["static", "dynamic", "weight_only"]
BACKEND_CONFIG_NAMES = ("native", "x86", "fbgemm", "qnnpack", "onednn", "executorch", "tensorrt")


class PrepareCustomSpec(SpecModel):
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


class ConvertCustomSpec(SpecModel):
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


class FxSpec(SpecBase):
    """How to quantize one model with the FX engine: backend, mode, and every convert_fx argument as data."""

    engine: Literal["fx"] = Field(
        default="fx",
        description="Quantization engine: fx (torch.ao FX graph mode: prepare_fx, convert_fx decomposed; ships "
        "TorchScript) or pt2e (torch.export + torchao's prepare_pt2e/convert_pt2e with X86InductorQuantizer, "
        "lowered by Inductor; ships an AOTInductor package; needs torchao, the pt2e extra).",
    )
    float_global_pool: bool = Field(
        default=True,
        description="static/qat: run global average pooling (AdaptiveAvgPool to size 1) and the flatten after it in "
        "float, so the pooled features get their own observer: torch's backend configs make pooling share its "
        "input's quantization step, far too coarse for the averaged values (ResNet-18 output SQNR +0.34 dB, as ORT's "
        "QLinearGlobalAveragePool does); costs one dequantize/quantize pair.",
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
    keep_original_weights: bool = Field(
        default=False, description="convert_fx keep_original_weights: keep float weights on lowered modules."
    )
    remove_qconfig: bool = Field(
        default=True, description="convert_fx _remove_qconfig: drop qconfig attributes after convert."
    )

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

    def convert_mapping_spec(self) -> QConfigMappingSpec | None:
        """The convert-time mapping as data (skip shorthands appended), or None (use prepare's)."""
        if self.convert_qconfig_mapping is None:
            return None
        base = self.convert_qconfig_mapping
        return base.model_copy(update={"overrides": (*base.overrides, *self._skip_overrides())})


def fx_spec(spec: SpecBase) -> FxSpec:
    """``spec`` as the ``FxSpec`` the FX engine works from; SpecError for another engine's spec."""
    if not isinstance(spec, FxSpec):
        raise SpecError(
            f"the FX engine takes an FxSpec (engine 'fx'), got a {type(spec).__name__} (engine {spec.engine!r}); "
            f"fix: quantize with the engine the spec names (quant.engines.engine_for(spec))"
        )
    return spec
