"""Lower stage: reference model → the backend's native quantized ops; what ended quantized."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.quantize import Quantized, Referenced
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["lower_model"]


@task(name="lower_model", cache_policy=NO_CACHE)
@gated("shared")
def lower_model(referenced: Referenced) -> Quantized:
    """Lower the reference model to native quantized ops (fbgemm/x86/qnnpack/onednn) and measure its coverage."""
    quantized = referenced.lower()
    logger = run_logger()
    if quantized.spec.target == "native":
        logger.info("lowered to native %s ops", quantized.spec.backend)
    else:
        logger.info("target 'reference': shipping the reference model, not lowered")
    coverage = quantized.coverage
    (logger.warning if coverage.quantizes_nothing else logger.info)(
        "coverage: %s", coverage.summary().replace("\n", " ")
    )
    return quantized
