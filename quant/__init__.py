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

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from quantstage.quant.lazy import lazy_getattr

if TYPE_CHECKING:
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
    from quantstage.quant.engines.fx.spec import ConvertCustomSpec, PrepareCustomSpec
    from quantstage.quant.engines.fx.torchscript import TorchScriptArtifact, export_torchscript, load_torchscript
    from quantstage.quant.engines.fx.variants import select_variant
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

# name -> the module it comes from, imported on first use: importing a subpackage (quant.config to build a
# spec) runs this file, which must import neither torch nor an engine's framework
_EXPORTS = {
    "AccuracyReport": "quantstage.quant.measure",
    "ArtifactError": "quantstage.quant.errors",
    "BenchmarkReport": "quantstage.quant.measure",
    "ConversionError": "quantstage.quant.errors",
    "ConvertCustomSpec": "quantstage.quant.engines.fx.spec",
    "Coverage": "quantstage.quant.measure",
    "CoverageReport": "quantstage.quant.measure",
    "DataError": "quantstage.quant.errors",
    "DataSpec": "quantstage.quant.data",
    "Dataset": "quantstage.quant.data",
    "Engine": "quantstage.quant.engines",
    "EvaluationSpec": "quantstage.quant.measure",
    "FallbackConfig": "quantstage.quant.search",
    "FallbackResult": "quantstage.quant.search",
    "FxSpec": "quantstage.quant.engines",
    "GateResult": "quantstage.quant.measure",
    "GatesConfig": "quantstage.quant.measure",
    "LatencyStats": "quantstage.quant.measure",
    "LayerSensitivity": "quantstage.quant.measure",
    "ModelSource": "quantstage.quant.data",
    "ObserverSpec": "quantstage.quant.config",
    "PrepareCustomSpec": "quantstage.quant.engines.fx.spec",
    "Prepared": "quantstage.quant.quantize",
    "Pt2eSpec": "quantstage.quant.engines",
    "QConfigMappingSpec": "quantstage.quant.config",
    "QConfigOverride": "quantstage.quant.config",
    "QuantSpec": "quantstage.quant.engines",
    "QuantStageError": "quantstage.quant.errors",
    "Quantized": "quantstage.quant.quantize",
    "ReferenceModel": "quantstage.quant.engines.fx.engine",
    "Referenced": "quantstage.quant.quantize",
    "SourceError": "quantstage.quant.errors",
    "SpecBase": "quantstage.quant.config",
    "SpecError": "quantstage.quant.errors",
    "SubmoduleCoverage": "quantstage.quant.tracing",
    "TorchScriptArtifact": "quantstage.quant.engines.fx.torchscript",
    "TracingError": "quantstage.quant.errors",
    "TracingPlan": "quantstage.quant.tracing",
    "VariantResult": "quantstage.quant.ship",
    "benchmark": "quantstage.quant.measure",
    "calibrate": "quantstage.quant.calibrate",
    "check_gates": "quantstage.quant.measure",
    "check_inputs_fit": "quantstage.quant.data",
    "check_skips": "quantstage.quant.engines.fx.engine",
    "convert": "quantstage.quant.engines.fx.engine",
    "degenerate_ranges": "quantstage.quant.engines.fx.engine",
    "engine_for": "quantstage.quant.engines",
    "evaluate": "quantstage.quant.measure",
    "export_torchscript": "quantstage.quant.engines.fx.torchscript",
    "find_unused_skips": "quantstage.quant.engines.fx.engine",
    "get_engine": "quantstage.quant.engines",
    "load_data": "quantstage.quant.data",
    "load_qat_checkpoint": "quantstage.quant.engines.fx.engine",
    "load_spec": "quantstage.quant.engines",
    "load_torchscript": "quantstage.quant.engines.fx.torchscript",
    "lower": "quantstage.quant.engines.fx.engine",
    "parse_spec": "quantstage.quant.engines",
    "prepare": "quantstage.quant.engines.fx.engine",
    "prepare_model": "quantstage.quant.quantize",
    "quantize": "quantstage.quant.quantize",
    "rebuild": "quantstage.quant.engines.fx.rebuild",
    "reference_convert": "quantstage.quant.engines.fx.engine",
    "save_qat_checkpoint": "quantstage.quant.engines.fx.engine",
    "search_fallback": "quantstage.quant.search",
    "select_variant": "quantstage.quant.engines.fx.variants",
    "sqnr_db": "quantstage.quant.measure",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)


class _Package(ModuleType):
    """This package, whose ``quantize`` and ``calibrate`` stay the functions once their modules
    (``quant/quantize.py``, ``quant/calibrate.py``) are imported — as an eager import would keep them."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and value.__name__ == f"{__name__}.{name}" and name in _EXPORTS:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
