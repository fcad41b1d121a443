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
from quant.coverage import CoverageReport, coverage_report
from quant.evaluate import AccuracyReport, EvaluationSpec, evaluate, sqnr_db
from quant.fallback import FallbackConfig, FallbackResult, search_fallback
from quant.gates import GateResult, GatesConfig, check_gates
from quant.prepare import calibrate, check_inputs_fit, degenerate_ranges, prepare
from quant.qat import load_qat_checkpoint, save_qat_checkpoint
from quant.qconfig import ObserverSpec, QConfigMappingSpec, QConfigOverride
from quant.sensitivity import LayerSensitivity, layer_sensitivity
from quant.skips import check_skips, find_unused_skips
from quant.sources import DataSpec, Dataset, load_data
from quant.spec import ConvertCustomSpec, PrepareCustomSpec, QuantSpec, load_spec
from quant.variants import VariantResult, select_variant

__all__ = [
    # conversion (convert_fx, decomposed)
    "ReferenceModel",
    "convert",
    "lower",
    "reference_convert",
    # configuration
    "ConvertCustomSpec",
    "DataSpec",
    "EvaluationSpec",
    "FallbackConfig",
    "GatesConfig",
    "ObserverSpec",
    "PrepareCustomSpec",
    "QConfigMappingSpec",
    "QConfigOverride",
    "QuantSpec",
    "load_spec",
    # QAT input
    "load_qat_checkpoint",
    "save_qat_checkpoint",
    # stages
    "AccuracyReport",
    "BenchmarkReport",
    "CoverageReport",
    "Dataset",
    "FallbackResult",
    "GateResult",
    "LatencyStats",
    "LayerSensitivity",
    "TorchScriptArtifact",
    "VariantResult",
    "benchmark",
    "calibrate",
    "check_gates",
    "check_inputs_fit",
    "check_skips",
    "coverage_report",
    "degenerate_ranges",
    "evaluate",
    "export_torchscript",
    "find_unused_skips",
    "layer_sensitivity",
    "load_data",
    "load_torchscript",
    "prepare",
    "search_fallback",
    "select_variant",
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
