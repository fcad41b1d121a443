"""Per-layer sensitivity of a PT2E model with torchao's numeric debugger.

``prepare_for_propagation_comparison`` adds output loggers to the float exported graph and to the
converted one (matched by the nodes' export provenance); both run the same batches and
``compare_results`` gives each node's output SQNR. It is the activation SQNR of each conv/linear
layer with the quantization error propagated from the layers before it (the numeric debugger's
notion); weight SQNR is computed from the dequantized weights the converted graph holds.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.data.inputs import args_of
from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.pt2e._torchao import pt2e_quiet, torchao
from quantstage.quant.engines.pt2e.convert import Pt2ePrepared, Pt2eReference
from quantstage.quant.engines.pt2e.coverage import layer_nodes, layer_ops, module_path
from quantstage.quant.measure.sensitivity import LayerSensitivity

__all__ = ["layer_sensitivity"]

logger = logging.getLogger(__name__)


def _sqnr(ref: torch.Tensor, actual: torch.Tensor) -> float:
    ref, actual = ref.detach().double(), actual.detach().double()
    noise = (ref - actual).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum().clamp_min(1e-30) / noise))


def _weight_sqnr(graph: nn.Module, float_weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Module path -> SQNR of the dequantized weight of each quantized conv/linear against its float weight."""
    out: dict[str, float] = {}
    for node, quantized in layer_nodes(graph):
        if not quantized:
            continue
        dequantize = node.args[1]
        if not isinstance(dequantize, torch.fx.Node) or not dequantize.args:
            continue
        source = dequantize.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "get_attr":
            continue
        int_weight = _attr(graph, str(source.target))
        if int_weight is None:
            continue
        consts = [_const(graph, a) for a in dequantize.args[1:]]
        try:
            deq = dequantize.target(int_weight, *consts, **dequantize.kwargs)  # type: ignore[operator]
        except Exception:
            continue
        float_weight = float_weights.get(module_path(node)[0])
        if float_weight is not None and float_weight.shape == deq.shape:
            out[module_path(node)[0] or node.name] = _sqnr(float_weight, deq)
    return out


def _attr(graph: nn.Module, target: str) -> torch.Tensor | None:
    obj: Any = graph
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _const(graph: nn.Module, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return _attr(graph, str(arg.target))
    return arg


def _observed_weights(graph: nn.Module) -> dict[str, torch.Tensor]:
    """Module path -> the float weight each conv/linear of a prepared graph quantizes (BatchNorm folded in):
    the input of the observer on its weight argument."""
    layers = layer_ops()
    out: dict[str, torch.Tensor] = {}
    for node in graph.graph.nodes:  # type: ignore[union-attr]
        if node.op != "call_function" or node.target not in layers or len(node.args) < 2:
            continue
        observer = node.args[1]
        source = observer.args[0] if isinstance(observer, torch.fx.Node) and observer.args else observer
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            weight = _attr(graph, str(source.target))
            if weight is not None:
                out[module_path(node)[0] or node.name] = weight.detach()
    return out


def _positional(prepared: Pt2ePrepared, inputs: Any) -> tuple[Any, ...]:
    if isinstance(inputs, Mapping):
        return prepared.positional((), dict(inputs))
    return args_of(inputs)


@torch.no_grad()
def layer_sensitivity(
    prepared: Pt2ePrepared,
    reference: Pt2eReference,
    batches: Sequence[Batch],
    *,
    max_batches: int = 4,
) -> list[LayerSensitivity]:
    """Activation (propagated) and weight SQNR per conv/linear layer, worst first. Nothing is modified."""
    api = torchao()
    float_weights = _observed_weights(prepared.exported)
    with pt2e_quiet():
        ref = api.prepare_for_propagation_comparison(copy.deepcopy(prepared.float_graph))
        actual = api.prepare_for_propagation_comparison(copy.deepcopy(reference.exported))
    for inputs, _ in batches[:max_batches]:
        args = _positional(prepared, inputs)
        ref(*args)
        actual(*args)
    comparison = api.compare_results(api.extract_results_from_loggers(ref), api.extract_results_from_loggers(actual))
    layers = {node.name: (module_path(node), quantized) for node, quantized in layer_nodes(reference.exported)}
    weights = _weight_sqnr(reference.exported, float_weights)
    activations: dict[str, tuple[str, list[float]]] = {}
    for summary in comparison.values():
        found = layers.get(summary.actual_node_name)
        if found is None:
            continue
        (path, cls), _ = found
        values = [float(r.sqnr) for r in summary.results]
        activations.setdefault(path or summary.actual_node_name, (cls, []))[1].extend(values)
    out = [
        LayerSensitivity(
            name=name,
            op=cls,
            weight_sqnr_db=weights.get(name),
            activation_sqnr_db=sum(values) / len(values) if values else None,
        )
        for name, (cls, values) in activations.items()
    ]
    out.sort(key=lambda layer: layer.score)
    logger.info("sensitivity of %d layers; worst: %s", len(out), out[0] if out else None)
    return out
