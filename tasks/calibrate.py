"""Calibrate stage: prepare the float model with FX and run calibration data through it."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.fx import GraphModule

from quant.errors import SpecError
from quant.prepare import calibrate as run_calibration
from quant.prepare import degenerate_ranges
from quant.prepare import prepare
from quant.sources import Dataset
from quant.qat import load_qat_checkpoint
from quant.skips import check_skips
from quant.spec import QuantSpec
from tasks._common import run_logger

__all__ = ["calibrate", "load_qat"]


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(model: torch.nn.Module, dataset: Dataset, spec: QuantSpec) -> GraphModule:
    """Prepare ``model`` for ``spec`` and calibrate its observers (static mode)."""
    logger = run_logger()
    prepared = prepare(model, dataset.example_inputs, spec)
    for unused in check_skips(model, prepared, spec):  # raises instead when spec.strict_skips
        logger.warning(unused.message)
    if spec.mode != "static":
        logger.info("%s mode: no activation calibration needed", spec.mode)
        return prepared
    step = max(1, spec.calibration_batches // 4)

    def progress(seen: int, total: int) -> None:
        if seen % step == 0 or seen == total:
            logger.info("calibration %d/%d batches", seen, total)

    seen = run_calibration(prepared, dataset.calibration, max_batches=spec.calibration_batches, on_batch=progress)
    for message in degenerate_ranges(prepared):
        logger.warning("degenerate calibration: %s", message)
    if seen < spec.calibration_batches:
        logger.warning(
            "calibration saw %d batches, fewer than the %d asked for: the data has only %d",
            seen, spec.calibration_batches, len(dataset.calibration),
        )
    return prepared


@task(name="load_qat", cache_policy=NO_CACHE)
def load_qat(model: torch.nn.Module, dataset: Dataset, checkpoint: str, spec: QuantSpec) -> tuple[GraphModule, QuantSpec]:
    """Rebuild a QAT-trained prepared model from its checkpoint (no calibration); return it and its spec.

    ``spec`` is what the flow was given: the default spec defers to the checkpoint's, any
    other must equal it.
    """
    prepared, trained_spec = load_qat_checkpoint(checkpoint, model, dataset.example_inputs)
    if spec != QuantSpec() and spec != trained_spec:
        raise SpecError(
            f"the spec given (hash {spec.digest()}) differs from the one that prepared the QAT checkpoint "
            f"{checkpoint!r} (hash {trained_spec.digest()}); omit spec to use the checkpoint's"
        )
    run_logger().info("QAT checkpoint %s: converting without recalibration (spec %s)", checkpoint, trained_spec.digest())
    return prepared, trained_spec
