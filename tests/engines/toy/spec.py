"""``ToySpec``: the shared spec fields, as the toy engine honours them (dynamic int8 Linear layers, skips by
module path); anything else is refused on validation, naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantstage.quant.config.spec import SpecBase

__all__ = ["ToySpec"]


class ToySpec(SpecBase):
    """How to quantize one model with the toy engine: every ``nn.Linear`` to dynamic int8 but ``skip_modules``."""

    engine: Literal["toy"] = Field(
        default="toy",
        description="Quantization engine: toy (dynamic int8 nn.Linear in plain torch, ships TorchScript).",
    )
    mode: Literal["dynamic"] = Field(
        default="dynamic", description="dynamic: int8 weights, activations quantized per tensor on the fly."
    )

    @model_validator(mode="after")
    def _what_the_toy_honours(self) -> ToySpec:
        refused = {
            "qconfig_mapping": self.qconfig_mapping is not None,
            "skip_object_types": bool(self.skip_object_types),
            "target": self.target != "native",
            "tracing": self.tracing == "submodules",
        }
        for field, set_ in refused.items():
            if set_:
                raise ValueError(
                    f"{field} = {getattr(self, field)!r} has no meaning for engine 'toy'; fix: remove it, or use "
                    f"engine 'fx'"
                )
        return self
