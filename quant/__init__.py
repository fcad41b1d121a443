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
- ``ship``: what an engine ships, as data (the verified form, how MLflow logs and serves it), the served
  call signature; each engine's own forms (FX: TorchScript, rebuild bundles; PT2E: AOTInductor packages)
  live in its package;
- ``search``: accuracy-aware fallback, ranking of sweep candidates;
- ``report``: the Markdown report and charts.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from quantstage.quant.calibrate import calibrate
from quantstage.quant.config import ObserverSpec, QConfigMappingSpec, QConfigOverride, SpecBase
from quantstage.quant.data import Dataset, DataSpec, ModelSource, check_inputs_fit, load_data
from quantstage.quant.engines import (
    Engine,
    FxSpec,
    Pt2eSpec,
    QuantSpec,
    engine_for,
    get_engine,
    load_spec,
    parse_spec,
)
from quantstage.quant.engines.fx.spec import ConvertCustomSpec, PrepareCustomSpec
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
from quantstage.quant.ship import VariantResult
from quantstage.quant.tracing import SubmoduleCoverage, TracingPlan

if TYPE_CHECKING:  # the FX engine's own names load torch.ao on first use (below): building a spec does not
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
    from quantstage.quant.engines.fx.rebuild import rebuild
    from quantstage.quant.engines.fx.torchscript import TorchScriptArtifact, export_torchscript, load_torchscript
    from quantstage.quant.engines.fx.variants import select_variant

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
    "FxSpec",
    "Pt2eSpec",
    "QuantSpec",
    "SpecBase",
    "load_spec",
    "parse_spec",
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

# name -> module of the FX engine's drop-ins, imported on first use: importing quantstage.quant (to build a
# spec: quant.config, quant.engines) loads no engine framework
_FX_NAMES = {
    "ReferenceModel": "quantstage.quant.engines.fx.engine",
    "TorchScriptArtifact": "quantstage.quant.engines.fx.torchscript",
    "check_skips": "quantstage.quant.engines.fx.engine",
    "convert": "quantstage.quant.engines.fx.engine",
    "degenerate_ranges": "quantstage.quant.engines.fx.engine",
    "export_torchscript": "quantstage.quant.engines.fx.torchscript",
    "find_unused_skips": "quantstage.quant.engines.fx.engine",
    "load_qat_checkpoint": "quantstage.quant.engines.fx.engine",
    "load_torchscript": "quantstage.quant.engines.fx.torchscript",
    "lower": "quantstage.quant.engines.fx.engine",
    "prepare": "quantstage.quant.engines.fx.engine",
    "rebuild": "quantstage.quant.engines.fx.rebuild",
    "reference_convert": "quantstage.quant.engines.fx.engine",
    "save_qat_checkpoint": "quantstage.quant.engines.fx.engine",
    "select_variant": "quantstage.quant.engines.fx.variants",
}


def __getattr__(name: str) -> Any:
    if name in _FX_NAMES:
        value = getattr(import_module(_FX_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
