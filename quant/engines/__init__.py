"""Quantization engines behind one interface (``Engine``), and the specs they read.

``registry.REGISTRY`` lists the engines, one line each; ``QuantSpec`` (the union of their spec
classes, chosen by ``engine``), ``parse_spec``/``load_spec``, ``get_engine`` and ``engine_for(spec)``
come from it. Each engine's spec (``FxSpec``, ``Pt2eSpec``) imports no quantization framework.
"""

from __future__ import annotations

from quantstage.quant.config.spec import SpecBase
from quantstage.quant.engines.base import Engine, Reference, UnusedSkip
from quantstage.quant.engines.fx.spec import FxSpec
from quantstage.quant.engines.pt2e.spec import Pt2eSpec
from quantstage.quant.engines.registry import (
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
    "DEFAULT_ENGINE",
    "REGISTRY",
    "Engine",
    "EngineEntry",
    "Reference",
    "UnusedSkip",
    "engine_for",
    "get_engine",
    # the specs
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
