"""What an engine ships, as plain data every stage can read without knowing the engine.

An engine's ``ship`` returns one ``Shipped``: the verified form it chose (``method``, ``path``), how MLflow logs
and serves it (``ModelForm``), how to load a fresh copy, and every form it tried (``VariantResult``). An engine
whose fallback ships what rebuilds the model (the FX engine's rebuild bundle) reads how the model was made from
an ``Origin``. ``tasks/log_model.py`` logs any ``ModelForm``; quant/ itself imports no MLflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from quantstage.quant.errors import ArtifactError

if TYPE_CHECKING:  # annotations only: the engines' registry builds QuantSpec, and engines import this module
    from quantstage.quant.data.model_source import ModelSource
    from quantstage.quant.engines.registry import QuantSpec

__all__ = ["Flavor", "ModelForm", "Origin", "Shipped", "VariantResult", "size_of"]

Flavor = Literal["pytorch", "pyfunc"]


@dataclasses.dataclass(frozen=True)
class VariantResult:
    """One deployable form of the quantized model, as measured."""

    name: str
    p50_ms: float | None
    max_abs_diff: float | None
    matches: bool
    shippable: bool  # can be saved and loaded in another process (TorchScript)
    error: str | None = None

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelForm:
    """How a shipped model is logged to MLflow and served.

    - ``flavor="pytorch"``: ``module`` is logged with MLflow's pytorch flavor (pickle format; a ScriptModule
      saves natively): ``mlflow.pytorch.load_model`` returns it, called like the float model, and
      ``mlflow.pyfunc.load_model(uri).predict`` takes one array or a dict of arrays named after forward's
      arguments.
    - ``flavor="pyfunc"``: ``files`` (artifact key -> local file or folder) are logged as a pyfunc model served
      by ``loader``: ``"package.module:Class"`` names an MLflow ``PythonModel`` class (instantiated when the
      model is logged), ``"package.module"`` an MLflow models-from-code file (copied into the logged model and
      run when it loads). ``module`` is the model those files hold, loaded: it computes the signature's output.

    ``requirements`` are the pip requirements beside torch (``"numpy"``, ``"quantstage"``).
    """

    flavor: Flavor
    module: nn.Module
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    loader: str = ""
    requirements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.flavor not in ("pytorch", "pyfunc"):
            raise ArtifactError(f"ModelForm flavor {self.flavor!r} is unknown; allowed: pytorch, pyfunc")
        if self.flavor == "pytorch" and (self.files or self.loader):
            raise ArtifactError(
                f"a pytorch-flavor ModelForm logs its module only, got files {sorted(self.files)} and loader "
                f"{self.loader!r}; fix: use flavor 'pyfunc' to log files with a loader"
            )
        if self.flavor == "pyfunc" and not (self.files and self.loader):
            raise ArtifactError(
                f"a pyfunc ModelForm needs files and a loader, got files {sorted(self.files)} and loader "
                f"{self.loader!r}; fix: give the files the loader opens and 'package.module[:Class]'"
            )


@dataclasses.dataclass(frozen=True)
class Shipped:
    """One verified form of the model, as an engine's ``ship`` chose it.

    ``method`` names the form (the ``export.method`` param); ``path`` is the saved file or folder, ``size_bytes``
    its size; ``form`` how MLflow logs and serves it (``module``: the model as loaded back and verified);
    ``load`` returns a freshly loaded copy, as a server loading the model sees it; ``variants`` are the forms
    tried, as measured; ``why`` says why a fallback form ships (empty when the engine's first choice does);
    ``note`` is what the report says about the form (empty: nothing to add).
    """

    method: str
    path: Path
    size_bytes: int
    form: ModelForm
    load: Callable[[], nn.Module]
    variants: list[VariantResult] = dataclasses.field(default_factory=list)
    why: str = ""
    note: str = ""

    @property
    def module(self) -> nn.Module:
        """The shipped model as loaded back and verified."""
        return self.form.module


@dataclasses.dataclass(frozen=True)
class Origin:
    """How a quantized model was made, for a form that ships what rebuilds it: ``model`` as ``quantize``
    returned it (no serving wrappers), its ``spec`` and ``tracing`` path, the float ``source``, the ``output``
    part that is served and ``input_names`` (forward's arguments the data binds, in positional order)."""

    model: nn.Module
    spec: QuantSpec
    tracing: str
    source: ModelSource
    output: str | None = None
    input_names: tuple[str, ...] | None = None


def size_of(path: Path) -> int:
    """Bytes in a file, or in every file under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
