"""Prefect flows: orchestration only (tasks do the work, deploy/ says how they run).

The names below load on first use, so ``quantstage.flows.cli`` can set Prefect's settings (the
ephemeral API's startup limit) before Prefect is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantstage.flows.convert import ConvertParams, ConvertResult, GateFailure, convert_flow
    from quantstage.flows.sweep import SweepFailure, sweep_flow
    from quantstage.flows.sweep_params import SweepParams, SweepResult
    from quantstage.flows.train_demo import train_demo
    from quantstage.flows.unit import UnitJob, UnitResult, convert_unit

_WHERE = {
    "ConvertParams": "convert",
    "ConvertResult": "convert",
    "GateFailure": "convert",
    "convert_flow": "convert",
    "SweepFailure": "sweep",
    "sweep_flow": "sweep",
    "SweepParams": "sweep_params",
    "SweepResult": "sweep_params",
    "train_demo": "train_demo",
    "UnitJob": "unit",
    "UnitResult": "unit",
    "convert_unit": "unit",
}

__all__ = [
    "ConvertParams",
    "ConvertResult",
    "GateFailure",
    "SweepFailure",
    "SweepParams",
    "SweepResult",
    "UnitJob",
    "UnitResult",
    "convert_flow",
    "convert_unit",
    "sweep_flow",
    "train_demo",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"quantstage.flows.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'quantstage.flows' has no attribute {name!r}")
