"""What an engine is: the one seam between quantstage and a quantization backend of torch.

An engine turns a float model and a ``QuantSpec`` into a prepared (observed) model, a
reference quantized model and a lowered one, and knows what only it can know about them:
which layers ended quantized (coverage), how much each lost (sensitivity), which skips
matched nothing, and how the lowered model ships: ``ship`` saves and verifies one form and says,
as data (``quant.ship.Shipped``, ``quant.ship.ModelForm``), how MLflow logs and serves it; ``load``
opens what it shipped again. ``quant.quantize`` composes the steps and owns the whole/submodules
decision; the tasks log and load any engine's forms without knowing the engine. The FX engine
(``quant.engines.fx``) ships TorchScript (a rebuild bundle when no TorchScript form reproduces the
model); ``quant.engines.pt2e`` (torch.export + torchao PT2E) ships AOTInductor packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.measure.coverage import CoverageReport
from quantstage.quant.measure.sensitivity import LayerSensitivity
from quantstage.quant.ship.shipped import Origin, Shipped

__all__ = ["Engine", "Reference", "ShippedFile", "UnusedSkip"]


@dataclasses.dataclass(frozen=True)
class UnusedSkip:
    """A skip (``qconfig: null`` override) that matches nothing in the traced model.

    ``kind`` is the override's ``set`` (``module_name``, ``module_name_regex``,
    ``object_type``, ``module_name_object_type_order``), ``key`` its key (the module path for
    ``module_name_object_type_order``, whose ``object_type`` and ``index`` are given too),
    ``message`` a one-line explanation with the nearest names that do exist.
    """

    kind: str
    key: str
    message: str
    object_type: str | None = None
    index: int | None = None


class ShippedFile(Protocol):
    """A saved model file that was loaded back and verified (TorchScript, AOTInductor package, exported program)."""

    @property
    def path(self) -> Path: ...

    @property
    def method(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


@runtime_checkable
class Reference(Protocol):
    """A reference quantized model: quantize/dequantize around float ops, not lowered yet."""

    @property
    def code(self) -> str:
        """Its generated Python code (logged for review)."""
        ...


class Engine(Protocol):
    """The steps and measurements a quantization engine provides (see the module docstring)."""

    name: str
    supports_submodules: bool  # whether a model that does not capture whole can be quantized by parts

    def check(self, spec: QuantSpec) -> None:
        """Raise SpecError for what this engine cannot do with ``spec`` (before any work)."""
        ...

    def prepare(self, model: nn.Module, example_args: tuple[Any, ...], spec: QuantSpec) -> nn.Module:
        """A prepared copy of ``model`` (observers in place); TracingError when it cannot be captured."""
        ...

    def load_qat(
        self, checkpoint: str | Path, model: nn.Module, example_args: tuple[Any, ...]
    ) -> tuple[nn.Module, QuantSpec]:
        """The prepared QAT model a checkpoint holds, and the spec that prepared it."""
        ...

    def unused_skips(self, model: nn.Module, prepared: nn.Module, spec: QuantSpec) -> list[UnusedSkip]:
        """Skips of ``spec`` that match nothing in ``prepared`` (SpecError instead with ``strict_skips``)."""
        ...

    def degenerate_ranges(self, prepared: nn.Module) -> list[str]:
        """One message per activation observer whose calibrated range cannot quantize well."""
        ...

    def reference(self, prepared: nn.Module, spec: QuantSpec) -> Reference:
        """The reference quantized model of a calibrated prepared model (``prepared`` unchanged)."""
        ...

    def lower(self, reference: Reference, spec: QuantSpec) -> nn.Module:
        """The model ``spec.target`` asks for: lowered to native ops, or the finalised reference."""
        ...

    def reference_module(self, reference: Reference) -> nn.Module:
        """The reference model as a runnable module (exported for compilers)."""
        ...

    def save_reference(self, module: nn.Module, path: Path, verify_inputs: Sequence[tuple[Any, ...]]) -> ShippedFile:
        """Save the reference model (``reference_module``, maybe wrapped to return one output) for other
        compilers at ``path`` (the engine picks the suffix), loaded back and verified."""
        ...

    def coverage(self, float_model: nn.Module, reference: Reference, lowered: nn.Module) -> CoverageReport:
        """Which weighted layers run quantized in ``lowered``, and why the others stayed float."""
        ...

    def sensitivity(
        self, prepared: nn.Module, lowered: nn.Module, batches: Sequence[Batch], max_batches: int
    ) -> list[LayerSensitivity]:
        """Per-layer weight and activation SQNR on ``(inputs, targets)`` batches, worst first."""
        ...

    def weight_only(self, module: nn.Module) -> nn.Module | None:
        """``module`` quantized weight-only (embeddings outside traced parts), or None if unsupported."""
        ...

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
        """Save in ``folder`` the fastest deployable form that reproduces ``served`` (``quant.ship.served_form``;
        within ``tolerance``; forms timed for at most ``budget_s`` seconds), load it back and verify it. An
        engine with a fallback form ships it when none reproduces the model and ``origin`` says how the model
        was made (the FX engine's rebuild bundle); else ArtifactError."""
        ...

    def load(self, folder: Path) -> nn.Module:
        """The model ``ship`` saved in ``folder``, loaded again; ``folder`` may also be the logged model's folder
        downloaded from MLflow (``ModelForm``: what was logged)."""
        ...
