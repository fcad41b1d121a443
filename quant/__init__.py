"""quantstage's quantization library: pure torch + pydantic, no Prefect, no MLflow.

FX graph-mode quantization is reached only through ``quant._fx`` so a PT2E engine can be
added beside it.
"""

from quant.artifacts import TorchScriptArtifact, export_torchscript, load_torchscript
from quant.benchmark import BenchmarkReport, LatencyStats, benchmark
from quant.convert import ReferenceModel, convert, lower, reference_convert
from quant.errors import (
    ArtifactError,
    ConversionError,
    DataError,
    QuantStageError,
    SourceError,
    SpecError,
    TracingError,
)
from quant.evaluate import AccuracyReport, evaluate, sqnr_db
from quant.gates import GateResult, GatesConfig, check_gates
from quant.prepare import calibrate, check_inputs_fit, prepare
from quant.sources import DataSpec, Dataset, load_data
from quant.spec import QuantSpec, load_spec

__all__ = [
    # conversion (convert_fx, decomposed)
    "ReferenceModel",
    "convert",
    "lower",
    "reference_convert",
    # configuration
    "DataSpec",
    "GatesConfig",
    "QuantSpec",
    "load_spec",
    # stages
    "AccuracyReport",
    "BenchmarkReport",
    "Dataset",
    "GateResult",
    "LatencyStats",
    "TorchScriptArtifact",
    "benchmark",
    "calibrate",
    "check_gates",
    "check_inputs_fit",
    "evaluate",
    "export_torchscript",
    "load_data",
    "load_torchscript",
    "prepare",
    "sqnr_db",
    # errors
    "ArtifactError",
    "ConversionError",
    "DataError",
    "QuantStageError",
    "SourceError",
    "SpecError",
    "TracingError",
]
