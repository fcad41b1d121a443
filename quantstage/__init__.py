"""quantstage: a trained PyTorch model in, a verified int8 model out, shipped through Prefect and MLflow.

The library (pure torch + pydantic)::

    from quantstage import FxSpec, quantize
    quantized = quantize(model, FxSpec(backend="x86"), calibration_batches)
    quantized.model, quantized.coverage.summary()

The pipeline (Prefect flow; MLflow tracking, registry and promotion)::

    from quantstage import ConvertParams, convert_flow
    result = convert_flow(ConvertParams(model_uri="models:/my-model@champion"))

The source folders ``quant/`` (the library), ``tasks/`` (Prefect tasks, all MLflow I/O) and
``flows/`` (orchestration) are installed as ``quantstage.quant``, ``quantstage.tasks`` and
``quantstage.flows``; nothing lands at the top level of site-packages but ``quantstage``.
The library's and the flows' names load torch, Prefect and MLflow on first use only: ``import quantstage``
stays light.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

# In a source checkout the three folders sit beside this one (pyproject.toml maps them under
# quantstage when installing); make them importable as quantstage.* from the tree as well.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "quant" / "__init__.py").is_file():
    __path__.append(str(_ROOT))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("quantstage")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


if TYPE_CHECKING:
    __version__: str
    from quantstage.flows import (
        ConvertParams,
        ConvertResult,
        GateFailure,
        SweepFailure,
        SweepParams,
        SweepResult,
        convert_flow,
        sweep_flow,
    )
    from quantstage.quant import (
        FxSpec,
        Pt2eSpec,
        Quantized,
        QuantSpec,
        QuantStageError,
        load_spec,
        parse_spec,
        quantize,
    )

_FLOWS = (
    "ConvertParams",
    "ConvertResult",
    "GateFailure",
    "SweepFailure",
    "SweepParams",
    "SweepResult",
    "convert_flow",
    "sweep_flow",
)

__all__ = [
    "ConvertParams",
    "ConvertResult",
    "FxSpec",
    "GateFailure",
    "Pt2eSpec",
    "QuantSpec",
    "QuantStageError",
    "Quantized",
    "SweepFailure",
    "SweepParams",
    "SweepResult",
    "__version__",
    "convert_flow",
    "load_spec",
    "parse_spec",
    "quantize",
    "sweep_flow",
]


# The library's names load torch on first use too: the command line installs its Ctrl-C handling
# before anything heavy is imported.
_LIBRARY = ("FxSpec", "Pt2eSpec", "Quantized", "QuantSpec", "QuantStageError", "load_spec", "parse_spec", "quantize")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _FLOWS:
        return getattr(import_module("quantstage.flows"), name)
    if name in _LIBRARY:
        return getattr(import_module("quantstage.quant"), name)
    raise AttributeError(f"module 'quantstage' has no attribute {name!r}")
