"""Shipping a quantized model: verified TorchScript, the fastest correct form, rebuild bundles."""

from quantstage.quant.ship.rebuild import rebuild, save_bundle
from quantstage.quant.ship.torchscript import TorchScriptArtifact, export_torchscript, load_torchscript, to_torchscript
from quantstage.quant.ship.variants import VariantResult, select_variant, torchscript_forms

__all__ = [
    "TorchScriptArtifact",
    "VariantResult",
    "export_torchscript",
    "load_torchscript",
    "rebuild",
    "save_bundle",
    "select_variant",
    "to_torchscript",
    "torchscript_forms",
]
