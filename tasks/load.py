"""Load stage: the float source model (an MLflow URI, a factory + weights, or a trusted pickle), its identity,
and the calibration/evaluation data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.inputs import check_inputs_fit
from quantstage.quant.data.model_source import (
    ModelSource,
    build_from_factory,
    load_pickled_module,
    load_state_dict_file,
    load_weights,
)
from quantstage.quant.data.outputs import output_key
from quantstage.quant.data.sources import Dataset, DataSpec
from quantstage.quant.data.sources import load_data as build_data
from quantstage.quant.errors import SourceError
from quantstage.tasks._common import IO_RETRIES, run_logger
from quantstage.tasks._gate import gated

__all__ = ["SourceModel", "fetch_file", "identify_source", "load_dataset", "load_model", "resolve_model_uri"]

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
    identity: str = ""  # what the idempotency key is computed from (registry version, run, or file digests)


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


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_digest(folder: str) -> str:
    """Names and sizes of every file under ``folder`` (cheap; content changes change sizes or names)."""
    root = Path(folder)
    entries = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _identity(source: ModelSource, weights_path: str | None = None) -> tuple[str, str | None, str | None, str | None]:
    """``(identity, registered name, version, run id)`` of a source as it is now."""
    if source.uri is not None:
        name, version, run_id = resolve_model_uri(source.uri)
        return (f"models:/{name}/{version}" if name and version else f"runs:/{run_id}"), name, version, run_id
    parts: dict[str, object] = source.describe()
    if source.path is not None:
        parts["sha256"] = _file_digest(source.path) if Path(source.path).is_file() else "missing"
    if weights_path is not None:
        parts["weights_sha256"] = _file_digest(weights_path)
    elif source.weights and Path(source.weights).is_file():
        parts["weights_sha256"] = _file_digest(source.weights)
    if source.folder and Path(source.folder).is_dir():
        parts["folder_digest"] = _folder_digest(source.folder)
    return (
        "source:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest(),
        None,
        None,
        None,
    )


@task(name="identify_source", **IO_RETRIES)
def identify_source(source: ModelSource) -> str:
    """What the source is right now: ``models:/<name>/<version>``, ``runs:/<id>`` or a digest of the
    factory, its kwargs and the weights/folder/pickle files (equal identities, same float model)."""
    return _identity(source)[0]


def _load_uri(model_uri: str) -> torch.nn.Module:
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
    return model


@task(name="load_model", **IO_RETRIES)
@gated("shared")
def load_model(source: str | ModelSource) -> SourceModel:
    """Load the float source model: an MLflow model URI, a factory (+ weights), or a trusted pickle."""
    logger = run_logger()
    if isinstance(source, str):
        source = ModelSource(uri=source)
    if source.uri is not None:
        identity, name, version, run_id = _identity(source)
        model = _load_uri(source.uri)
        logger.info("loaded %s (%s, version %s)", source.uri, type(model).__name__, version)
        return SourceModel(
            model=model.eval(), uri=source.uri, name=name, version=version, run_id=run_id, identity=identity
        )
    if source.path is not None:
        model = load_pickled_module(_local(source.path), source.trust_pickle)
        logger.warning("loaded %s by unpickling it (trust_pickle: true)", source.path)
        return SourceModel(
            model=model.eval(), uri=source.path, name=None, version=None, run_id=None, identity=_identity(source)[0]
        )
    model = build_from_factory(source.factory or "", source.kwargs, source.folder)
    weights_path = None
    if source.weights:
        weights_path = _local(source.weights)
        load_weights(model, load_state_dict_file(weights_path), source.weights, strict=source.strict)
    identity = _identity(source, weights_path)[0]
    logger.info(
        "built %s from %s%s",
        type(model).__name__,
        source.factory,
        f" with weights {source.weights}" if source.weights else "",
    )
    return SourceModel(
        model=model.eval(), uri=source.factory or "", name=None, version=None, run_id=None, identity=identity
    )


def _local(uri: str) -> str:
    """A local path for a file given as a path or an MLflow artifact URI."""
    return fetch_file.fn(uri)


@task(name="load_dataset", cache_policy=NO_CACHE)
@gated("shared")  # checking the data fits runs the model once
def load_dataset(data: DataSpec, model: torch.nn.Module, output: str | None = None) -> Dataset:
    """Build calibration and evaluation batches, check they fit the model, and decide which part of
    its output every stage compares (``output``: a field name or index; default the first tensor)."""
    dataset = build_data(data, model)
    returned = check_inputs_fit(model, dataset.example_inputs, dataset.input_names)
    key = output_key(returned, output, f"{type(model).__name__}.forward")
    if key is not None:
        dataset = dataclasses.replace(dataset, output_key=key)
        run_logger().info(
            "%s returns %s: every stage compares its %r", type(model).__name__, type(returned).__name__, key
        )
    run_logger().info(
        "data %s: %d calibration batches, %d evaluation samples",
        data.source,
        len(dataset.calibration),
        dataset.num_eval_samples,
    )
    return dataset


@task(name="fetch_file", **IO_RETRIES)
def fetch_file(uri: str) -> str:
    """A local path for ``uri``: a local file as is, an MLflow artifact URI downloaded."""
    from pathlib import Path

    if "://" not in uri and ":/" not in uri:
        if not Path(uri).is_file():
            raise SourceError(
                f"file {uri!r} does not exist; give a local path or an MLflow artifact URI (runs:/<id>/<path>)"
            )
        return uri
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as exc:
        if _not_found(exc):
            raise SourceError(f"artifact {uri!r} does not exist in MLflow at {mlflow.get_tracking_uri()!r}") from exc
        raise
