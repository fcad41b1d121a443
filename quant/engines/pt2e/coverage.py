"""Which weighted layers of a PT2E reference model run quantized, and why the others stay float.

A convolution or linear op is quantized when both its input and its weight come from a
``quantized_decomposed.dequantize_*`` node: that is the pattern Inductor fuses into a oneDNN
int8 kernel. Layer names are module paths from the export's ``nn_module_stack``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from quantstage.quant.engines.pt2e._torchao import torchao
from quantstage.quant.measure.coverage import FLOAT, QUANTIZED, REASON_SKIPPED, CoverageEntry, CoverageReport

__all__ = ["coverage_report", "layer_nodes", "layer_ops", "module_path"]

REASON_NOT_ANNOTATED = "left float by X86InductorQuantizer (no pattern for it)"
REASON_DYNAMIC_CONV = "dynamic mode quantizes linear layers only (convolutions need mode static)"


def layer_ops() -> set[Any]:
    """The aten ops of weighted layers (convolutions, linear)."""
    aten = torch.ops.aten
    return {
        aten.conv1d.default,
        aten.conv2d.default,
        aten.conv3d.default,
        aten.conv_transpose1d.default,
        aten.conv_transpose2d.input,
        aten.conv_transpose3d.input,
        aten.linear.default,
    }


def _ops() -> tuple[set[Any], set[Any]]:
    torchao()  # registers the quantized_decomposed ops

    q = torch.ops.quantized_decomposed
    dequantize = {q.dequantize_per_tensor.default, q.dequantize_per_tensor.tensor, q.dequantize_per_channel.default}
    return layer_ops(), dequantize


def module_path(node: torch.fx.Node) -> tuple[str, str]:
    """``(module path, class name)`` of the module a node was traced in (``("", "")`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    path = re.sub(r"(@\d+)+$", "", str(path))  # capture.distinct_calls' call suffix
    for prefix in ("L['self'].", "L__self__."):
        path = path.removeprefix(prefix)
    cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].strip("'>")
    return path, cls_name


def layer_nodes(graph: nn.Module) -> list[tuple[torch.fx.Node, bool]]:
    """Every conv/linear node of a converted graph and whether it runs quantized."""
    layers, dequantize = _ops()
    found = []
    for node in graph.graph.nodes:  # type: ignore[union-attr]
        if node.op == "call_function" and node.target in layers:
            quantized = all(isinstance(a, torch.fx.Node) and a.target in dequantize for a in node.args[:2])
            found.append((node, quantized))
    return found


def _skipped(name: str, cls: str, skip_names: Iterable[str], skip_types: Iterable[str]) -> bool:
    if any(name == s or name.startswith(s + ".") for s in skip_names):
        return True
    return any(t.rsplit(".", 1)[-1] == cls for t in skip_types)


def coverage_report(
    float_model: nn.Module,
    graph: nn.Module,
    *,
    form: str,
    skip_names: Iterable[str] = (),
    skip_types: Iterable[str] = (),
) -> CoverageReport:
    """One entry per conv/linear of ``graph`` (a converted PT2E model); ``form`` names the quantized form
    (``static int8`` / ``dynamic int8``)."""
    modules = dict(float_model.named_modules())
    entries = []
    seen: dict[str, int] = {}
    for node, quantized in layer_nodes(graph):
        name, cls = module_path(node)
        module = modules.get(name)
        label = name or node.name
        count = seen.get(label, 0)
        seen[label] = count + 1
        params = sum(p.numel() for p in module.parameters(recurse=False)) if module is not None and count == 0 else 0
        if quantized:
            status, reason = QUANTIZED, form
        else:
            skipped = _skipped(name, cls, skip_names, skip_types)
            conv = node.target is not torch.ops.aten.linear.default
            unannotated = REASON_DYNAMIC_CONV if conv and form.startswith("dynamic") else REASON_NOT_ANNOTATED
            status, reason = FLOAT, REASON_SKIPPED if skipped else unannotated
        op = cls if module is not None else str(node.target).split(".")[1]
        entries.append(CoverageEntry(label if count == 0 else f"{label}#{count}", op, status, reason, params))
    return CoverageReport(tuple(entries))
