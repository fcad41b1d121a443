"""Submodule stage: quantize a model whose forward does not FX-trace as a whole, by its largest
traceable submodules (quant/tracing.py), and decide which path a model takes."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.errors import TracingError
from quant.inputs import args_of
from quant.prepare import prepare
from quant.sources import Dataset
from quant.spec import QuantSpec
from quant.tracing import SubmoduleQuantization, quantize_submodules
from tasks._common import run_logger

__all__ = ["choose_tracing", "quantize_by_submodules"]


@task(name="choose_tracing", cache_policy=NO_CACHE)
def choose_tracing(model: torch.nn.Module, dataset: Dataset, spec: QuantSpec) -> tuple[str, str]:
    """``("whole", "")`` when the model FX-traces as a whole (or ``tracing: whole``), else
    ``("submodules", why)``; ``tracing: whole`` on an untraceable model raises its TracingError."""
    if spec.tracing == "submodules":
        return "submodules", "tracing: submodules"
    if spec.tracing == "whole" or spec.mode == "qat":
        return "whole", ""
    try:
        prepare(model, dataset.example_inputs, spec)
    except TracingError as exc:
        run_logger().info("%s does not FX-trace as a whole: %s; quantizing by submodules", type(model).__name__, exc)
        return "submodules", str(exc)
    return "whole", ""


@task(name="quantize_by_submodules", cache_policy=NO_CACHE)
def quantize_by_submodules(model: torch.nn.Module, dataset: Dataset, spec: QuantSpec) -> SubmoduleQuantization:
    """Prepare, calibrate (static: through the whole model, with hooks), convert and lower each of
    the largest traceable submodules; the untraceable glue stays float."""
    calibration = [args_of(x) for x, _ in dataset.calibration[: spec.calibration_batches]]
    result = quantize_submodules(model, spec, dataset.example_inputs, calibration)
    logger = run_logger()
    for line in result.report.summary().splitlines():
        logger.info(line.removeprefix("- "))
    return result
