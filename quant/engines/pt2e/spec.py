"""``Pt2eSpec``: a spec for the PT2E engine — the shared fields, as X86InductorQuantizer can honour them.

The fields mean the same as for FX where PT2E has the same notion (see ``quantizer``). What only FX
understands is refused here, on validation, with the field named: ``backend_config``, custom
module configs, the convert-time mapping, ``keep_original_weights``, ``remove_qconfig``,
``float_global_pool`` (a value other than FX's default; the default is accepted and dropped, so
specs written for FX load with ``engine: pt2e``), regex or call-order overrides, float16, QAT,
the submodule path, shipping the reference model. Whether X86InductorQuantizer can configure an
object type needs torchao: that is the engine's ``check`` (``quantizer.check_spec``). This module
imports no torchao.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from quantstage.quant.config.qconfig import QConfigOverride
from quantstage.quant.config.spec import SpecBase

__all__ = ["FX_ONLY", "Pt2eSpec", "refusal"]

_FIX = "fix: remove it, or use engine 'fx'"
_STATIC_QCONFIGS = {"default"}
_DYNAMIC_QCONFIGS = {"dynamic", "per_channel_dynamic"}

# field -> (the value that means "not used", why PT2E has no such setting)
FX_ONLY: dict[str, tuple[Any, str]] = {
    "backend_config": ("native", "X86InductorQuantizer decides the patterns"),
    "prepare_custom": ({}, "an FX prepare config"),
    "convert_custom": ({}, "an FX convert config"),
    "convert_qconfig_mapping": (None, "convert_pt2e takes no mapping: skip at prepare"),
    "keep_original_weights": (False, ""),
    "remove_qconfig": (True, ""),
    "float_global_pool": (True, "an FX pooling rule"),
}


def refusal(field: str, value: Any, why: str = "") -> str:
    """The one-line message for a field the PT2E engine cannot honour."""
    detail = f" ({why})" if why else ""
    return f"{field} = {value!r} has no meaning for engine 'pt2e'{detail}; {_FIX}"


def _unused(value: Any, neutral: Any) -> Any:
    """None when ``value`` means "not used" (``neutral``), else what to show of it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(neutral, dict):
        shown = {k: v for k, v in value.items() if v} if isinstance(value, dict) else value
        return None if shown == {} else shown
    if neutral is None:
        return None if value is None else "set"
    return None if value == neutral else value


class Pt2eSpec(SpecBase):
    """How to quantize one model with the PT2E engine (torch.export + X86InductorQuantizer + AOTInductor)."""

    engine: Literal["pt2e"] = Field(
        default="pt2e",
        description="Quantization engine: pt2e (torch.export + torchao's prepare_pt2e/convert_pt2e with "
        "X86InductorQuantizer, lowered by Inductor; ships an AOTInductor package; needs torchao, the pt2e extra).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fx_settings(cls, data: Any) -> Any:
        """FX-only fields at their FX default are dropped (a spec written for FX); any other value is refused."""
        if not isinstance(data, dict):
            return data
        for field, (neutral, why) in FX_ONLY.items():
            if field in data and (shown := _unused(data[field], neutral)) is not None:
                raise ValueError(refusal(field, shown, why))
        return {k: v for k, v in data.items() if k not in FX_ONLY}

    @model_validator(mode="after")
    def _honoured_by_x86_inductor_quantizer(self) -> Pt2eSpec:
        if self.backend != "x86":
            raise ValueError(
                f"backend {self.backend!r} with engine 'pt2e': its quantizer is X86InductorQuantizer (oneDNN int8 "
                f"kernels through Inductor); allowed: x86; fix: backend x86, or engine 'fx' for {self.backend}"
            )
        if self.mode not in ("static", "dynamic"):
            why = (
                "QAT checkpoints are FX-prepared" if self.mode == "qat" else "X86InductorQuantizer has no float16 mode"
            )
            raise ValueError(
                f"mode {self.mode!r} with engine 'pt2e': {why}; allowed: static, dynamic; fix: engine 'fx'"
            )
        if self.tracing == "submodules":
            raise ValueError(
                refusal("tracing", self.tracing, "a model is exported whole by torch.export; auto or whole")
            )
        if self.target != "native":
            raise ValueError(
                refusal(
                    "target", self.target, "the reference exported program is logged on every run (reference/*.pt2)"
                )
            )
        self._check_mapping()
        return self

    def _check_mapping(self) -> None:
        mapping = self.mapping_spec()
        if mapping.dynamic is not None:
            if mapping.dynamic.weight != "per_channel":
                raise ValueError(
                    refusal(
                        "qconfig_mapping.dynamic.weight", mapping.dynamic.weight, "PT2E dynamic weights are per channel"
                    )
                )
            if mapping.dynamic.weight_bits not in (None, 8):
                raise ValueError(
                    refusal("qconfig_mapping.dynamic.weight_bits", mapping.dynamic.weight_bits, "int8 weights")
                )
        for override in mapping.overrides:
            self._check_override(override)

    def _check_override(self, override: QConfigOverride) -> None:
        where = f"qconfig_mapping override {override.describe()}"
        if override.set in ("module_name_regex", "module_name_object_type_order"):
            raise ValueError(
                f"{where}: X86InductorQuantizer has no {override.set} setter; allowed with engine 'pt2e': global, "
                f"object_type, module_name; fix: list the module names, or use engine 'fx'"
            )
        allowed = _DYNAMIC_QCONFIGS if self.mode == "dynamic" else _STATIC_QCONFIGS
        if override.qconfig is not None and override.qconfig not in allowed:
            raise ValueError(
                f"{where}: qconfig {override.qconfig!r} has no PT2E form in mode {self.mode!r}; allowed: "
                f"{', '.join(sorted(allowed))} or null (keep float); fix: change it, or use engine 'fx'"
            )

    @property
    def kernels(self) -> str:
        """Inductor's oneDNN int8 kernels, whatever the backend (see ``quant.hardware``)."""
        return "pt2e"
