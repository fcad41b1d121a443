"""Validate stage: float vs quantized accuracy on held-out data."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.evaluate import AccuracyReport, evaluate
from quant.sources import Dataset
from tasks._common import run_logger

__all__ = ["validate_accuracy"]


@task(name="validate_accuracy", cache_policy=NO_CACHE)
def validate_accuracy(
    float_model: torch.nn.Module, quantized: torch.nn.Module, dataset: Dataset
) -> AccuracyReport:
    """Top-1 accuracy, top-1 agreement and output SQNR of ``quantized`` against ``float_model``."""
    logger = run_logger()
    logger.info("evaluating float and int8 on %d samples", dataset.num_eval_samples)
    report = evaluate(float_model, quantized, dataset.evaluation)
    logger.info(
        "float accuracy %s, int8 accuracy %s, agreement %.4f, SQNR %.2f dB",
        report.float_accuracy, report.quant_accuracy, report.agreement, report.sqnr_db,
    )
    return report
