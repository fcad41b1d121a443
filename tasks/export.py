"""Export stage: the quantized model as TorchScript, verified bit-exactly before it is logged."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import TorchScriptArtifact, export_torchscript
from quant.sources import Dataset
from tasks._common import run_logger

__all__ = ["export_model"]


@task(name="export_model", cache_policy=NO_CACHE)
def export_model(quantized: torch.nn.Module, dataset: Dataset, out_dir: str) -> TorchScriptArtifact:
    """Save ``quantized`` as TorchScript under ``out_dir`` and verify the file reproduces it."""
    verify = [(inputs,) for inputs, _ in dataset.evaluation[:4]]
    artifact = export_torchscript(quantized, Path(out_dir) / "model_int8.pt", verify)
    run_logger().info(
        "TorchScript (%s) verified on %d batches: %s, %d bytes",
        artifact.method, len(verify), artifact.path, artifact.size_bytes,
    )
    return artifact
