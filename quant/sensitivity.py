"""Per-layer sensitivity with PyTorch's FX numeric suite (``torch.ao.ns._numeric_suite_fx``).

Weight SQNR compares each layer's float and quantized weights (``extract_weights``);
activation SQNR runs the quantized model shadowed by the float one on a few batches
(``add_shadow_loggers``) and compares each layer's outputs. Low SQNR = sensitive layer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.fx import GraphModule

from quant import _fx
from quant.inputs import args_of
from quant.plots import save_figure, subplots
from quant.sources import Batch

__all__ = ["LayerSensitivity", "layer_sensitivity", "sensitivity_chart", "sensitivity_table"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """How much one layer loses to quantization (SQNR in dB; higher is better)."""

    name: str  # module path (fqn) of the layer in the float model
    op: str
    weight_sqnr_db: float | None
    activation_sqnr_db: float | None

    @property
    def score(self) -> float:
        """The worse of the two SQNRs (inf when neither was measured)."""
        values = [v for v in (self.activation_sqnr_db, self.weight_sqnr_db) if v is not None]
        return min(values) if values else math.inf


def _mean(values: Sequence[torch.Tensor]) -> float | None:
    finite = [float(v) for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _fqn(result: dict) -> str | None:
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
        shadow = ns.add_shadow_loggers("float", copy.deepcopy(prepared), "int8", copy.deepcopy(quantized), ns.OutputLogger)
        for inputs, _ in batches[:max_batches]:
            shadow(*args_of(inputs))
        activations = ns.extract_shadow_logger_info(shadow, ns.OutputLogger, "int8")
        ns.extend_logger_results_with_comparison(activations, "float", "int8", _fx.compute_sqnr, "sqnr")
    if chatter.getvalue():
        logger.debug("numeric suite: %s", chatter.getvalue().strip())

    layers: dict[str, dict] = {}
    for results, key, kind in ((weights, "weight", "weight_sqnr_db"), (activations, "node_output", "activation_sqnr_db")):
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


def sensitivity_table(layers: Sequence[LayerSensitivity]) -> dict[str, list]:
    """Columns for a table artifact (worst layer first)."""
    return {
        "layer": [layer.name for layer in layers],
        "op": [layer.op for layer in layers],
        "weight_sqnr_db": [layer.weight_sqnr_db for layer in layers],
        "activation_sqnr_db": [layer.activation_sqnr_db for layer in layers],
    }


def sensitivity_chart(layers: Sequence[LayerSensitivity], path: str | Path, *, top: int = 30) -> Path:
    """A horizontal bar chart (PNG) of activation and weight SQNR per layer, worst on top."""
    shown = list(layers[:top])
    cap = lambda v: 0.0 if v is None else min(v, 100.0)  # noqa: E731 - inf (exact) drawn as 100 dB
    names = [layer.name for layer in shown][::-1]
    act = [cap(layer.activation_sqnr_db) for layer in shown][::-1]
    wgt = [cap(layer.weight_sqnr_db) for layer in shown][::-1]
    fig, ax = subplots(figsize=(8, 0.35 * len(shown) + 1.5))
    y = range(len(shown))
    ax.barh([i + 0.2 for i in y], act, height=0.4, label="activation SQNR")
    ax.barh([i - 0.2 for i in y], wgt, height=0.4, label="weight SQNR")
    ax.set_yticks(list(y), names)
    ax.set_xlabel("SQNR (dB, higher is better; exact drawn at 100)")
    ax.set_title("Per-layer quantization sensitivity (worst on top)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.0 / (len(shown) + 4)), ncol=2, frameon=False)
    return save_figure(fig, path)
