"""Shipping, engine-neutral: what an engine's ``ship`` returns (``Shipped``: the verified form, how MLflow logs
and serves it as a ``ModelForm``, the forms tried as ``VariantResult``), the served model's call signature
(``signature``) and TorchScript helpers (``jit``). Each engine's own forms live in its package
(``quant.engines.fx``: TorchScript and rebuild bundles; ``quant.engines.pt2e``: AOTInductor packages)."""

from quantstage.quant.ship.jit import jit_quiet, max_abs_diff, to_torchscript
from quantstage.quant.ship.shipped import ModelForm, Origin, Shipped, VariantResult
from quantstage.quant.ship.signature import CallSignature, call_signature, served_form, split_signature, with_signature

__all__ = [
    "CallSignature",
    "ModelForm",
    "Origin",
    "Shipped",
    "VariantResult",
    "call_signature",
    "jit_quiet",
    "max_abs_diff",
    "served_form",
    "split_signature",
    "to_torchscript",
    "with_signature",
]
