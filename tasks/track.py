"""Tracking stage: everything MLflow — the run, its params/metrics/artifacts, the model,
the registry version with its lineage tags, and the alias promotion."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
import torch
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from quant.artifacts import TorchScriptArtifact
from quant.inputs import args_of, batch_len, head
from tasks._common import io_retry_condition, run_logger

__all__ = [
    "compare_with_holder", "digest", "end_run", "experiment_id", "find_version_by_key", "log_conversion", "log_data_lineage",
    "log_pytorch_model", "promote", "register_model", "registry_lock", "resolve_source", "start_run", "tag_version",
]

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


def log_pytorch_model(
    model: torch.nn.Module, example: Any, names: tuple[str, ...] | None = None, **kwargs: Any
) -> str:
    """Log ``model`` with the pytorch flavor (pickle format: ScriptModules save natively); return its URI.

    ``example`` is the inputs of one batch (a tensor or a tuple of positional tensors). One tensor:
    the signature and input example are that array. Several (``names`` from ``forward``): the
    signature names each input tensor and the example is logged as ``input_example.json``
    beside the model — MLflow's pytorch pyfunc serves one array only, so callers load the model
    with ``mlflow.pytorch.load_model`` and call it with keyword (or positional) tensors.
    """
    args = args_of(example)
    with torch.no_grad():
        output = model(*args)
    output_np = output.detach().numpy() if isinstance(output, torch.Tensor) else None
    if len(args) == 1 and isinstance(args[0], torch.Tensor):
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle",
            signature=infer_signature(args[0].numpy(), output_np), input_example=args[0].numpy(),
            pip_requirements=[TORCH_REQUIREMENT], **kwargs,
        )
        return info.model_uri
    names = tuple(names or (f"input_{i}" for i in range(len(args))))
    arrays = {n: a.detach().numpy() for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", signature=infer_signature(arrays, output_np),
        pip_requirements=[TORCH_REQUIREMENT], **kwargs,
    )
    mlflow.log_dict({n: a.tolist() for n, a in arrays.items()}, "model/input_example.json")
    return info.model_uri


@task(name="log_conversion", **_IO)
def log_conversion(
    run_id: str,
    *,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    documents: Mapping[str, str],
    json_documents: Mapping[str, Any],
    artifact: TorchScriptArtifact | None,
    example: Any,
    bundle: str | None = None,
    input_names: tuple[str, ...] | None = None,
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
        if artifact is not None:
            model_uri = log_pytorch_model(artifact.module, head(example, 2), input_names)
        else:
            model_uri = log_rebuild_model(bundle)
    run_logger().info("logged quantized model %s", model_uri)
    return model_uri


def log_rebuild_model(bundle: str) -> str:
    """Log a rebuild bundle as a pyfunc model (the bundle travels as its artifact); return its URI.
    Signature and input example come from the example batch the bundle stores (first 2 samples)."""
    from quant.rebuild import example
    from tasks.rebuild_model import RebuildModel

    inputs, output, names = example(bundle)
    args, output = args_of(head(inputs, 2)), output[:2].numpy()
    names = tuple(names or (f"input_{i}" for i in range(len(args))))
    features = args[0].numpy() if len(args) == 1 else {n: a.numpy() for n, a in zip(names, args)}
    info = mlflow.pyfunc.log_model(
        name="model", python_model=RebuildModel(), artifacts={"bundle": bundle},
        signature=infer_signature(features, output), input_example=features,
        pip_requirements=[TORCH_REQUIREMENT, "quantstage"],
    )
    return info.model_uri


def _split_dataset(batches: list, names: tuple[str, ...] | None, source: str, context: str):  # noqa: ANN202
    """The split as an MLflow dataset: arrays when the batches concatenate, else a digest-only record."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    try:
        columns = list(zip(*(args_of(x) for x, _ in batches)))
        arrays = [np.concatenate([t.detach().numpy() for t in column]) for column in columns]
        features = arrays[0] if len(arrays) == 1 else dict(zip(names or [f"input_{i}" for i in range(len(arrays))], arrays))
        targets = np.concatenate([y.numpy() for _, y in batches]) if all(y is not None for _, y in batches) else None
        with warnings.catch_warnings():  # a file path resolves to two equivalent local sources
            warnings.filterwarnings("ignore", message=r"The specified dataset source can be interpreted in multiple ways")
            return mlflow.data.from_numpy(features, targets=targets, source=source, name=f"{context}:{source}")
    except Exception:  # ragged batches or a source MLflow cannot resolve: keep name, digest and sizes
        from quant.sources import batches_digest

        return MetaDataset(HTTPDatasetSource("https://quantstage.invalid/" + source), name=f"{context}:{source}",
                           digest=batches_digest(batches)[:8])


@task(name="log_data_lineage", **_IO)
def log_data_lineage(run_id: str, dataset: Any, spec: Any) -> None:
    """Record with ``mlflow.log_input`` which data calibrated and evaluated the model: source,
    digest, sample and batch counts, input shapes, overlap between the splits."""
    with mlflow.start_run(run_id=run_id):
        for context, batches in (("calibration", dataset.calibration), ("evaluation", dataset.evaluation)):
            source = spec.evaluation_source if context == "evaluation" and spec.evaluation_source else spec.source
            mlflow.log_input(_split_dataset(batches, dataset.input_names, source, context), context=context, tags={
                "source": source, "samples": str(sum(batch_len(x) for x, _ in batches)), "batches": str(len(batches)),
                "inputs": dataset.describe(), "seed": str(spec.seed),
            })
        mlflow.set_tags({"data.digest": dataset.digest(), "data.overlap_samples": str(dataset.overlap)})


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


def digest(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts`` (idempotency keys, evaluation digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@task(name="find_version_by_key", **_IO)
def find_version_by_key(name: str, key: str) -> dict[str, Any] | None:
    """The registered version of ``name`` tagged ``idempotency_key=key`` (oldest first), or None.

    Returns ``{"version", "run_id", "source", "tags", "metrics"}`` of that version."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{name}' and tags.idempotency_key = '{key}'")
    if not found:
        return None
    mv = min(found, key=lambda v: int(v.version))
    run_id = mv.tags.get("mlflow_run_id") or mv.run_id or ""
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    return {"version": str(mv.version), "run_id": run_id, "source": mv.source, "tags": dict(mv.tags), "metrics": dict(metrics)}


@task(name="resolve_source", **_IO)
def resolve_source(model_uri: str) -> tuple[str | None, str | None, str | None]:
    """``(registered name, version, run id)`` the source URI resolves to now (for the idempotency key)."""
    from tasks.load import resolve_model_uri

    return resolve_model_uri(model_uri)


REGISTRY_LIMIT = "quantstage-registry"


@contextlib.contextmanager
def registry_lock(timeout_seconds: float = 300) -> Iterator[None]:
    """One registrar at a time across every worker: a Prefect global concurrency limit of 1
    (``quantstage-registry``, created on first use) around check-then-register."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(REGISTRY_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=REGISTRY_LIMIT, limit=1))
    with concurrency(REGISTRY_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


@task(name="tag_version", **_IO)
def tag_version(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on registry version ``name``/``version``."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _alias_holder(client: mlflow.MlflowClient, name: str, alias: str):  # noqa: ANN202
    try:
        aliases = client.get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered under this name yet
            return None
        raise
    if alias not in aliases:
        return None
    return client.get_model_version_by_alias(name, alias)


@task(name="compare_with_holder", **_IO)
def compare_with_holder(name: str, version: str, alias: str, metrics: Mapping[str, float], eval_digest: str) -> tuple[bool, str]:
    """Whether the new ``version`` is at least as good as the version holding ``alias``, and why.

    Compares ``int8_accuracy`` (else ``output_sqnr_db``) from the holder's MLflow run, only when
    the holder was evaluated on the same data and metrics (its ``eval_digest`` tag); otherwise
    says that it falls back to the gates."""
    client = mlflow.MlflowClient()
    holder = _alias_holder(client, name, alias)
    if holder is None:
        return True, f"no version holds @{alias} yet"
    if str(holder.version) == str(version):
        return True, f"version {version} already holds @{alias}"
    if holder.tags.get("eval_digest") != eval_digest:
        return True, (
            f"version {holder.version} holds @{alias} but was evaluated on other data/metrics "
            f"(eval_digest {holder.tags.get('eval_digest', 'missing')} != {eval_digest}): gates only"
        )
    run_id = holder.tags.get("mlflow_run_id") or holder.run_id
    theirs = client.get_run(run_id).data.metrics if run_id else {}
    for metric in ("int8_accuracy", "output_sqnr_db"):
        if metric in theirs and metric in metrics:
            mine, best = float(metrics[metric]), float(theirs[metric])
            if mine >= best:
                return True, f"{metric} {mine:.4f} >= {best:.4f} of version {holder.version} (@{alias})"
            return False, f"{metric} {mine:.4f} < {best:.4f} of version {holder.version}, which keeps @{alias}"
    return True, f"version {holder.version} (@{alias}) has no comparable metric logged: gates only"
