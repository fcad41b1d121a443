"""Quantization coverage: which weighted layers of a converted model run quantized, and why not.

``coverage_report(float_model, reference, quantized)`` walks the lowered graph and records
one ``CoverageEntry`` per weighted layer: every ``call_module`` node whose module has
parameters, packed weights or a (quantized) ``weight`` tensor, or is a known quantizable op
(Linear, Conv*, ConvTranspose*, LSTM, GRU, RNN cells, Embedding(Bag), BatchNorm, LayerNorm,
PReLU, ... in their float, fused, quantized, dynamic and reference forms), and every
``call_function`` node of a weighted functional (``F.linear``, ``F.conv*``,
``F.conv_transpose*``) or of a quantized weighted op (``torch.ops.quantized.linear*`` /
``conv*``). Standalone modules (converted to nested GraphModules) are walked too, their
layers named under the standalone module's path. A module called more than once is one
entry. ``params`` counts the float model's parameters of the layer's own module (a
BatchNorm folded into a fused conv is not added to it).

A module is *quantized* when its class is defined under ``torch.ao.nn.quantized`` (static,
``.dynamic`` int8 and float16, weight-only embeddings) or ``torch.ao.nn.intrinsic.quantized``
(incl. ``.dynamic``), or carries packed weights (``_packed_params``, custom quantized
modules). Reference modules (``torch.ao.nn.quantized.reference``, also inside a float fused
module such as ``nni.LinearReLU``) count as quantized with reason "reference (not lowered to
a native op)": the weights are quantized but the lowered model did not get a native kernel;
so does a functional whose weight is ``dequantize(quantize_per_*(w))`` (a reference
functional pattern the lowering did not match). ``torch.ao.nn.quantizable`` (observed
custom LSTM/MHA) and ``torch.ao.nn.qat`` / ``torch.ao.nn.intrinsic.qat`` modules left in a
converted graph are float.

Why a layer stayed float, from the prepared graph's qconfig of the node
(``reference.node_name_to_qconfig``; lowering keeps node names, and a module node is also
found by its target through ``reference.node_name_to_scope``):

* ``skipped by config (qconfig None)`` — the qconfig mapping set it to ``None``;
* ``not supported by backend_config (qconfig set)`` — it had a qconfig, but the
  BackendConfig has no pattern/dtype config for it (Conv in dynamic mode, LSTM in static
  mode, a custom module class, ...);
* ``left float by the backend's rules (no qconfig recorded)`` — no qconfig is known for the
  node (layers inside standalone modules, nodes created at convert).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node

from quantstage.quant.engines.fx.convert import ReferenceModel
from quantstage.quant.measure.coverage import (
    FLOAT,
    QUANTIZED,
    REASON_BACKEND,
    REASON_REFERENCE,
    REASON_SKIPPED,
    REASON_UNSUPPORTED,
    CoverageEntry,
    CoverageReport,
)

__all__ = ["coverage_report"]

_QUANTIZED_PREFIXES = (
    "torch.ao.nn.quantized",
    "torch.ao.nn.intrinsic.quantized",
    "torch.nn.quantized",  # legacy aliases
    "torch.nn.intrinsic.quantized",
)
_REFERENCE_PREFIXES = ("torch.ao.nn.quantized.reference", "torch.nn.quantized._reference")

# Class names of quantizable weighted ops in any of their forms (float, fused intrinsic, QAT,
# reference, quantized, dynamic); modules with parameters are counted whatever their class.
_KNOWN_OPS = frozenset(
    {
        "Linear",
        "Bilinear",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
        "LSTM",
        "GRU",
        "RNN",
        "LSTMCell",
        "GRUCell",
        "RNNCell",
        "Embedding",
        "EmbeddingBag",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "MultiheadAttention",
        "LinearReLU",
        "LinearBn1d",
        "LinearLeakyReLU",
        "LinearTanh",
        "ConvReLU1d",
        "ConvReLU2d",
        "ConvReLU3d",
        "PReLU",
        "ConvBn1d",
        "ConvBn2d",
        "ConvBn3d",
        "ConvBnReLU1d",
        "ConvBnReLU2d",
        "ConvBnReLU3d",
        "ConvAdd2d",
        "ConvAddReLU2d",
        "BNReLU2d",
        "BNReLU3d",
    }
)
_WEIGHTED_FUNCTIONALS = {
    F.linear: "F.linear",
    F.conv1d: "F.conv1d",
    F.conv2d: "F.conv2d",
    F.conv3d: "F.conv3d",
    F.conv_transpose1d: "F.conv_transpose1d",
    F.conv_transpose2d: "F.conv_transpose2d",
    F.conv_transpose3d: "F.conv_transpose3d",
}
_QUANTIZED_OP_STEMS = ("linear", "conv")  # quantized::linear*, quantized::conv* (not add, cat, ...)


# --------------------------------------------------------------------------- classification


def _weight_dtype(module: nn.Module) -> Any:
    packed = getattr(module, "_packed_params", None)
    return getattr(packed, "dtype", None) or getattr(module, "dtype", None)


def _torch_class(cls: type) -> type:
    """``cls``, or the torch quantized class it specialises (quantstage's 8-bit dynamic Linear)."""
    if cls.__module__.startswith("torch."):
        return cls
    return next((c for c in cls.__mro__ if c.__module__.startswith(_QUANTIZED_PREFIXES)), cls)


def _quantized_form(module: nn.Module) -> str | None:
    """How ``module`` is quantized (``static int8``, ...), or None when it computes in float."""
    cls = _torch_class(type(module))
    where = cls.__module__
    if where.startswith(_REFERENCE_PREFIXES):
        return REASON_REFERENCE
    if where.startswith(_QUANTIZED_PREFIXES):
        dtype = _weight_dtype(module)
        if ".dynamic" in where:
            return "dynamic float16" if dtype == torch.float16 else "dynamic int8"
        if cls.__name__ in ("Embedding", "EmbeddingBag"):
            return "weight-only int4" if dtype == torch.quint4x2 else "weight-only int8"
        return "static int8"
    if where.startswith("torch.ao.nn.intrinsic.modules") and isinstance(module, nn.Sequential):
        # a float fused module holding a reference module: the reference form of LinearReLU etc.
        first = next(iter(module.children()), None)
        if first is not None and type(first).__module__.startswith(_REFERENCE_PREFIXES):
            return REASON_REFERENCE
        return None
    if where.startswith("torch."):
        return None
    if hasattr(module, "_packed_params"):  # a custom quantized module (convert_custom)
        return "quantized (custom module)"
    return None


def _is_weighted(module: nn.Module) -> bool:
    if type(module).__name__ in _KNOWN_OPS or hasattr(module, "_packed_params"):
        return True
    # quantized modules keep quantized weights as plain tensor attributes (nnq.PReLU)
    if isinstance(getattr(module, "weight", None), torch.Tensor):
        return True
    return next(iter(module.parameters()), None) is not None


def _functional_name(target: Any) -> str | None:
    """``F.linear`` etc. for a weighted float functional, None for any other target."""
    try:
        return _WEIGHTED_FUNCTIONALS.get(target)
    except TypeError:  # an unhashable callable
        return None


def _op_name(target: Any) -> str:
    if (functional := _functional_name(target)) is not None:
        return functional
    return str(target) if _is_quantized_op(target) else getattr(target, "__name__", str(target))


def _is_quantized_op(target: Any) -> bool:
    is_op = isinstance(target, (torch._ops.OpOverloadPacket, torch._ops.OpOverload))
    return is_op and str(target).startswith("quantized.")


def _quantized_op_form(target: Any) -> str | None:
    """``static int8`` etc. for a weighted quantized op, None for any other target."""
    if not _is_quantized_op(target):
        return None
    op = str(target).removeprefix("quantized.").split(".")[0]
    if not op.startswith(_QUANTIZED_OP_STEMS) or "prepack" in op or "unpack" in op:
        return None
    if "dynamic" in op:
        return "dynamic float16" if "fp16" in op else "dynamic int8"
    return "static int8"


# --------------------------------------------------------------------------- lookups


def _attr(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _module_params(float_model: nn.Module, path: str) -> int:
    module = _attr(float_model, path)
    if not isinstance(module, nn.Module):
        return 0
    return sum(p.numel() for p in module.parameters())


def _source_numel(node: Any, root: nn.Module, prefix: str) -> int:
    """Elements of the float-model tensor a weight/bias argument reads: walks back through
    quantize/dequantize (first argument) to the ``get_attr`` and looks ``prefix + target`` up
    in ``root``; 0 when it is not a float-model tensor (packed weights, constants, None)."""
    for _ in range(16):
        if not isinstance(node, Node):
            return 0
        if node.op == "get_attr":
            tensor = _attr(root, prefix + str(node.target))
            return tensor.numel() if isinstance(tensor, torch.Tensor) else 0
        if node.op not in ("call_function", "call_method", "call_module") or not node.args:
            return 0
        node = node.args[0]
    return 0


def _functional_params(node: Node, reference: GraphModule | None, float_model: nn.Module, prefix: str) -> int:
    """Weight + bias elements of a functional layer, read on the same-named reference node
    (the lowered node's weight is packed); ``reference`` None: read on ``node`` itself."""
    source = node
    if reference is not None:
        source = next((n for n in reference.graph.nodes if n.name == node.name), node)
    if _functional_name(source.target) is None:
        return 0
    weight = source.args[1] if len(source.args) > 1 else source.kwargs.get("weight")
    bias = source.args[2] if len(source.args) > 2 else source.kwargs.get("bias")
    return _source_numel(weight, float_model, prefix) + _source_numel(bias, float_model, prefix)


def _reads_dequantized_weight(node: Node) -> bool:
    """A reference functional: its weight is ``dequantize(quantize_per_*(w))``, not lowered."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    return isinstance(weight, Node) and (
        (weight.op == "call_method" and weight.target == "dequantize")
        or (weight.op == "call_function" and weight.target is torch.dequantize)
    )


class _Qconfigs:
    """The prepared graph's qconfig of a lowered node: by node name, or a module node's target."""

    def __init__(self, reference: ReferenceModel) -> None:
        self.by_name = reference.node_name_to_qconfig
        self.by_path: dict[str, list[str]] = {}
        for name, (path, _type) in reference.node_name_to_scope.items():
            self.by_path.setdefault(path, []).append(name)

    def lookup(self, node: Node) -> tuple[bool, Any]:
        """(found, qconfig)."""
        if node.name in self.by_name:
            return True, self.by_name[node.name]
        if node.op == "call_module":
            target = str(node.target)
            # call_module node names are the target with dots as underscores (plus _1, ... for
            # repeated calls); the scope of a call_module node is its own path.
            for name in [target.replace(".", "_"), *self.by_path.get(target, [])]:
                if name in self.by_name:
                    return True, self.by_name[name]
        return False, None


def _float_reason(found: bool, qconfig: Any) -> str:
    if not found:
        return REASON_BACKEND
    return REASON_SKIPPED if qconfig is None else REASON_UNSUPPORTED


def _walk(
    graph_module: GraphModule, prefix: str, qconfigs: _Qconfigs | None, inherited: tuple[bool, Any]
) -> Iterator[tuple[str, str, Node, nn.Module | None, tuple[bool, Any]]]:
    """(name, prefix, node, module or None, (found, qconfig)) of every candidate node,
    recursing into standalone modules (nested GraphModules) with ``prefix`` their path."""
    modules = dict(graph_module.named_modules(remove_duplicate=False))
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if module is None:
                continue
            path = prefix + str(node.target)
            lookup = qconfigs.lookup(node) if qconfigs is not None else inherited
            if isinstance(module, GraphModule):  # a converted standalone module
                found, qconfig = lookup
                # inside, only a skip of the whole standalone module is known
                skipped = found and qconfig is None
                yield from _walk(module, path + ".", None, (True, None) if skipped else (False, None))
                continue
            yield path, prefix, node, module, lookup
        elif node.op == "call_function":
            if _functional_name(node.target) is not None or _quantized_op_form(node.target) is not None:
                lookup = qconfigs.lookup(node) if qconfigs is not None else inherited
                yield prefix + node.name, prefix, node, None, lookup


def coverage_report(float_model: nn.Module, reference: ReferenceModel, quantized: GraphModule) -> CoverageReport:
    """Which weighted layers of ``quantized`` (the lowered model) are quantized, and why not.

    ``float_model`` is the model given to ``prepare`` (for parameter counts, looked up by
    module path / attribute path), ``reference`` the ``reference_convert`` result the
    ``quantized`` model was lowered from (for the prepared graph's qconfigs). See the module
    docstring for the quantized criterion and the reasons.
    """
    entries: list[CoverageEntry] = []
    seen: set[str] = set()
    qconfigs = _Qconfigs(reference)
    for name, prefix, node, module, (found, qconfig) in _walk(quantized, "", qconfigs, (False, None)):
        if name in seen:  # a module called more than once is one layer
            continue
        if module is not None:
            if not _is_weighted(module):
                continue
            form = _quantized_form(module)
            op = type(module).__name__
            params = _module_params(float_model, name)
        else:
            form = _quantized_op_form(node.target)
            if form is None and _reads_dequantized_weight(node):
                form = REASON_REFERENCE
            op = _op_name(node.target)
            top_level = reference.graph_module if not prefix else None
            params = _functional_params(node, top_level, float_model, prefix)
        seen.add(name)
        if form is not None:
            entries.append(CoverageEntry(name, op, QUANTIZED, form, params))
        else:
            entries.append(CoverageEntry(name, op, FLOAT, _float_reason(found, qconfig), params))
    return CoverageReport(tuple(entries))
