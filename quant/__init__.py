"""quantstage's quantization library: pure torch + pydantic, no Prefect, no MLflow.

One entry point, ``quantize(model, spec, calibration)``, returns a ``Quantized`` (the model,
how it was captured, its reference and lowered parts, its coverage); its steps
(``prepare_model`` → ``Prepared.calibrate`` → ``Prepared.reference`` → ``Referenced.lower``)
are public for pipelines that run them apart. ``convert``, ``reference_convert`` and ``lower``
are the FX engine's ``convert_fx`` drop-in, decomposed. Subpackages:

- ``config``: ``QuantSpec`` and its qconfig mappings, as data;
- ``engines``: the ``Engine`` interface and its implementations (``engines.fx``: every
  torch.ao / torch.fx import of the project);
- ``tracing``: models that do not trace as a whole, quantized by submodules;
- ``data``: model and data sources, batches of inputs;
- ``measure``: evaluation, coverage, sensitivity, benchmark, gates;
- ``ship``: verified TorchScript, the fastest correct form, rebuild bundles;
- ``search``: accuracy-aware fallback, ranking of sweep candidates;
- ``report``: the Markdown report and charts.
"""

from quantstage.quant.calibrate import calibrate
from quantstage.quant.config import (
    ConvertCustomSpec,
    ObserverSpec,
    PrepareCustomSpec,
    QConfigMappingSpec,
    QConfigOverride,
    QuantSpec,
    load_spec,
)
from quantstage.quant.data import Dataset, DataSpec, ModelSource, check_inputs_fit, load_data
from quantstage.quant.engines import Engine, engine_for, get_engine
from quantstage.quant.engines.fx.engine import (
    ReferenceModel,
    check_skips,
    convert,
    degenerate_ranges,
    find_unused_skips,
    load_qat_checkpoint,
    lower,
    prepare,
    reference_convert,
    save_qat_checkpoint,
)
from quantstage.quant.errors import (
    ArtifactError,
    ConversionError,
    DataError,
    QuantStageError,
    SourceError,
    SpecError,
    TracingError,
)
from quantstage.quant.measure import (
    AccuracyReport,
    BenchmarkReport,
    Coverage,
    CoverageReport,
    EvaluationSpec,
    GateResult,
    GatesConfig,
    LatencyStats,
    LayerSensitivity,
    benchmark,
    check_gates,
    evaluate,
    sqnr_db,
)
from quantstage.quant.quantize import Prepared, Quantized, Referenced, prepare_model, quantize
from quantstage.quant.search import FallbackConfig, FallbackResult, search_fallback
from quantstage.quant.ship import (
    TorchScriptArtifact,
    VariantResult,
    export_torchscript,
    load_torchscript,
    rebuild,
    select_variant,
)
from quantstage.quant.tracing import SubmoduleCoverage, TracingPlan

__all__ = [
    # the entry point and its steps
    "Prepared",
    "Quantized",
    "Referenced",
    "prepare_model",
    "quantize",
    # convert_fx, decomposed (FX engine)
    "ReferenceModel",
    "calibrate",
    "convert",
    "lower",
    "prepare",
    "reference_convert",
    # engines
    "Engine",
    "engine_for",
    "get_engine",
    # configuration
    "ConvertCustomSpec",
    "DataSpec",
    "EvaluationSpec",
    "FallbackConfig",
    "GatesConfig",
    "ModelSource",
    "ObserverSpec",
    "PrepareCustomSpec",
    "QConfigMappingSpec",
    "QConfigOverride",
    "QuantSpec",
    "load_spec",
    # QAT input
    "load_qat_checkpoint",
    "save_qat_checkpoint",
    # measurement and shipping
    "AccuracyReport",
    "BenchmarkReport",
    "Coverage",
    "CoverageReport",
    "Dataset",
    "FallbackResult",
    "GateResult",
    "LatencyStats",
    "LayerSensitivity",
    "SubmoduleCoverage",
    "TorchScriptArtifact",
    "TracingPlan",
    "VariantResult",
    "benchmark",
    "check_gates",
    "check_inputs_fit",
    "check_skips",
    "degenerate_ranges",
    "evaluate",
    "export_torchscript",
    "find_unused_skips",
    "load_data",
    "load_torchscript",
    "rebuild",
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
