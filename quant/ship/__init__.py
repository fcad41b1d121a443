"""Shipping a quantized model: verified TorchScript or AOTInductor packages, the fastest correct form, rebuild
bundles."""

from quantstage.quant.ship.aoti import AotiArtifact, load_shipped, ship_package
from quantstage.quant.ship.rebuild import rebuild, save_bundle
from quantstage.quant.ship.torchscript import TorchScriptArtifact, export_torchscript, load_torchscript, to_torchscript
from quantstage.quant.ship.variants import VariantResult, select_variant, torchscript_forms

__all__ = [
    "AotiArtifact",
    "TorchScriptArtifact",
    "VariantResult",
    "export_torchscript",
    "load_shipped",
    "load_torchscript",
    "rebuild",
    "save_bundle",
    "select_variant",
    "ship_package",
    "to_torchscript",
    "torchscript_forms",
]
