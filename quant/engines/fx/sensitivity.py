"""Per-layer sensitivity with PyTorch's FX numeric suite (``torch.ao.ns._numeric_suite_fx``).

Weight SQNR compares each layer's float and quantized weights (``extract_weights``);
activation SQNR runs the quantized model shadowed by the float one on a few batches
(``add_shadow_loggers``) and compares each layer's outputs. Low SQNR = sensitive layer.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from quantstage.quant.data.inputs import args_of
from quantstage.quant.data.sources import Batch
from quantstage.quant.engines.fx import _torch as _fx
from quantstage.quant.measure.sensitivity import LayerSensitivity

__all__ = ["layer_sensitivity"]

logger = logging.getLogger(__name__)


def _mean(values: Sequence[torch.Tensor]) -> float | None:
    finite = [float(v) for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _fqn(result: dict[str, Any]) -> str | None:
    return result.get("fqn") or result.get("ref_node_name")


@torch.no_grad()
def layer_sensitivity(
    prepared: GraphModule,
    quantized: GraphModule,
    batches: Sequence[Batch],
    *,
    max_batches: int = 4,
) -> list[LayerSensitivity]:
    """Weight and activation SQNR per layer, worst first. Neither model is modified.

    ``prepared`` is the calibrated (observed) model the quantized one was converted from:
    the numeric suite matches its float layers to the quantized ones.
    """
    ns = _fx.numeric_suite
    chatter = io.StringIO()  # the numeric suite print()s what it cannot shadow
    with _fx.fx_quiet(), contextlib.redirect_stdout(chatter):
        weights = ns.extract_weights("float", copy.deepcopy(prepared), "int8", copy.deepcopy(quantized))
        ns.extend_logger_results_with_comparison(weights, "float", "int8", _fx.compute_sqnr, "sqnr")
        shadow = ns.add_shadow_loggers(
            "float", copy.deepcopy(prepared), "int8", copy.deepcopy(quantized), ns.OutputLogger
        )
        for inputs, _ in batches[:max_batches]:
            shadow(*args_of(inputs))
        activations = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "int8")
        ns.extend_logger_results_with_comparison(activations, "float", "int8", _fx.compute_sqnr, "sqnr")
    if chatter.getvalue():
        logger.debug("numeric suite: %s", chatter.getvalue().strip())

    layers: dict[str, dict[str, Any]] = {}
    for results, key, kind in (
        (weights, "weight", "weight_sqnr_db"),
        (activations, "node_output", "activation_sqnr_db"),
    ):
        for entry in results.values():
            for record in entry.get(key, {}).get("int8", []):
                name = _fqn(record)
                if not name:
                    continue
                layer = layers.setdefault(name, {"op": record.get("prev_node_target_type", "")})
                layer[kind] = _mean(record.get("sqnr", []))
    modules = dict(prepared.named_modules())
    out = [
        LayerSensitivity(
            name=name,
            op=type(modules[name]).__name__ if name in modules else str(info["op"]).rsplit(".", 1)[-1].strip("'>"),
            weight_sqnr_db=info.get("weight_sqnr_db"),
            activation_sqnr_db=info.get("activation_sqnr_db"),
        )
        for name, info in layers.items()
    ]
    out.sort(key=lambda layer: layer.score)
    logger.info("sensitivity of %d layers; worst: %s", len(out), out[0] if out else None)
    return out
