"""Export stage: the fastest correct deployable form, verified against the lowered model before
anything is logged (a rebuild bundle when no form reproduces it); and the reference model for
compilers."""

from __future__ import annotations

import dataclasses
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
from quantstage.quant.errors import ArtifactError
from quantstage.quant.quantize import Quantized
from quantstage.quant.ship.rebuild import save_bundle
from quantstage.quant.ship.signature import served_form
from quantstage.quant.ship.variants import VariantResult
from quantstage.tasks._common import run_logger

__all__ = ["Shipped", "export_model", "export_reference"]

_VERIFY_BATCHES = 4


def _verify_inputs(dataset: Dataset) -> list[tuple[torch.Tensor, ...]]:
    batches = [args_of(inputs) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    return batches + [args_of(head(dataset.evaluation[0][0], 1))]  # batch 1 too: the serving shape


@dataclasses.dataclass
class Shipped:
    """What ships: a verified artifact (``artifact``), or a rebuild bundle folder (``bundle``) when
    no deployable form reproduces the model (``why``); ``variants`` the forms tried."""

    artifact: ShippedFile | None
    bundle: str | None = None
    variants: list[VariantResult] = dataclasses.field(default_factory=list)
    why: str = ""

    @property
    def method(self) -> str:
        return self.artifact.method if self.artifact is not None else "rebuild_bundle"


def _bundle(quantized: Quantized, dataset: Dataset, out_dir: str, source: ModelSource, why: str) -> str:
    if source.factory is None:
        raise ArtifactError(
            f"{why}; a model that no deployable form reproduces ships as a rebuild bundle, which needs a factory "
            f"source: give model: {{factory: 'package.module:callable', weights: ...}} instead of {source.label!r}"
        )
    bundle = save_bundle(
        quantized.model,
        Path(out_dir) / "rebuild",
        output=dataset.output_key,
        factory=source.factory,
        kwargs=dict(source.kwargs),
        folder=source.folder,
        spec=quantized.spec,
        tracing=quantized.tracing,
        verify_inputs=_verify_inputs(dataset),
        input_names=dataset.input_names,
    )
    run_logger().warning("no deployable form reproduces the model (%s); shipping rebuild bundle %s", why[:300], bundle)
    return str(bundle)


@task(name="export_model", cache_policy=NO_CACHE)
def export_model(
    quantized: Quantized,
    dataset: Dataset,
    out_dir: str,
    source: ModelSource,
    tolerance: float = 0.0,
    budget_s: float | None = None,
) -> Shipped:
    """Pick the fastest deployable form that reproduces the model, save it, load it back, verify it;
    when none does, the factory + spec + quantized state_dict that rebuild it, verified by rebuilding."""
    logger = run_logger()
    verify = _verify_inputs(dataset)
    engine = get_engine(quantized.engine)
    try:
        # what the registered model returns, called like the float model (quant.ship.signature)
        served = served_form(quantized.model, dataset.output_key, dataset.input_names, dataset.example_inputs)
        artifact, variants = engine.ship(
            served, Path(out_dir) / "model_int8.pt", verify, tolerance=tolerance, budget_s=budget_s
        )
    except ArtifactError as exc:
        return Shipped(None, _bundle(quantized, dataset, out_dir, source, str(exc)), why=str(exc))
    for v in variants:
        logger.info(
            "variant %-22s p50 %s ms, max abs diff %s%s",
            v.name,
            "n/a" if v.p50_ms is None else f"{v.p50_ms:.3f}",
            "n/a" if v.max_abs_diff is None else f"{v.max_abs_diff:g}",
            f" ({v.error})" if v.error else "",
        )
    logger.info(
        "shipping %s, verified on %d batches: %s, %d bytes",
        artifact.method,
        len(verify),
        artifact.path,
        artifact.size_bytes,
    )
    return Shipped(artifact, variants=variants)


@task(name="export_reference", cache_policy=NO_CACHE)
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
