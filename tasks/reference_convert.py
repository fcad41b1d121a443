"""Reference-convert stage: observers → quantize/dequantize, reference quantized modules."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.quantize import Prepared, Referenced
from quantstage.tasks._common import run_logger

__all__ = ["reference_convert"]


@task(name="reference_convert", cache_policy=NO_CACHE)
def reference_convert(prepared: Prepared) -> Referenced:
    """Convert the calibrated model (every prepared part) to a reference quantized model."""
    referenced = prepared.reference()
    run_logger().info("reference model: %d part(s) (%s)", len(referenced.references), prepared.tracing)
    return referenced
