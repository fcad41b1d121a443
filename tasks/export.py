"""Export stage: the engine's verified deployable form (``Engine.ship``: the fastest correct one, or the
engine's fallback when none reproduces the model), and the reference model for compilers."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.inputs import args_of, head
from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.outputs import with_output
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import get_engine
from quantstage.quant.engines.base import ShippedFile
from quantstage.quant.quantize import Quantized
from quantstage.quant.ship.shipped import Origin, Shipped
from quantstage.quant.ship.signature import served_form
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated

__all__ = ["Shipped", "export_model", "export_reference"]

_VERIFY_BATCHES = 4


def _verify_inputs(dataset: Dataset) -> list[tuple[torch.Tensor, ...]]:
    batches = [args_of(inputs) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    return batches + [args_of(head(dataset.evaluation[0][0], 1))]  # batch 1 too: the serving shape


def _log_shipped(shipped: Shipped, verified_on: int) -> None:
    logger = run_logger()
    for v in shipped.variants:
        logger.info(
            "variant %-22s p50 %s ms, max abs diff %s%s",
            v.name,
            "n/a" if v.p50_ms is None else f"{v.p50_ms:.3f}",
            "n/a" if v.max_abs_diff is None else f"{v.max_abs_diff:g}",
            f" ({v.error})" if v.error else "",
        )
    if shipped.why:
        logger.warning("no deployable form reproduces the model (%s); shipping %s", shipped.why[:300], shipped.method)
    logger.info(
        "shipping %s, verified on %d batches: %s, %d bytes",
        shipped.method,
        verified_on,
        shipped.path,
        shipped.size_bytes,
    )


@task(name="export_model", cache_policy=NO_CACHE)
@gated("shared")
def export_model(
    quantized: Quantized,
    dataset: Dataset,
    out_dir: str,
    source: ModelSource,
    tolerance: float = 0.0,
    budget_s: float | None = None,
) -> Shipped:
    """Ship the model with its engine: the fastest deployable form that reproduces it, saved, loaded back and
    verified; the engine's fallback (FX: factory + spec + quantized state_dict) when none does."""
    verify = _verify_inputs(dataset)
    origin = Origin(
        model=quantized.model,
        spec=quantized.spec,
        tracing=quantized.tracing,
        source=source,
        output=dataset.output_key,
        input_names=dataset.input_names,
    )
    # what the registered model returns, called like the float model (quant.ship.signature)
    served = served_form(quantized.model, dataset.output_key, dataset.input_names, dataset.example_inputs)
    shipped = get_engine(quantized.engine).ship(
        served, Path(out_dir) / "model", verify, origin=origin, tolerance=tolerance, budget_s=budget_s
    )
    _log_shipped(shipped, len(verify))
    return shipped


@task(name="export_reference", cache_policy=NO_CACHE)
@gated("shared")
def export_reference(quantized: Quantized, dataset: Dataset, out_dir: str) -> ShippedFile | None:
    """Save the whole model's reference quantized model (before lowering), verified, for compilers: TorchScript
    (fx) or an exported program (pt2e); None on the submodule path (each part's reference code is logged)."""
    if quantized.reference is None:
        return None
    engine = get_engine(quantized.engine)
    finalised = with_output(engine.reference_module(quantized.reference), dataset.output_key)
    artifact = engine.save_reference(
        finalised, Path(out_dir) / "reference" / "model_reference", _verify_inputs(dataset)
    )
    run_logger().info("reference model (%s): %s, %d bytes", artifact.method, artifact.path, artifact.size_bytes)
    return artifact
