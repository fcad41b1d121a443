"""quantstage: a trained PyTorch model in, a verified int8 model out, shipped through Prefect and MLflow.

The library (pure torch + pydantic)::

    from quantstage import QuantSpec, quantize
    quantized = quantize(model, QuantSpec(backend="x86"), calibration_batches)
    quantized.model, quantized.coverage.summary()

The pipeline (Prefect flow; MLflow tracking, registry and promotion)::

    from quantstage import ConvertParams, convert_flow
    result = convert_flow(ConvertParams(model_uri="models:/my-model@champion"))

The source folders ``quant/`` (the library), ``tasks/`` (Prefect tasks, all MLflow I/O) and
``flows/`` (orchestration) are installed as ``quantstage.quant``, ``quantstage.tasks`` and
``quantstage.flows``; nothing lands at the top level of site-packages but ``quantstage``.
The flow names load Prefect and MLflow on first use only: ``import quantstage`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

# In a source checkout the three folders sit beside this one (pyproject.toml maps them under
# quantstage when installing); make them importable as quantstage.* from the tree as well.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "quant" / "__init__.py").is_file():
    __path__.append(str(_ROOT))

from quantstage.quant import (  # noqa: E402 - after the path set-up above
    Quantized,
    QuantSpec,
    QuantStageError,
    load_spec,
    quantize,
)

try:
    __version__ = _metadata.version("quantstage")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
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
    "GateFailure",
    "QuantSpec",
    "QuantStageError",
    "Quantized",
    "SweepFailure",
    "SweepParams",
    "SweepResult",
    "__version__",
    "convert_flow",
    "load_spec",
    "quantize",
    "sweep_flow",
]


def __getattr__(name: str) -> Any:
    if name in _FLOWS:
        return getattr(import_module("quantstage.flows"), name)
    raise AttributeError(f"module 'quantstage' has no attribute {name!r}")
