"""Logging stage: a conversion's record and its shipped model, in the conversion's MLflow run."""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from prefect import task

from quantstage.quant.data.inputs import args_of, head
from quantstage.quant.ship.shipped import ModelForm
from quantstage.tasks._common import IO_RETRIES, run_logger
from quantstage.tasks._gate import gated
from quantstage.tasks.model_signature import log_named_pytorch
from quantstage.tasks.model_signature import model_signature as _signature
from quantstage.tasks.record import ConversionRecord

__all__ = ["TORCH_REQUIREMENT", "log_conversion", "log_model_form", "log_pytorch_model", "log_record"]

TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"


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


def _python_model(loader: str) -> Any:
    """What ``mlflow.pyfunc.save_model`` takes as ``python_model`` for a ``ModelForm.loader``: an instance of
    ``package.module:Class``, or the file of the models-from-code module ``package.module`` (not imported:
    MLflow runs it when the model loads)."""
    module, _, cls = loader.partition(":")
    if cls:
        return getattr(importlib.import_module(module), cls)()
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"pyfunc loader {loader!r} names no importable module file; allowed: 'package.module:Class' (a "
            f"PythonModel) or 'package.module' (a models-from-code file); fix: the engine's ModelForm.loader"
        )
    return spec.origin


def _log_pyfunc_form(run_id: str, form: ModelForm, example: Any, names: Sequence[str] | None) -> str:
    """Log ``form.files`` as a pyfunc model served by ``form.loader``, with the signature and input example of
    ``form.module`` on ``example`` (``model_config["input_names"]``: forward's argument names); return its URI."""
    args = args_of(example)
    with torch.no_grad():
        output = form.module(*args)
    features, named = _features(args, names)
    return _log_pyfunc(
        run_id,
        features,
        output.detach().numpy(),
        python_model=_python_model(form.loader),
        artifacts=dict(form.files),
        model_config={"input_names": named},
        pip_requirements=[TORCH_REQUIREMENT, *form.requirements],
    )


def log_model_form(run_id: str, form: ModelForm, example: Any, names: Sequence[str] | None = None) -> str:
    """Log a shipped model as its engine's ``ModelForm`` says (pytorch flavor, or files behind a pyfunc loader)
    as the run's ``model``; return its URI. ``example`` is one batch of inputs (the signature's)."""
    if form.flavor == "pytorch":
        return log_pytorch_model(form.module, example, tuple(names) if names else None, run_id=run_id)
    return _log_pyfunc_form(run_id, form, example, names)


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
@gated("shared")
def log_conversion(
    run_id: str,
    record: ConversionRecord,
    *,
    form: ModelForm,
    example: Any,
    input_names: tuple[str, ...] | None = None,
) -> str:
    """Log ``record`` to the run, then the shipped model as its ``ModelForm`` says; return the model's URI."""
    client = mlflow.MlflowClient()
    log_record(client, run_id, record)
    model_uri = log_model_form(run_id, form, head(example, 2), input_names)
    client.set_tag(run_id, "quantstage.model_uri", model_uri)
    run_logger().info("logged quantized model %s", model_uri)
    return model_uri
