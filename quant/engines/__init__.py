"""Quantization engines behind one interface (``Engine``), and the specs they read.

``registry.REGISTRY`` lists the engines, one line each; ``QuantSpec`` (the union of their spec
classes, chosen by ``engine``), ``parse_spec``/``load_spec``, ``get_engine`` and ``engine_for(spec)``
come from it. Each engine's spec (``FxSpec``, ``Pt2eSpec``) imports no quantization framework. ``AutoSpec``
(``engine: auto``) names no engine of its own: the pipeline races its candidates (``quant.search.engines``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantstage.quant.lazy import lazy_getattr

if TYPE_CHECKING:
    from quantstage.quant.config.spec import SpecBase
    from quantstage.quant.engines.auto import AutoSpec
    from quantstage.quant.engines.base import Engine, Reference, UnusedSkip
    from quantstage.quant.engines.fx.spec import FxSpec
    from quantstage.quant.engines.pt2e.spec import Pt2eSpec
    from quantstage.quant.engines.registry import (
        AUTO,
        DEFAULT_ENGINE,
        REGISTRY,
        CheckedSpec,
        EngineEntry,
        QuantSpec,
        check_spec,
        default_spec,
        engine_for,
        get_engine,
        load_spec,
        parse_spec,
        parse_spec_json,
        spec_class,
    )

__all__ = [
    # the engines
    "AUTO",
    "DEFAULT_ENGINE",
    "REGISTRY",
    "Engine",
    "EngineEntry",
    "Reference",
    "UnusedSkip",
    "engine_for",
    "get_engine",
    # the specs
    "AutoSpec",
    "CheckedSpec",
    "FxSpec",
    "Pt2eSpec",
    "QuantSpec",
    "SpecBase",
    "check_spec",
    "default_spec",
    "load_spec",
    "parse_spec",
    "parse_spec_json",
    "spec_class",
]

# name -> its module, imported on first use: a spec module of an engine (``fx/spec.py``) imports this package
# first, and building a spec must import neither torch nor an engine's framework
_EXPORTS = {
    "AUTO": "quantstage.quant.engines.registry",
    "AutoSpec": "quantstage.quant.engines.auto",
    "CheckedSpec": "quantstage.quant.engines.registry",
    "DEFAULT_ENGINE": "quantstage.quant.engines.registry",
    "Engine": "quantstage.quant.engines.base",
    "EngineEntry": "quantstage.quant.engines.registry",
    "FxSpec": "quantstage.quant.engines.fx.spec",
    "Pt2eSpec": "quantstage.quant.engines.pt2e.spec",
    "QuantSpec": "quantstage.quant.engines.registry",
    "REGISTRY": "quantstage.quant.engines.registry",
    "Reference": "quantstage.quant.engines.base",
    "SpecBase": "quantstage.quant.config.spec",
    "UnusedSkip": "quantstage.quant.engines.base",
    "check_spec": "quantstage.quant.engines.registry",
    "default_spec": "quantstage.quant.engines.registry",
    "engine_for": "quantstage.quant.engines.registry",
    "get_engine": "quantstage.quant.engines.registry",
    "load_spec": "quantstage.quant.engines.registry",
    "parse_spec": "quantstage.quant.engines.registry",
    "parse_spec_json": "quantstage.quant.engines.registry",
    "spec_class": "quantstage.quant.engines.registry",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)
