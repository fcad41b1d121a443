"""Tracking stage: everything MLflow — the run, its params/metrics/artifacts, the model,
the registry version with its lineage tags, and the alias promotion."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import mlflow
import torch
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import TorchScriptArtifact
from tasks._common import io_retry_condition, run_logger

__all__ = ["end_run", "experiment_id", "log_conversion", "log_pytorch_model", "promote", "register_model", "start_run"]

_IO = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=io_retry_condition, cache_policy=NO_CACHE)
TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"


def experiment_id(name: str) -> str:
    """The id of MLflow experiment ``name``, created when missing (no global fluent state)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


@task(name="start_run", **_IO)
def start_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """Open an MLflow run in ``experiment`` and return its id."""
    run = mlflow.MlflowClient().create_run(experiment_id(experiment), run_name=run_name, tags=dict(tags))
    run_logger().info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, mlflow.get_tracking_uri())
    return run.info.run_id


def log_pytorch_model(model: torch.nn.Module, example: torch.Tensor, **kwargs: Any) -> str:
    """Log ``model`` with the pytorch flavor (pickle format: ScriptModules save natively); return its URI."""
    with torch.no_grad():
        output = model(example)
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        signature=infer_signature(example.numpy(), output.numpy()),
        input_example=example.numpy(),
        pip_requirements=[TORCH_REQUIREMENT],
        **kwargs,
    )
    return info.model_uri


@task(name="log_conversion", **_IO)
def log_conversion(
    run_id: str,
    *,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    documents: Mapping[str, str],
    json_documents: Mapping[str, Any],
    artifact: TorchScriptArtifact,
    example: torch.Tensor,
    tables: Mapping[str, Mapping[str, list]] | None = None,
    files: Mapping[str, str] | None = None,
) -> str:
    """Log params, metrics, text and JSON documents, MLflow tables (columns), files
    (local path -> artifact dir) and the verified TorchScript model."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for name, text in documents.items():
            mlflow.log_text(text, name)
        for name, data in json_documents.items():
            mlflow.log_dict(data, name)
        for name, columns in (tables or {}).items():
            if columns and any(columns.values()):
                with warnings.catch_warnings():  # MLflow's own pandas-3 notice, raised inside log_table
                    warnings.filterwarnings("ignore", message=r"For backward compatibility, 'str' dtypes")
                    mlflow.log_table(data=dict(columns), artifact_file=name)
        for local_path, artifact_dir in (files or {}).items():
            mlflow.log_artifact(local_path, artifact_dir)
        model_uri = log_pytorch_model(artifact.module, example[:2])
    run_logger().info("logged quantized model %s", model_uri)
    return model_uri


@task(name="register_model", **_IO)
def register_model(model_uri: str, name: str, tags: Mapping[str, str], description: str = "") -> str:
    """Register ``model_uri`` as a new version of ``name`` with lineage ``tags``; return the version."""
    mv = mlflow.register_model(model_uri, name, tags={"torch_version": torch.__version__, **tags})
    if description:
        mlflow.MlflowClient().update_model_version(name, mv.version, description=description)
    run_logger().info("registered %s version %s", name, mv.version)
    return str(mv.version)


@task(name="promote", **_IO)
def promote(name: str, version: str, alias: str) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``."""
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    run_logger().info("models:/%s@%s -> version %s", name, alias, version)


@task(name="end_run", **_IO)
def end_run(run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
    """Close the MLflow run with ``status`` (FINISHED or FAILED)."""
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)
