"""Tracking stage: the MLflow run of a conversion — opened, filled from a ``ConversionRecord``
(params, metrics, documents, tables, files, the shipped model, data lineage), closed.

Everything goes through ``MlflowClient`` calls on the run id, never ``mlflow.start_run``
blocks: leaving such a block ends the run as FINISHED, whatever happens next, and a run must
be RUNNING while it converts, FINISHED only on success, FAILED on a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from prefect import task

from quantstage.quant.data.inputs import args_of, batch_len, head
from quantstage.quant.data.sources import Batch, Dataset, DataSpec, batches_digest
from quantstage.quant.errors import one_line
from quantstage.quant.ship.aoti import AotiArtifact
from quantstage.quant.ship.torchscript import TorchScriptArtifact
from quantstage.tasks._common import IO_RETRIES, run_logger
from quantstage.tasks.model_signature import log_named_pytorch
from quantstage.tasks.model_signature import model_signature as _signature
from quantstage.tasks.record import ConversionRecord

__all__ = [
    "TORCH_REQUIREMENT",
    "digest",
    "end_run",
    "close_failed",
    "close_runs_of",
    "experiment_id",
    "fail_run",
    "log_conversion",
    "log_data_lineage",
    "log_metrics",
    "log_pytorch_model",
    "recover_orphaned_runs",
    "start_run",
    "use_tracking_uri",
]

TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"


def digest(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts`` (idempotency keys, evaluation digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def experiment_id(name: str) -> str:
    """The id of MLflow experiment ``name``, created when missing (no global fluent state)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


@task(name="start_run", **IO_RETRIES)
def start_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """Open an MLflow run in ``experiment`` and return its id."""
    run = mlflow.MlflowClient().create_run(experiment_id(experiment), run_name=run_name, tags=dict(tags))
    run_logger().info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, mlflow.get_tracking_uri())
    return str(run.info.run_id)


def use_tracking_uri(uri: str | None) -> None:
    """Point this process's MLflow client at ``uri`` (a worker is told where the flow's store is)."""
    if uri:
        mlflow.set_tracking_uri(uri)


def fail_run(run_id: str, error: str, detail: str = "", metrics: Mapping[str, float] | None = None) -> None:
    """Best effort: tag the run with the error (one line), keep ``detail`` (a traceback) as
    ``error.txt``, mark it FAILED. Never raises: the original error matters more."""
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "quantstage.error", error[:5000])
        if detail:
            client.log_text(run_id, detail, "error.txt")
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status="FAILED")


def close_failed(run_id: str, exc: BaseException) -> None:
    """Best effort, never raises: the run of a conversion that raised ends FAILED (KILLED when the flow
    run was cancelled), tagged with the one-line reason. The original error stays the one raised."""
    from prefect.exceptions import TerminationSignal

    killed = isinstance(exc, TerminationSignal)
    status = "KILLED" if killed else "FAILED"
    reason = "cancelled" if killed else one_line(f"{type(exc).__name__}: {exc}", 500)
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "quantstage.error", reason)
        client.set_terminated(run_id, status=status)


def close_runs_of(flow_run_id: str, status: str, reason: str) -> list[str]:
    """Best effort, never raises: every MLflow run a flow run left RUNNING ends ``status`` (KILLED on
    cancel, FAILED on crash) tagged with ``reason``; return their ids. The flow's on_cancellation
    and on_crashed hook: there the flow's own code never got to close them."""
    closed: list[str] = []
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        query = f"tags.`quantstage.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'"
        for run in client.search_runs(experiments, query) if experiments else []:
            client.set_tag(run.info.run_id, "quantstage.error", reason)
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


@task(name="recover_orphaned_runs", **IO_RETRIES)
def recover_orphaned_runs(experiment: str, key: str) -> list[str]:
    """Runs of this conversion (same idempotency key) still RUNNING although their flow run ended or
    vanished — a killed process left them — marked FAILED with the reason; return their ids."""
    from prefect.client.orchestration import get_client

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], f"tags.`quantstage.idempotency_key` = '{key}' and attributes.status = 'RUNNING'"
    )
    orphans = []
    with get_client(sync_client=True) as prefect:
        for run in runs:
            flow_run_id = run.data.tags.get("quantstage.flow_run_id", "")
            try:
                state = prefect.read_flow_run(uuid.UUID(flow_run_id)).state if flow_run_id else None
            except Exception:
                state = None
            if state is not None and not state.is_final():
                continue  # its flow run is alive: a concurrent conversion, not an orphan
            reason = f"orphaned: flow run {flow_run_id or '?'} ended ({state.name if state else 'unknown'}) without closing it"
            client.set_tag(run.info.run_id, "quantstage.error", reason)
            client.set_terminated(run.info.run_id, status="FAILED")
            orphans.append(run.info.run_id)
    if orphans:
        run_logger().warning("marked %d orphaned MLflow run(s) FAILED: %s", len(orphans), ", ".join(orphans))
    return orphans


def log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Best effort: log ``metrics`` to a run after the fact (timings)."""
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)


@task(name="end_run", **IO_RETRIES)
def end_run(run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
    """Close the MLflow run with ``status`` (FINISHED or FAILED), after setting ``tags``."""
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def log_pytorch_model(
    model: torch.nn.Module, example: Any, names: tuple[str, ...] | None = None, *, run_id: str | None = None
) -> str:
    """Log ``model`` with the pytorch flavor (pickle format: ScriptModules save natively) to ``run_id``
    (default: the active run); return its URI.

    ``example`` is the inputs of one batch (a tensor or a tuple of positional tensors). One tensor:
    the signature and input example are that array. Several (``names`` from ``forward``): the
    signature names each input tensor and the example is logged as ``model/input_example.json``
    — MLflow's pytorch pyfunc serves one array only, so callers load the model with
    ``mlflow.pytorch.load_model`` and call it with keyword (or positional) tensors.
    """
    args = args_of(example)
    with torch.no_grad():
        output = model(*args)
    model_id = None
    if run_id is not None:  # filed in the run's experiment (MLflow would use the default "0")
        experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        model_id = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment).model_id
    output_np = output.detach().numpy() if isinstance(output, torch.Tensor) else None
    if len(args) == 1 and isinstance(args[0], torch.Tensor):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            signature=infer_signature(args[0].numpy(), output_np),
            input_example=args[0].numpy(),
            pip_requirements=[TORCH_REQUIREMENT],
            run_id=run_id,
            model_id=model_id,
        )
        return str(info.model_uri)
    names = tuple(names or (f"input_{i}" for i in range(len(args))))
    arrays = {n: a.detach().numpy() for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
    info = log_named_pytorch(model, _signature(arrays, output_np), [TORCH_REQUIREMENT], run_id, model_id)
    target = run_id or mlflow.active_run().info.run_id  # type: ignore[union-attr]
    mlflow.MlflowClient().log_dict(target, {n: a.tolist() for n, a in arrays.items()}, "model/input_example.json")
    return str(info.model_uri)


def _features(args: tuple[Any, ...], names: Sequence[str] | None) -> tuple[Any, list[str]]:
    """The pyfunc input of positional tensors: one array, or a dict of arrays by input name; and the names."""
    named = list(names or (f"input_{i}" for i in range(len(args))))
    return (args[0].numpy() if len(args) == 1 else {n: a.numpy() for n, a in zip(named, args)}), named


def _log_pyfunc(run_id: str, features: Any, output: Any, **save: Any) -> str:
    """Save a pyfunc model (``save``: python_model, artifacts, ...) with its signature and input example and
    log it as the run's ``model`` folder; return its URI. (pyfunc.log_model would need an active run.)"""
    with tempfile.TemporaryDirectory(prefix="quantstage-pyfunc-") as tmp:
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(local, signature=_signature(features, output), input_example=features, **save)
        mlflow.MlflowClient().log_artifacts(run_id, str(local), "model")
    return f"runs:/{run_id}/model"


def _log_rebuild_model(run_id: str, bundle: str) -> str:
    """Log a rebuild bundle as a pyfunc model (the bundle travels as its artifact); return its URI.
    Signature and input example come from the example batch the bundle stores (first 2 samples)."""
    from quantstage.quant.ship.rebuild import example
    from quantstage.tasks.rebuild_model import RebuildModel

    inputs, output, names = example(bundle)
    features, _ = _features(args_of(head(inputs, 2)), names)
    return _log_pyfunc(
        run_id,
        features,
        output[:2].numpy(),
        python_model=RebuildModel(),
        artifacts={"bundle": bundle},
        pip_requirements=[TORCH_REQUIREMENT, "quantstage"],
    )


def log_aoti_model(run_id: str, artifact: AotiArtifact, example: Any, names: tuple[str, ...] | None) -> str:
    """Log an AOTInductor package as a pyfunc model ("models from code": loading needs mlflow, numpy and
    torch only) with its signature and input example; return its URI."""
    args = args_of(example)
    with torch.no_grad():
        output = artifact.module(*args)
    features, named = _features(args, names)
    return _log_pyfunc(
        run_id,
        features,
        output.detach().numpy(),
        python_model=str(Path(__file__).with_name("aoti_model.py")),
        artifacts={"package": str(artifact.path)},
        model_config={"input_names": named},
        pip_requirements=[TORCH_REQUIREMENT, "numpy"],
    )


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def log_record(client: mlflow.MlflowClient, run_id: str, record: ConversionRecord) -> None:
    """Params, metrics, text and JSON documents, tables and files of ``record``, on ``run_id``."""
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in record.params.items()]
    metrics = [mlflow.entities.Metric(k, float(v), 0, 0) for k, v in record.metrics.items() if v is not None]
    for start in range(0, max(len(params), len(metrics)), 100):  # log_batch takes at most 100 params
        client.log_batch(run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
    for name, text in record.documents.items():
        client.log_text(run_id, text, name)
    for name, data in record.json_documents.items():
        client.log_dict(run_id, data, name)
    for name, columns in record.tables.items():
        if columns and any(columns.values()):
            with warnings.catch_warnings():  # MLflow's own pandas-3 notice, raised inside log_table
                warnings.filterwarnings("ignore", message=r"For backward compatibility, 'str' dtypes")
                client.log_table(
                    run_id, data={k: [_finite(v) for v in col] for k, col in columns.items()}, artifact_file=name
                )
    for local_path, artifact_dir in record.files.items():
        client.log_artifact(run_id, local_path, artifact_dir)


@task(name="log_conversion", **IO_RETRIES)
def log_conversion(
    run_id: str,
    record: ConversionRecord,
    *,
    shipped: Any,
    bundle: str | None,
    example: Any,
    input_names: tuple[str, ...] | None = None,
) -> str:
    """Log ``record`` to the run, then the shipped model (the verified TorchScript module, an AOTInductor
    package or the rebuild bundle as a pyfunc model); return the model's URI. ``shipped`` is the artifact
    export_model verified (``TorchScriptArtifact``, ``AotiArtifact``) or a TorchScript module."""
    client = mlflow.MlflowClient()
    log_record(client, run_id, record)
    if isinstance(shipped, AotiArtifact):
        model_uri = log_aoti_model(run_id, shipped, head(example, 2), input_names)
    elif shipped is not None:
        module = shipped.module if isinstance(shipped, TorchScriptArtifact) else shipped
        model_uri = log_pytorch_model(module, head(example, 2), input_names, run_id=run_id)
    elif bundle is not None:
        model_uri = _log_rebuild_model(run_id, bundle)
    else:
        raise ValueError("log_conversion needs the shipped module or a rebuild bundle")
    client.set_tag(run_id, "quantstage.model_uri", model_uri)
    run_logger().info("logged quantized model %s", model_uri)
    return model_uri


def _split_dataset(batches: list[Batch], names: tuple[str, ...] | None, source: str, context: str) -> Any:
    """The split as an MLflow dataset: arrays when the batches concatenate, else a digest-only record."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.numpy_dataset import from_numpy

    try:
        columns = list(zip(*(args_of(x) for x, _ in batches)))
        arrays = [np.concatenate([t.detach().numpy() for t in column]) for column in columns]
        features = (
            arrays[0] if len(arrays) == 1 else dict(zip(names or [f"input_{i}" for i in range(len(arrays))], arrays))
        )
        labels = [y for _, y in batches if y is not None]
        targets = np.concatenate([y.numpy() for y in labels]) if len(labels) == len(batches) else None
        with warnings.catch_warnings():  # a file path resolves to two equivalent local sources
            warnings.filterwarnings(
                "ignore", message=r"The specified dataset source can be interpreted in multiple ways"
            )
            return from_numpy(features, targets=targets, source=source, name=f"{context}:{source}")  # type: ignore[arg-type]  # None: no targets
    except Exception:  # ragged batches or a source MLflow cannot resolve: keep name, digest and sizes
        origin = HTTPDatasetSource("https://quantstage.invalid/" + source)  # type: ignore[no-untyped-call]
        return MetaDataset(origin, name=f"{context}:{source}", digest=batches_digest(batches)[:8])  # type: ignore[abstract]


@task(name="log_data_lineage", **IO_RETRIES)
def log_data_lineage(run_id: str, dataset: Dataset, spec: DataSpec) -> None:
    """Record with ``log_inputs`` which data calibrated and evaluated the model: source, digest,
    sample and batch counts, input shapes, overlap between the splits. The run stays RUNNING."""
    from mlflow.entities import DatasetInput, InputTag

    client = mlflow.MlflowClient()
    inputs = []
    for context, batches in (("calibration", dataset.calibration), ("evaluation", dataset.evaluation)):
        source = spec.evaluation_source if context == "evaluation" and spec.evaluation_source else spec.source
        entity = _split_dataset(batches, dataset.input_names, source, context)._to_mlflow_entity()
        tags = {
            "mlflow.data.context": context,
            "source": source,
            "samples": str(sum(batch_len(x) for x, _ in batches)),
            "batches": str(len(batches)),
            "inputs": dataset.describe(),
            "seed": str(spec.seed),
        }
        inputs.append(DatasetInput(entity, [InputTag(k, v) for k, v in tags.items()]))
    client.log_inputs(run_id, datasets=inputs)
    client.set_tag(run_id, "data.digest", dataset.digest())
    client.set_tag(run_id, "data.overlap_samples", str(dataset.overlap))
