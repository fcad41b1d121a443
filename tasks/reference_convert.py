"""Reference-convert stage: observers → quantize/dequantize, reference quantized modules."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.fx import GraphModule

from quant.convert import ReferenceModel
from quant.convert import reference_convert as convert_to_reference
from quant.spec import QuantSpec
from tasks._common import run_logger

__all__ = ["reference_convert"]


@task(name="reference_convert", cache_policy=NO_CACHE)
def reference_convert(prepared: GraphModule, spec: QuantSpec) -> ReferenceModel:
    """Convert the calibrated model to a reference quantized model."""
    reference = convert_to_reference(prepared, **spec.reference_convert_kwargs())
    run_logger().info("reference model: %d graph nodes", len(reference.graph_module.graph.nodes))
    return reference
