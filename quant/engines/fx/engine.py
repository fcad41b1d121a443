"""``FxEngine``: the ``quant.engines.Engine`` of this package (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.fx import GraphModule

from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.base import Reference, UnusedSkip
from quantstage.quant.engines.fx import configs
from quantstage.quant.engines.fx.convert import ReferenceModel, convert, lower, reference_convert
from quantstage.quant.engines.fx.coverage import coverage_report
from quantstage.quant.engines.fx.dynamic import use_eight_bit_activations
from quantstage.quant.engines.fx.embedding import embedding_weight_only
from quantstage.quant.engines.fx.prepare import degenerate_ranges, prepare
from quantstage.quant.engines.fx.qat import load_qat_checkpoint, save_qat_checkpoint
from quantstage.quant.engines.fx.sensitivity import layer_sensitivity
from quantstage.quant.engines.fx.ship import (
    BUNDLE_FOLDER,
    TORCHSCRIPT_FILE,
    load_shipped,
    ship_bundle,
    ship_torchscript,
    shipped_torchscript,
)
from quantstage.quant.engines.fx.skips import check_skips, find_unused_skips
from quantstage.quant.engines.fx.torchscript import TorchScriptArtifact, export_torchscript
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import ArtifactError, ConversionError
from quantstage.quant.measure.coverage import CoverageReport
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.ship.shipped import Origin, Shipped

__all__ = [
    "FX_ENGINE",
    "FxEngine",
    "ReferenceModel",
    "check_skips",
    "convert",
    "coverage_report",
    "degenerate_ranges",
    "find_unused_skips",
    "layer_sensitivity",
    "load_qat_checkpoint",
    "lower",
    "prepare",
    "reference_convert",
    "save_qat_checkpoint",
]


def _graph_module(model: nn.Module, what: str) -> GraphModule:
    if not isinstance(model, GraphModule):
        raise ConversionError(
            f"the FX engine's {what} takes a torch.fx.GraphModule from prepare, got {type(model).__name__}"
        )
    return model


def _reference_model(reference: Reference) -> ReferenceModel:
    if not isinstance(reference, ReferenceModel):
        raise ConversionError(
            f"the FX engine lowers the ReferenceModel its reference() made, got {type(reference).__name__}"
        )
    return reference


class FxEngine:
    """``quant.engines.Engine`` for torch.ao FX graph-mode quantization."""

    name = "fx"
    supports_submodules = True

    def check(self, spec: QuantSpec) -> None:
        """The convert-time mapping rule, which needs torch.ao (``FxSpec`` validated the rest)."""
        configs.check_spec(spec)

    def prepare(self, model: nn.Module, example_args: tuple[Any, ...], spec: QuantSpec) -> nn.Module:
        return prepare(model, example_args, spec)

    def load_qat(
        self, checkpoint: str | Path, model: nn.Module, example_args: tuple[Any, ...]
    ) -> tuple[nn.Module, QuantSpec]:
        return load_qat_checkpoint(checkpoint, model, example_args)

    def unused_skips(self, model: nn.Module, prepared: nn.Module, spec: QuantSpec) -> list[UnusedSkip]:
        return check_skips(model, _graph_module(prepared, "unused_skips"), spec)

    def degenerate_ranges(self, prepared: nn.Module) -> list[str]:
        return degenerate_ranges(_graph_module(prepared, "degenerate_ranges"))

    def reference(self, prepared: nn.Module, spec: QuantSpec) -> ReferenceModel:
        return reference_convert(_graph_module(prepared, "reference"), **configs.reference_convert_kwargs(spec))

    def lower(self, reference: Reference, spec: QuantSpec) -> nn.Module:
        lowered = lower(_reference_model(reference), **configs.lower_kwargs(spec))
        if spec.target == "native" and spec.resolved().get("dynamic.activation_bits") == 8:
            use_eight_bit_activations(lowered)  # torch's lowered dynamic Linear would use 7 (see .dynamic)
        return lowered

    def reference_module(self, reference: Reference) -> nn.Module:
        return lower(_reference_model(reference), target="reference")

    def save_reference(
        self, module: nn.Module, path: Path, verify_inputs: Sequence[tuple[Any, ...]]
    ) -> TorchScriptArtifact:
        return export_torchscript(module, path.with_suffix(".pt"), verify_inputs)

    def coverage(self, float_model: nn.Module, reference: Reference, lowered: nn.Module) -> CoverageReport:
        return coverage_report(float_model, _reference_model(reference), _graph_module(lowered, "coverage"))

    def sensitivity(
        self, prepared: nn.Module, lowered: nn.Module, batches: Sequence[Batch], max_batches: int
    ) -> list[LayerSensitivity]:
        return layer_sensitivity(
            _graph_module(prepared, "sensitivity"),
            _graph_module(lowered, "sensitivity"),
            batches,
            max_batches=max_batches,
        )

    def weight_only(self, module: nn.Module) -> nn.Module | None:
        return embedding_weight_only(module)

    def ship(
        self,
        served: nn.Module,
        folder: Path,
        verify_inputs: Sequence[tuple[Any, ...]],
        *,
        origin: Origin | None = None,
        tolerance: float = 0.0,
        budget_s: float | None = None,
    ) -> Shipped:
        """The fastest TorchScript form (``quant.engines.fx.ship``); a rebuild bundle when none reproduces the
        model and ``origin`` is given."""
        try:
            artifact, variants = ship_torchscript(
                served, folder / TORCHSCRIPT_FILE, verify_inputs, tolerance=tolerance, budget_s=budget_s
            )
        except ArtifactError as exc:
            if origin is None:
                raise
            return ship_bundle(served, folder / BUNDLE_FOLDER, verify_inputs, origin, why=str(exc))
        return shipped_torchscript(artifact, variants)

    def load(self, folder: Path) -> nn.Module:
        return load_shipped(folder)


FX_ENGINE = FxEngine()
