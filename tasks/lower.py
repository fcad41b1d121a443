"""Lower stage: reference model → the backend's native quantized ops."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.fx import GraphModule

from quant.convert import ReferenceModel
from quant.convert import lower as lower_reference
from quant.spec import QuantSpec
from tasks._common import run_logger

__all__ = ["lower"]


@task(name="lower", cache_policy=NO_CACHE)
def lower(reference: ReferenceModel, spec: QuantSpec) -> GraphModule:
    """Lower the reference model to native quantized ops (fbgemm/x86/qnnpack/onednn)."""
    quantized = lower_reference(reference, **spec.lower_kwargs())
    if spec.target == "native":
        run_logger().info("lowered to native %s ops", spec.backend)
    else:
        run_logger().info("target 'reference': shipping the reference model, not lowered")
    return quantized
