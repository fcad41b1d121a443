"""Validate stage: float vs quantized accuracy on held-out data."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.sources import Dataset
from quantstage.quant.measure.evaluate import AccuracyReport, EvaluationSpec, evaluate
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["validate_accuracy"]


@task(name="validate_accuracy", cache_policy=NO_CACHE)
@gated("shared")
def validate_accuracy(
    float_model: torch.nn.Module, quantized: torch.nn.Module, dataset: Dataset, evaluation: EvaluationSpec | None = None
) -> AccuracyReport:
    """Top-1 accuracy, top-1 agreement and output SQNR of ``quantized`` against ``float_model``."""
    logger = run_logger()
    logger.info("evaluating float and int8 on %d samples", dataset.num_eval_samples)
    report = evaluate(
        float_model,
        quantized,
        dataset.evaluation,
        evaluation,
        input_names=dataset.input_names,
        output_key=dataset.output_key,
    )
    logger.info("%s", ", ".join(f"{k} {v:.4g}" for k, v in report.as_metrics().items()))
    return report
