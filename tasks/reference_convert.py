"""Reference-convert stage: observers → quantize/dequantize, reference quantized modules."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.quantize import Prepared, Referenced
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["convert_reference"]


@task(name="convert_reference", cache_policy=NO_CACHE)
@gated("shared")
def convert_reference(prepared: Prepared) -> Referenced:
    """Convert the calibrated model (every prepared part) to a reference quantized model."""
    referenced = prepared.reference()
    run_logger().info("reference model: %d part(s) (%s)", len(referenced.references), prepared.tracing)
    return referenced
