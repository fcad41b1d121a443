"""The pyfunc model MLflow serves for the FX engine's rebuild bundle (``quant.engines.fx.rebuild``): its
``ModelForm`` names this loader (``quantstage.tasks.rebuild_model:RebuildModel``); imported only when a bundle is
logged or loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc.model import PythonModel

__all__ = ["RebuildModel"]


class RebuildModel(PythonModel):
    """pyfunc wrapper of a rebuild bundle (``artifacts["bundle"]``): ``predict`` takes one array, or a
    dict of arrays named after ``forward``'s arguments; needs quantstage and the factory importable."""

    # predict takes an array or a dict of arrays, which MLflow's type-hint validation cannot
    # express; the logged signature (tensor specs) documents the inputs instead
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from quantstage.quant import rebuild

        bundle = context.artifacts["bundle"]
        self.model = rebuild(bundle)
        self.names = json.loads((Path(bundle) / "rebuild.json").read_text())["input_names"]

    # no annotations: MLflow infers a signature from predict's type hints (the logged one is better)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, dict):
            args = [torch.as_tensor(np.asarray(model_input[n])) for n in self.names]
        else:
            args = [torch.as_tensor(np.asarray(model_input))]
        with torch.no_grad():
            return self.model(*args).numpy()
