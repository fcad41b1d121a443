"""PT2E steps: prepare (export + ``prepare_pt2e``), reference (``convert_pt2e``), and the observers' ranges.

``Pt2ePrepared`` and ``Pt2eReference`` wrap the exported graphs so they are called like the float
model (keyword arguments bound by name) and carry what the next step needs: the float exported
graph (the numeric debugger compares against it), the example the export used and its dynamic
shapes (the lowering re-exports the converted graph with them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.engines.pt2e._torchao import pt2e_quiet, torchao
from quantstage.quant.engines.pt2e.capture import (
    Bound,
    distinct_calls,
    export_program,
    forward_names,
    working_copy,
)
from quantstage.quant.engines.pt2e.quantizer import build_quantizer
from quantstage.quant.engines.pt2e.stages import stage
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import ConversionError

__all__ = ["Pt2ePrepared", "Pt2eReference", "degenerate_ranges", "prepare", "reference"]


class _Graph(Bound):
    """An exported graph module called like the float model; ``model_name`` is the float model's class."""

    model_name = ""

    def __init__(
        self,
        graph: nn.Module,
        names: Sequence[str],
        example_args: tuple[Any, ...],
        dynamic_shapes: tuple[Any, ...],
    ) -> None:
        super().__init__(names)
        self.exported = graph
        self.example_args = example_args
        self.dynamic_shapes = dynamic_shapes

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.exported(*self.positional(args, kwargs))


class Pt2ePrepared(_Graph):
    """A ``prepare_pt2e`` model (observers in place) and the float exported graph it came from; a
    failure while calibrating is one line naming the stage."""

    def __init__(
        self,
        graph: nn.Module,
        float_graph: nn.Module,
        names: Sequence[str],
        example_args: tuple[Any, ...],
        dynamic_shapes: tuple[Any, ...],
    ) -> None:
        super().__init__(graph, names, example_args, dynamic_shapes)
        self.float_graph = float_graph

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = self.positional(args, kwargs)
        with stage("calibrate", self.model_name):
            return self.exported(*args)


class Pt2eReference(_Graph):
    """A ``convert_pt2e`` model: quantize/dequantize pairs around float aten ops (the reference model)."""

    def __init__(self, graph: nn.Module, prepared: Pt2ePrepared, spec: QuantSpec) -> None:
        super().__init__(graph, prepared.names, prepared.example_args, prepared.dynamic_shapes)
        self.float_graph = prepared.float_graph
        self.spec = spec
        self.model_name = prepared.model_name

    @property
    def code(self) -> str:
        return str(getattr(self.exported, "code", ""))


def prepare(model: nn.Module, example_args: tuple[Any, ...], spec: QuantSpec) -> Pt2ePrepared:
    """Export ``model`` (dynamic batch) and insert the observers ``spec`` asks for; ``model`` unchanged."""
    api = torchao()
    quantizer = build_quantizer(spec)
    with pt2e_quiet():
        program, args, shapes = export_program(working_copy(model), example_args)
        graph = program.module()
        distinct_calls(graph)
        float_graph = copy.deepcopy(graph)
        prepared = api.prepare_pt2e(graph, quantizer)
        if spec.mode == "dynamic":  # convert_pt2e needs every placeholder observer to have run once
            with torch.no_grad():
                prepared(*args)
    result = Pt2ePrepared(prepared, float_graph, forward_names(model, len(args)), args, shapes)
    result.model_name = type(model).__name__
    return result


def reference(prepared: nn.Module, spec: QuantSpec) -> Pt2eReference:
    """The reference model of a calibrated ``Pt2ePrepared`` (which is not modified)."""
    if not isinstance(prepared, Pt2ePrepared):
        raise ConversionError(
            f"the PT2E engine converts the Pt2ePrepared its prepare made, got {type(prepared).__name__}"
        )
    api = torchao()
    with pt2e_quiet():
        if spec.mode == "dynamic":  # nothing calibrated; convert_pt2e fails on a deep copy of a dynamic graph
            graph = api.prepare_pt2e(copy.deepcopy(prepared.float_graph), build_quantizer(spec))
            with torch.no_grad():
                graph(*prepared.example_args)
        else:
            graph = copy.deepcopy(prepared.exported)
        converted = api.convert_pt2e(graph)
        api.move_exported_model_to_eval(converted)
    return Pt2eReference(converted, prepared, spec)


def degenerate_ranges(prepared: nn.Module) -> list[str]:
    """One message per activation observer that saw no data or no range (a layer that never ran,
    a constant activation)."""
    messages = []
    for name, module in prepared.named_modules():
        low, high = getattr(module, "min_val", None), getattr(module, "max_val", None)
        if not isinstance(low, torch.Tensor) or not isinstance(high, torch.Tensor) or low.numel() != 1:
            continue
        lo, hi = float(low), float(high)
        if math.isinf(lo) or math.isinf(hi):
            messages.append(f"observer {name} saw no data: the layer it watches never ran during calibration")
        elif hi - lo == 0.0:
            messages.append(f"observer {name} saw a constant {lo:g}: its quantization step is degenerate")
    return messages
