"""The pyfunc model MLflow serves for an AOTInductor package (the PT2E engine's ``ModelForm`` names this file,
``quantstage.tasks.aoti_model``), logged as "models from code".

MLflow copies this file into the logged model and runs it when the model loads, so loading needs
only mlflow, numpy and torch: no quantstage, no model class, no torchao. Keep it free of quantstage
imports. ``predict`` takes one array, or a dict of arrays named after ``forward``'s arguments
(``model_config["input_names"]``), and returns the model's output as an array. ``self.model`` (from
``unwrap_python_model()``) takes tensors positionally or by those names, in any order.
"""

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc.model import PythonModel


class NamedPackage:
    """A loaded AOTInductor package called like the float model: positional tensors in forward's order and/or
    keyword tensors by name. A package exported with keywords takes exactly that set (as named); one exported
    positionally takes ``names`` in order."""

    def __init__(self, package: Any, names: list[str]) -> None:
        self.package = package
        try:  # the keyword names the package was exported with, in order (none: positional)
            spec = torch.utils._pytree.treespec_loads(package.loader.get_call_spec()[0])
            self.keywords = [str(k) for k in spec.child(1).context]
        except Exception:
            self.keywords = []
        self.names = self.keywords or list(names)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and not self.keywords:
            return self.package(*args)
        if len(args) > len(self.names):
            raise TypeError(f"the model takes {len(self.names)} inputs ({', '.join(self.names)}), got {len(args)}")
        bound = dict(zip(self.names, args))
        twice, unknown = sorted(set(bound) & set(kwargs)), sorted(set(kwargs) - set(self.names))
        bound.update(kwargs)
        missing = [n for n in self.names if n not in bound]
        if twice or unknown or missing:
            raise TypeError(
                f"the model takes ({', '.join(self.names)}), all of them; given twice {twice}, unknown {unknown}, "
                f"missing {missing}"
            )
        if self.keywords:
            return self.package(**{n: bound[n] for n in self.keywords})
        return self.package(*(bound[n] for n in self.names))


class AotiPackageModel(PythonModel):
    """pyfunc wrapper of an AOTInductor package (``artifacts["package"]``)."""

    # predict takes an array or a dict of arrays, which MLflow's type-hint validation cannot
    # express; the logged signature (tensor specs) documents the inputs instead
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        names = list((context.model_config or {}).get("input_names") or [])
        self.model = NamedPackage(torch._inductor.aoti_load_package(context.artifacts["package"]), names)
        self.names = self.model.names

    # no annotations: MLflow infers a signature from predict's type hints (the logged one is better)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        def tensor(array: Any) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(np.asarray(array)))

        with torch.no_grad():
            if isinstance(model_input, dict):
                return self.model(**{n: tensor(a) for n, a in model_input.items()}).numpy()
            return self.model(tensor(model_input)).numpy()


mlflow.models.set_model(AotiPackageModel())
