"""Prefect flows: orchestration only (tasks do the work, deploy/ says how they run)."""

from flows.convert import ConvertParams, ConvertResult, GateFailure, convert_flow
from flows.train_demo import train_demo

__all__ = ["ConvertParams", "ConvertResult", "GateFailure", "convert_flow", "train_demo"]
