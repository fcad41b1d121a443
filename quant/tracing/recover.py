"""Torch or the model failing after preparing: leave the part to blame float, or say so in one line.

On the submodule path a part that cannot be calibrated, reference-converted, lowered or measured,
or that makes the assembled model fail on the example inputs (itself, or the code around it), is
left float with the stage and the first line of the error in the coverage, and the conversion goes
on with the rest. On the whole path, and when no part is to blame, the failure is one
``ConversionError`` line naming the stage, the module and the fix. What quantstage's own code
raises is re-raised as it is (``quant.errors.raised_by_quantstage``): that is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from quantstage.quant.engines.base import Engine
from quantstage.quant.engines.registry import QuantSpec
from quantstage.quant.errors import ConversionError, DataError, describe, raised_by_quantstage, stage_error
from quantstage.quant.measure.coverage import CoverageReport
from quantstage.quant.tracing.failures import blamed_parts, float_copy, locate, where
from quantstage.quant.tracing.plan import PlannedParts, TracingPlan, check_plan, show
from quantstage.quant.tracing.report import SubmoduleCoverage
from quantstage.quant.tracing.reroot import covers
from quantstage.quant.tracing.submodules import assemble, swap

__all__ = ["FIX", "assemble_running", "calibration_failed", "check_runs", "part_failed"]

logger = logging.getLogger(__name__)

FIX = "keep the layer it names float with skip_modules, quantize by parts with tracing: submodules, or use engine pt2e"


def _module_type(model: nn.Module, path: str) -> str:
    return type(model.get_submodule(path)).__name__


def part_failed(whole: bool, float_model: nn.Module, stage: str, path: str, exc: Exception) -> str:
    """Why the part at ``path`` is left float after ``stage`` failed with ``exc`` (submodule path).
    quantstage's own bugs are raised as they are; on the whole path (``whole``) it is one line."""
    if raised_by_quantstage(exc):
        raise exc
    if whole:
        raise stage_error(ConversionError, stage, type(float_model).__name__, exc, FIX) from exc
    logger.warning("%s failed in %s (%s): left float", stage, show(path), describe(exc))
    return f"{stage} failed: {describe(exc)}; kept float"


def check_runs(model: nn.Module, float_model: nn.Module, example: Any) -> None:
    """ConversionError naming the module when the quantized ``model`` fails on the example inputs."""
    path, exc = locate(model, example)
    if exc is None:
        return
    if raised_by_quantstage(exc):
        raise exc
    fix = f"keep it float with skip_modules: [{path!r}], {FIX.split(', ', 1)[1]}" if path else FIX
    raise stage_error(ConversionError, "running the quantized model", where(path, float_model), exc, fix) from exc


def calibration_failed(
    work: nn.Module, float_model: nn.Module, parts: PlannedParts | None, exc: Exception, batch: Any
) -> tuple[nn.Module, PlannedParts | None]:
    """(``work`` with the parts to blame for ``exc`` on ``batch`` put back float, the parts without
    them), or a one-line error when no part is to blame (the whole path, the float model failing)."""
    path, _ = locate(work, batch)
    blamed = [] if parts is None else blamed_parts(path, parts.plan.quantized)
    if blamed and path is not None and not any(covers(b, path) for b in blamed):
        float_path, float_exc = locate(float_model, batch)  # the code around parts failed: in float too?
        if float_exc is not None:
            raise stage_error(
                DataError, "running the float model on a calibration batch", where(float_path, float_model),
                float_exc, "calibrate on batches the float model accepts",
            ) from exc  # fmt: skip
    if not blamed or parts is None:
        fix = f"keep it float with skip_modules: [{path!r}], {FIX.split(', ', 1)[1]}" if path else FIX
        raise stage_error(ConversionError, "calibration", where(path, float_model), exc, fix) from exc
    for part in blamed:
        logger.warning("calibration failed in %s (%s): left float", show(part), describe(exc))
        work = swap(work, part, float_copy(float_model.get_submodule(part)))
        parts = parts.without(part, _module_type(float_model, part), f"calibration failed: {describe(exc)}; kept float")
    check_plan(float_model, parts.plan)
    return work, parts


def assemble_running(
    engine: Engine,
    float_model: nn.Module,
    spec: QuantSpec,
    work: nn.Module,
    parts: PlannedParts,
    failed: Mapping[str, str],
    lowered: Mapping[str, nn.Module],
    coverage: Mapping[str, CoverageReport],
    example_inputs: Any,
    *,
    timing_repeats: int = 10,
) -> tuple[nn.Module, SubmoduleCoverage, TracingPlan]:
    """``assemble`` the parts that converted (``failed``: path -> why not) into a model that runs on the
    example inputs: a part that fails there (or whose caller fails around it) is left float too."""
    dropped = list(failed)
    for path, reason in failed.items():
        parts = parts.without(path, _module_type(float_model, path), reason)
    while True:
        check_plan(float_model, parts.plan)
        model, report = assemble(
            engine, float_model, spec, work, parts, lowered, coverage, example_inputs,
            timing_repeats=timing_repeats, dropped=tuple(dropped),
        )  # fmt: skip
        at, exc = locate(model, example_inputs)
        if exc is None:
            return model, report, parts.plan
        if raised_by_quantstage(exc):
            raise exc
        blamed = blamed_parts(at, parts.plan.quantized)
        if not blamed:
            raise stage_error(ConversionError, "running the quantized model", where(at, model), exc, FIX) from exc
        for part in blamed:
            logger.warning("the quantized model fails in %s (%s): %s left float", show(at or ""), describe(exc), part)
            reason = f"running the quantized model failed: {describe(exc)}; kept float"
            parts = parts.without(part, _module_type(float_model, part), reason)
            dropped.append(part)
