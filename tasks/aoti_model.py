"""The pyfunc model MLflow serves for an AOTInductor package, logged as "models from code".

MLflow copies this file into the logged model and runs it when the model loads, so loading needs
only mlflow, numpy and torch: no quantstage, no model class, no torchao. Keep it free of quantstage
imports. ``predict`` takes one array, or a dict of arrays named after ``forward``'s arguments
(``model_config["input_names"]``), and returns the model's output as an array.
"""

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc.model import PythonModel


class AotiPackageModel(PythonModel):
    """pyfunc wrapper of an AOTInductor package (``artifacts["package"]``)."""

    # predict takes an array or a dict of arrays, which MLflow's type-hint validation cannot
    # express; the logged signature (tensor specs) documents the inputs instead
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.model = torch._inductor.aoti_load_package(context.artifacts["package"])
        self.names = list((context.model_config or {}).get("input_names") or [])

    # no annotations: MLflow infers a signature from predict's type hints (the logged one is better)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, dict):
            args = [torch.as_tensor(np.ascontiguousarray(model_input[n])) for n in self.names]
        else:
            args = [torch.as_tensor(np.ascontiguousarray(np.asarray(model_input)))]
        with torch.no_grad():
            return self.model(*args).numpy()


mlflow.models.set_model(AotiPackageModel())
