"""Export stage: the fastest correct TorchScript form, verified against the lowered model
before anything is logged; and the reference model for compilers."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import TorchScriptArtifact, export_torchscript
from quant.convert import ReferenceModel, lower
from quant.errors import ArtifactError
from quant.inputs import args_of, head
from quant.model_source import ModelSource
from quant.rebuild import save_bundle
from quant.sources import Dataset
from quant.spec import QuantSpec
from quant.variants import VariantResult, select_variant
from tasks._common import run_logger

__all__ = ["export_model", "export_rebuild", "export_reference"]

_VERIFY_BATCHES = 4


def _verify_inputs(dataset: Dataset) -> list[tuple[torch.Tensor, ...]]:
    batches = [args_of(inputs) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    return batches + [args_of(head(dataset.evaluation[0][0], 1))]  # batch 1 too: the serving shape


@task(name="export_model", cache_policy=NO_CACHE)
def export_model(
    quantized: torch.nn.Module, dataset: Dataset, out_dir: str, tolerance: float = 0.0
) -> tuple[TorchScriptArtifact, list[VariantResult]]:
    """Pick the fastest TorchScript form that reproduces ``quantized``, save it, load it back, verify it."""
    logger = run_logger()
    verify = _verify_inputs(dataset)
    name, module, variants = select_variant(quantized, verify, tolerance=tolerance)
    for v in variants:
        logger.info(
            "variant %-22s p50 %s ms, max abs diff %s%s",
            v.name, "n/a" if v.p50_ms is None else f"{v.p50_ms:.3f}",
            "n/a" if v.max_abs_diff is None else f"{v.max_abs_diff:g}", f" ({v.error})" if v.error else "",
        )
    artifact = export_torchscript(
        module, Path(out_dir) / "model_int8.pt", verify, reference=quantized, tolerance=tolerance, method=name
    )
    logger.info("shipping %s, verified on %d batches: %s, %d bytes", name, len(verify), artifact.path, artifact.size_bytes)
    return artifact, variants


@task(name="export_rebuild", cache_policy=NO_CACHE)
def export_rebuild(
    quantized: torch.nn.Module, dataset: Dataset, out_dir: str, spec: QuantSpec, source: ModelSource, tracing: str, why: str
) -> str:
    """When no TorchScript form reproduces the model: the factory + spec + quantized state_dict
    that rebuild it (quant/rebuild.py), verified bit-exact by rebuilding; return the bundle folder."""
    if source.factory is None:
        raise ArtifactError(
            f"{why}; a model that TorchScript cannot reproduce ships as a rebuild bundle, which needs a factory "
            f"source: give model: {{factory: 'package.module:callable', weights: ...}} instead of {source.label!r}"
        )
    bundle = save_bundle(
        quantized, Path(out_dir) / "rebuild", factory=source.factory, kwargs=dict(source.kwargs), folder=source.folder,
        spec=spec, tracing=tracing, verify_inputs=_verify_inputs(dataset), input_names=dataset.input_names,
    )
    run_logger().warning("no TorchScript form reproduces the model (%s); shipping rebuild bundle %s", why[:300], bundle)
    return str(bundle)


@task(name="export_reference", cache_policy=NO_CACHE)
def export_reference(reference: ReferenceModel, dataset: Dataset, out_dir: str) -> TorchScriptArtifact:
    """Save the reference quantized model (before lowering) as verified TorchScript, for compilers."""
    finalised = lower(reference, target="reference")
    artifact = export_torchscript(finalised, Path(out_dir) / "reference" / "model_reference.pt", _verify_inputs(dataset))
    run_logger().info("reference TorchScript (%s): %s, %d bytes", artifact.method, artifact.path, artifact.size_bytes)
    return artifact
