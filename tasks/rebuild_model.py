"""The pyfunc model MLflow serves for a rebuild bundle (imported only when one is logged or loaded)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch

__all__ = ["RebuildModel"]

with warnings.catch_warnings():  # MLflow asks for type hints on predict; this wrapper takes an array or a dict
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")

    class RebuildModel(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper of a rebuild bundle (quant/rebuild.py): ``predict`` takes one array, or a
        dict of arrays named after ``forward``'s arguments; needs quantstage and the factory importable."""

        def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's interface
            from quant.rebuild import rebuild

            bundle = context.artifacts["bundle"]
            self.model = rebuild(bundle)
            self.names = json.loads((Path(bundle) / "rebuild.json").read_text())["input_names"]

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow's interface
            if isinstance(model_input, dict):
                args = [torch.as_tensor(np.asarray(model_input[n])) for n in self.names]
            else:
                args = [torch.as_tensor(np.asarray(model_input))]
            with torch.no_grad():
                return self.model(*args).numpy()
