"""Export stage: models as TorchScript, verified bit-exactly before anything is logged."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import TorchScriptArtifact, export_torchscript
from quant.convert import ReferenceModel, lower
from quant.sources import Dataset
from tasks._common import run_logger

__all__ = ["export_model", "export_reference"]

_VERIFY_BATCHES = 4


def _export(model: torch.nn.Module, dataset: Dataset, path: Path, what: str) -> TorchScriptArtifact:
    verify = [(inputs,) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    artifact = export_torchscript(model, path, verify)
    run_logger().info(
        "%s TorchScript (%s) verified on %d batches: %s, %d bytes",
        what, artifact.method, len(verify), artifact.path, artifact.size_bytes,
    )
    return artifact


@task(name="export_model", cache_policy=NO_CACHE)
def export_model(quantized: torch.nn.Module, dataset: Dataset, out_dir: str) -> TorchScriptArtifact:
    """Save the model the stage ships as TorchScript under ``out_dir`` and verify the file reproduces it."""
    return _export(quantized, dataset, Path(out_dir) / "model_int8.pt", "shipped")


@task(name="export_reference", cache_policy=NO_CACHE)
def export_reference(reference: ReferenceModel, dataset: Dataset, out_dir: str) -> TorchScriptArtifact:
    """Save the reference quantized model (before lowering) as verified TorchScript, for compilers."""
    finalised = lower(reference, target="reference")
    return _export(finalised, dataset, Path(out_dir) / "reference" / "model_reference.pt", "reference")
