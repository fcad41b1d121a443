"""The pyfunc loader of a TorchScript model of several inputs logged with the pytorch flavor.

MLflow's own pytorch pyfunc serves one array only; this loader (copied into the logged model's
``code`` folder as ``quantstage_torchscript_pyfunc`` and named its ``loader_module``) makes
``mlflow.pyfunc.load_model(uri).predict`` take a dict of arrays named after ``forward``'s arguments
(optional ones may be left out, as the shipped forward allows) or one array. ``mlflow.pytorch.load_model``
is unchanged: it returns the ScriptModule. Loading needs only mlflow, numpy and torch: keep this file
free of quantstage imports.
"""

from typing import Any

import numpy as np
import torch

MODULE_NAME = "quantstage_torchscript_pyfunc"


def _tensor(array: Any) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(np.asarray(array)))


class TorchScriptPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns the predictions of: the ScriptModule called with keyword tensors
    (a dict of arrays) or one positional tensor."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, data: Any, params: Any = None) -> Any:
        with torch.no_grad():
            if isinstance(data, dict):
                output = self.model(**{str(k): _tensor(v) for k, v in data.items()})
            else:
                output = self.model(_tensor(data))
        return output.detach().numpy()


def _load_pyfunc(path: str, model_config: Any = None) -> TorchScriptPyfunc:
    """Called by ``mlflow.pyfunc.load_model`` with the model's data folder."""
    import mlflow.pytorch

    return TorchScriptPyfunc(mlflow.pytorch._load_model(path))
