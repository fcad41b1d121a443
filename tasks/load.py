"""Load stage: the float source model from MLflow and the calibration/evaluation data."""

from __future__ import annotations

import dataclasses
import re

import mlflow
import torch
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.errors import SourceError
from quant.prepare import check_inputs_fit
from quant.sources import DataSpec, Dataset
from quant.sources import load_data as build_data
from tasks._common import io_retry_condition, run_logger

__all__ = ["SourceModel", "fetch_file", "load_data", "load_model", "resolve_model_uri"]

_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
def _not_found(exc: MlflowException) -> bool:
    """MLflow's answer for a name, version, alias or artifact that does not exist (not an I/O fault)."""
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")


@dataclasses.dataclass
class SourceModel:
    """The float model and where exactly it came from."""

    model: torch.nn.Module
    uri: str
    name: str | None
    version: str | None
    run_id: str | None


def resolve_model_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """``(registered name, version, source run id)`` of a model URI; names the fix when it fails."""
    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/", 1)[0]
        return None, None, run_id
    match = _MODELS_URI.match(uri)
    if not match:
        raise SourceError(f"model URI {uri!r} is not of a supported form; use {_URI_FORMS}")
    name = match["name"]
    try:
        if match["alias"]:
            mv = client.get_model_version_by_alias(name, match["alias"])
        else:
            mv = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        if _not_found(exc):
            raise SourceError(
                f"model URI {uri!r} does not resolve in the MLflow registry at "
                f"{mlflow.get_tracking_uri()!r} ({exc.message.splitlines()[0]}); register the model "
                f"first or point MLFLOW_TRACKING_URI at the registry that has it"
            ) from exc
        raise
    return name, str(mv.version), mv.run_id


@task(name="load_model", retries=2, retry_delay_seconds=2, retry_condition_fn=io_retry_condition, cache_policy=NO_CACHE)
def load_model(model_uri: str) -> SourceModel:
    """Load the float source model from an MLflow model URI."""
    logger = run_logger()
    name, version, run_id = resolve_model_uri(model_uri)
    try:
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except MlflowException as exc:
        raise SourceError(
            f"model URI {model_uri!r} could not be loaded as a PyTorch model "
            f"({str(exc).splitlines()[0]}); log it with mlflow.pytorch.log_model"
        ) from exc
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise SourceError(
            f"model URI {model_uri!r} holds a {type(model).__name__}, not an eager torch.nn.Module; "
            f"FX quantization needs the Python model (log it with serialization_format='pickle')"
        )
    logger.info("loaded %s (%s, version %s)", model_uri, type(model).__name__, version)
    return SourceModel(model=model.eval(), uri=model_uri, name=name, version=version, run_id=run_id)


@task(name="load_data", cache_policy=NO_CACHE)
def load_data(data: DataSpec, model: torch.nn.Module) -> Dataset:
    """Build calibration and evaluation batches and check they fit the model."""
    dataset = build_data(data)
    check_inputs_fit(model, dataset.example_inputs)
    run_logger().info(
        "data %s: %d calibration batches, %d evaluation samples",
        data.source, len(dataset.calibration), dataset.num_eval_samples,
    )
    return dataset


@task(name="fetch_file", retries=2, retry_delay_seconds=2, retry_condition_fn=io_retry_condition, cache_policy=NO_CACHE)
def fetch_file(uri: str) -> str:
    """A local path for ``uri``: a local file as is, an MLflow artifact URI downloaded."""
    from pathlib import Path

    if "://" not in uri and ":/" not in uri:
        if not Path(uri).is_file():
            raise SourceError(f"file {uri!r} does not exist; give a local path or an MLflow artifact URI (runs:/<id>/<path>)")
        return uri
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as exc:
        if _not_found(exc):
            raise SourceError(f"artifact {uri!r} does not exist in MLflow at {mlflow.get_tracking_uri()!r}") from exc
        raise
