"""Coverage stage: which weighted layers ended quantized, which stayed float, and why."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.fx import GraphModule

from quant.convert import ReferenceModel
from quant.coverage import CoverageReport, coverage_report
from tasks._common import run_logger

__all__ = ["measure_coverage"]


@task(name="measure_coverage", cache_policy=NO_CACHE)
def measure_coverage(float_model: torch.nn.Module, reference: ReferenceModel, quantized: GraphModule) -> CoverageReport:
    """The quantized-coverage report of the lowered model."""
    report = coverage_report(float_model, reference, quantized)
    logger = run_logger()
    (logger.warning if report.quantizes_nothing else logger.info)("coverage: %s", report.summary())
    return report
