"""Per-layer sensitivity as data: how much each layer loses to quantization (SQNR, dB), a table and a chart.

Engines measure it (the FX engine with torch's FX numeric suite); this module holds what
every engine reports and how it is shown.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantstage.quant.report.plots import save_figure, subplots

__all__ = ["LayerSensitivity", "sensitivity_chart", "sensitivity_table"]


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


def sensitivity_table(layers: Sequence[LayerSensitivity]) -> dict[str, list[Any]]:
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

    def cap(v: float | None) -> float:  # inf (exact) drawn as 100 dB
        return 0.0 if v is None else min(v, 100.0)

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
