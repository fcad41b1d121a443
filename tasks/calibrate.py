"""Calibrate stage: prepare the float model (the engine's whole/submodules decision, made once)
and run calibration data through its observers."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import QuantSpec
from quantstage.quant.quantize import Prepared, prepare_model
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["calibrate_model"]


@task(name="calibrate_model", cache_policy=NO_CACHE)
@gated("exclusive")  # prepare traces the model: Module.__call__ is patched process-wide
def calibrate_model(
    model: torch.nn.Module, dataset: Dataset, spec: QuantSpec, qat_checkpoint: str | None = None
) -> Prepared:
    """Prepare ``model`` for ``spec`` (or rebuild a trained QAT model from ``qat_checkpoint``, a local
    path) and, in static mode, calibrate its observers on the calibration batches."""
    logger = run_logger()
    prepared = prepare_model(model, spec, dataset.example_inputs, qat_checkpoint=qat_checkpoint)
    if prepared.from_qat:
        logger.info(
            "QAT checkpoint %s: converting without recalibration (spec %s)", qat_checkpoint, prepared.spec.digest()
        )
    elif prepared.parts is not None:
        logger.info(
            "quantizing %s by submodules (%s): %s",
            type(model).__name__,
            prepared.reason[:300],
            prepared.parts.plan.summary(),
        )
    if not prepared.needs_calibration:
        logger.info("%s mode: no activation calibration needed", prepared.spec.mode)
        return prepared
    step = max(1, spec.calibration_batches // 4)

    def progress(seen: int, total: int) -> None:
        if seen % step == 0 or seen == total:
            logger.info("calibration %d/%d batches", seen, total)

    seen = prepared.calibrate((inputs for inputs, _ in dataset.calibration), on_batch=progress)
    for message in prepared.degenerate_ranges():
        logger.warning("degenerate calibration: %s", message)
    if seen < spec.calibration_batches:
        logger.warning(
            "calibration saw %d batches, fewer than the %d asked for: the data has only %d",
            seen,
            spec.calibration_batches,
            len(dataset.calibration),
        )
    return prepared
