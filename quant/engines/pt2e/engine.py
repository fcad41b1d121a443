"""``Pt2eEngine``: the ``quant.engines.Engine`` of this package (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantstage.quant.data.outputs import OutputOf
from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.base import Reference, UnusedSkip
from quantstage.quant.engines.pt2e._torchao import pt2e_quiet
from quantstage.quant.engines.pt2e.aoti import (
    PACKAGE_FILE,
    ProgramArtifact,
    load_package,
    save_program,
    ship_package,
    shipped_package,
)
from quantstage.quant.engines.pt2e.convert import Pt2ePrepared, Pt2eReference, degenerate_ranges, prepare, reference
from quantstage.quant.engines.pt2e.coverage import coverage_report
from quantstage.quant.engines.pt2e.package import AotiModule, lower_to_package
from quantstage.quant.engines.pt2e.quantizer import check_spec
from quantstage.quant.engines.pt2e.sensitivity import layer_sensitivity
from quantstage.quant.engines.pt2e.stages import stage
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import ConversionError, SpecError
from quantstage.quant.measure.coverage import CoverageReport
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.ship.shipped import Origin, Shipped
from quantstage.quant.ship.signature import split_signature

__all__ = ["PT2E_ENGINE", "AotiModule", "Pt2eEngine", "Pt2ePrepared", "Pt2eReference"]


def _reference(ref: Reference | nn.Module) -> Pt2eReference:
    if not isinstance(ref, Pt2eReference):
        raise ConversionError(
            f"the PT2E engine lowers the Pt2eReference its reference() made, got {type(ref).__name__}"
        )
    return ref


def _model_name(module: nn.Module) -> str:
    """The float model's class name a PT2E stage works on (as the export recorded it), else the wrapper's."""
    inner = module.model if isinstance(module, OutputOf) else module
    inner = getattr(inner, "reference", inner)  # an AotiModule: the reference it was compiled from
    return str(getattr(inner, "model_name", "") or type(inner).__name__)


def _aoti(lowered: nn.Module, what: str) -> AotiModule:
    if not isinstance(lowered, AotiModule):
        raise ConversionError(
            f"the PT2E engine's {what} takes the AotiModule its lower() made, got {type(lowered).__name__}"
        )
    return lowered


class Pt2eEngine:
    """``quant.engines.Engine`` for torch.export + torchao PT2E + AOTInductor."""

    name = "pt2e"
    supports_submodules = False

    def check(self, spec: QuantSpec) -> None:
        """The object types X86InductorQuantizer can configure, which needs torchao (``Pt2eSpec`` validated the rest)."""
        check_spec(spec)

    def prepare(self, model: nn.Module, example_args: tuple[Any, ...], spec: QuantSpec) -> nn.Module:
        with stage("prepare", type(model).__name__):  # capture failures are TracingErrors already
            return prepare(model, example_args, spec)

    def load_qat(
        self, checkpoint: str | Path, model: nn.Module, example_args: tuple[Any, ...]
    ) -> tuple[nn.Module, QuantSpec]:
        raise SpecError(
            f"QAT checkpoint {str(checkpoint)!r} with engine 'pt2e': quantstage's QAT checkpoints are FX-prepared; "
            f"fix: convert it with engine 'fx'"
        )

    def unused_skips(self, model: nn.Module, prepared: nn.Module, spec: QuantSpec) -> list[UnusedSkip]:
        names = {n for n, _ in model.named_modules()}
        unused = []
        for override in spec.mapping_spec().overrides:
            if override.set == "module_name" and override.qconfig is None and override.key not in names:
                near = sorted(n for n in names if n and (override.key in n or n in override.key))[:3]
                hint = f"; nearest: {', '.join(near)}" if near else ""
                message = f"skip module_name {override.key!r} matches no module of {type(model).__name__}{hint}"
                if spec.strict_skips:
                    raise SpecError(f"{message}; fix: use a path from model.named_modules()")
                unused.append(UnusedSkip("module_name", override.key, message))
        return unused

    def degenerate_ranges(self, prepared: nn.Module) -> list[str]:
        return degenerate_ranges(prepared)

    def reference(self, prepared: nn.Module, spec: QuantSpec) -> Pt2eReference:
        with stage("convert", _model_name(prepared)):
            return reference(prepared, spec)

    def lower(self, reference: Reference, spec: QuantSpec) -> nn.Module:
        ref = _reference(reference)
        with stage("compile", _model_name(ref)):
            return lower_to_package(ref, ref.names, ref.example_args, ref.dynamic_shapes)

    def reference_module(self, reference: Reference) -> nn.Module:
        return _reference(reference)

    def save_reference(
        self, module: nn.Module, path: Path, verify_inputs: Sequence[tuple[Any, ...]]
    ) -> ProgramArtifact:
        """The reference model as an exported program (``torch.export.save``, dynamic batch)."""
        inner = module.model if isinstance(module, OutputOf) else module
        ref = _reference(inner)
        with stage("ship", _model_name(ref)), torch.no_grad(), pt2e_quiet():
            program = torch.export.export(module, ref.example_args, dynamic_shapes=(ref.dynamic_shapes,), strict=False)
        return save_program(program, path.with_suffix(".pt2"), module, verify_inputs)

    def coverage(self, float_model: nn.Module, reference: Reference, lowered: nn.Module) -> CoverageReport:
        ref = _reference(reference)
        spec = ref.spec
        overrides = spec.mapping_spec().overrides
        with stage("convert", _model_name(ref)):
            return coverage_report(
                float_model,
                ref.exported,
                form="dynamic int8" if spec.mode == "dynamic" else "static int8",
                skip_names=[o.key for o in overrides if o.set == "module_name" and o.qconfig is None],
                skip_types=[o.key for o in overrides if o.set == "object_type" and o.qconfig is None],
            )

    def sensitivity(
        self, prepared: nn.Module, lowered: nn.Module, batches: Sequence[Batch], max_batches: int
    ) -> list[LayerSensitivity]:
        if not isinstance(prepared, Pt2ePrepared):
            raise ConversionError(f"the PT2E engine's sensitivity takes a Pt2ePrepared, got {type(prepared).__name__}")
        aoti = _aoti(lowered, "sensitivity")
        reference = aoti.reference
        if not isinstance(reference, Pt2eReference):
            raise ConversionError("the lowered PT2E model lost its reference model")
        return layer_sensitivity(prepared, reference, batches, max_batches=max_batches)

    def weight_only(self, module: nn.Module) -> nn.Module | None:
        return None

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
        """The lowered package, copied into ``folder``, loaded back and verified (no fallback form: ``origin`` is
        not needed). A model served through an output key (``OutputOf``) is compiled again with the key applied,
        so the package returns the tensor users compare."""
        lowered, _ = split_signature(served)  # the package takes forward's names as keywords already
        with stage("ship", _model_name(lowered)):
            if isinstance(lowered, OutputOf):
                inner = _aoti(lowered.model, "ship")
                lowered = lower_to_package(
                    OutputOf(inner.reference, lowered.key), inner.names, inner.example_args, inner.dynamic_shapes
                )
            aoti = _aoti(lowered, "ship")
            artifact = ship_package(
                aoti.path, folder / PACKAGE_FILE, aoti, verify_inputs, tolerance=tolerance, compile_s=aoti.compile_s
            )
        return shipped_package(artifact)

    def load(self, folder: Path) -> nn.Module:
        return load_package(folder)


PT2E_ENGINE = Pt2eEngine()
