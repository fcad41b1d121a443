"""8-bit dynamic activations for FX-lowered dynamic Linear layers.

torch's lowered dynamic Linear quantizes its activations on the fly in 7 bits on x86/fbgemm
whatever the qconfig says: ``nnqd.Linear.forward`` passes ``reduce_range=True`` to
``quantized::linear_dynamic``, and FX's lowering writes ``reduce_range=True`` into the functional
``linear_dynamic`` calls it generates when a traced root is itself a Linear (the q/k/v
projections of an attention block that does not trace). 7 bits cost transformer encoders their
accuracy: all-MiniLM-L6-v2's mean-pooled sentence embeddings measured cosine 0.974 / 0.916
(mean / worst of 48 sentences) with per-channel weights and 7-bit activations, 0.992 / 0.972
with 8-bit activations.

``use_eight_bit_activations`` swaps each lowered dynamic ``Linear``/``LinearReLU`` for a subclass
whose forward asks for 8 bits (reusing the packed weight) and rewrites the functional calls. On
a CPU without an int8 dot-product instruction (VNNI/AMX) fbgemm multiplies u8 x s8 pairs into
int16 with saturation, so 8-bit activations there are paired with 7-bit weights
(``QuantSpec.resolved``): 2 x 255 x 64 = 32640 fits int16, nothing saturates. The swapped
modules script, trace, freeze and reload bit-exactly in a process that never imports this
module (TorchScript keeps the ``reduce_range=False`` constant, not the class).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn
from torch.fx import GraphModule

__all__ = ["DynamicLinear8", "DynamicLinearReLU8", "use_eight_bit_activations"]


def _from_dynamic(cls: type, module: Any) -> Any:
    """A ``cls`` with ``module``'s shape and packed weight (shared, not copied)."""
    new = cls(module.in_features, module.out_features, dtype=module._packed_params.dtype)
    new._packed_params = module._packed_params
    return new


class DynamicLinear8(nnqd.Linear):
    """A lowered dynamic int8 Linear whose activations are quantized in 8 bits, not 7."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear8"


class DynamicLinearReLU8(nniqd.LinearReLU):
    """A lowered dynamic int8 Linear+ReLU whose activations are quantized in 8 bits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.quantized.linear_relu_dynamic(
            x, self._packed_params._packed_params, reduce_range=False
        )
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinearReLU8"


_SWAPS: dict[type, type] = {nnqd.Linear: DynamicLinear8, nniqd.LinearReLU: DynamicLinearReLU8}
_DYNAMIC_OPS = (
    torch.ops.quantized.linear_dynamic,
    torch.ops.quantized.linear_dynamic.default,
    torch.ops.quantized.linear_relu_dynamic,
    torch.ops.quantized.linear_relu_dynamic.default,
)


def _eight_bit_call(node: torch.fx.Node) -> None:
    if "reduce_range" in node.kwargs:
        node.kwargs = {**node.kwargs, "reduce_range": False}
    else:
        args = list(node.args)
        args[2:3] = [False]  # (input, packed weight, reduce_range)
        node.args = tuple(args)


def use_eight_bit_activations(model: nn.Module) -> int:
    """Make every int8 dynamic Linear of ``model`` (in place) quantize its activations in 8 bits;
    return how many layers changed. Float16 dynamic layers and static layers are left alone."""
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            swap = _SWAPS.get(type(child))
            if swap is not None and child._packed_params.dtype == torch.qint8:
                setattr(parent, name, _from_dynamic(swap, child))
                changed += 1
    for module in list(model.modules()):
        if not isinstance(module, GraphModule):
            continue
        calls = [n for n in module.graph.nodes if n.op == "call_function" and n.target in _DYNAMIC_OPS]
        for node in calls:
            _eight_bit_call(node)
        if calls:
            module.recompile()
            changed += len(calls)
    return changed
