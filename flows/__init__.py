"""Prefect flows: orchestration only (tasks do the work, deploy/ says how they run)."""

from quantstage.flows.convert import ConvertParams, ConvertResult, GateFailure, convert_flow
from quantstage.flows.sweep import SweepFailure, sweep_flow
from quantstage.flows.sweep_params import SweepParams, SweepResult
from quantstage.flows.train_demo import train_demo
from quantstage.flows.unit import UnitJob, UnitResult, convert_unit

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
