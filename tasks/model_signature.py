"""The MLflow signature of a model called like the float model, and the pytorch-flavor logging of a TorchScript
model of several inputs whose pyfunc takes a dict of named arrays (``tasks/torchscript_pyfunc.py``)."""

from __future__ import annotations

import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

__all__ = ["TORCHSCRIPT_LOADER", "log_named_pytorch", "model_signature"]


def log_named_pytorch(
    model: torch.nn.Module, signature: Any, requirements: list[str], run_id: str | None, model_id: str | None
) -> Any:
    """Log ``model`` with the pytorch flavor (pickle format) whose pyfunc is ``tasks/torchscript_pyfunc.py``
    (copied into the model's code folder); return MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory(prefix="quantstage-loader-") as tmp:
        loader = Path(tmp) / f"{TORCHSCRIPT_LOADER}.py"
        shutil.copyfile(Path(__file__).with_name("torchscript_pyfunc.py"), loader)
        return mlflow.models.Model.log(
            artifact_path=None,
            name="model",
            flavor=_NAMED_PYTORCH,
            pytorch_model=model,
            serialization_format="pickle",
            code_paths=[str(loader)],
            signature=signature,
            pip_requirements=requirements,
            run_id=run_id,
            model_id=model_id,
        )


TORCHSCRIPT_LOADER = "quantstage_torchscript_pyfunc"  # tasks/torchscript_pyfunc.py, in the model's code folder


def _save_named_pytorch(path: str, mlflow_model: Any, **kwargs: Any) -> None:
    """``mlflow.pytorch.save_model``, with the pyfunc flavor served by ``tasks/torchscript_pyfunc.py`` (predict
    takes a dict of named arrays) instead of MLflow's one-array pytorch pyfunc."""
    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = TORCHSCRIPT_LOADER
    mlflow_model.save(str(Path(path) / "MLmodel"))


_NAMED_PYTORCH = types.SimpleNamespace(__name__="mlflow.pytorch", save_model=_save_named_pytorch)


def model_signature(features: Any, output: Any) -> Any:
    """The MLflow signature of ``features`` (one array or a dict of named arrays) and ``output``: tensor specs
    named after forward's arguments; the batch dimension, and every dimension of integer inputs (token ids and
    masks: any sequence length), variable."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inferred = infer_signature(features, output)
    if not isinstance(features, dict):
        return inferred
    specs: list[ColSpec | TensorSpec] = [
        TensorSpec(
            a.dtype,
            tuple(-1 if i == 0 or np.issubdtype(a.dtype, np.integer) else d for i, d in enumerate(a.shape)),
            name,
        )
        for name, a in features.items()
    ]
    return ModelSignature(inputs=Schema(specs), outputs=inferred.outputs)
