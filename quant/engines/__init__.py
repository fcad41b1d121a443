"""Quantization engines behind one interface (``Engine``); ``engine_for(spec)`` picks one."""

from __future__ import annotations

from quantstage.quant.config.spec import QuantSpec
from quantstage.quant.engines.base import Engine, Reference, UnusedSkip
from quantstage.quant.errors import SpecError

__all__ = ["Engine", "Reference", "UnusedSkip", "engine_for", "get_engine"]


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (``fx`` or ``pt2e``)."""
    if name == "fx":
        from quantstage.quant.engines.fx.engine import FX_ENGINE

        return FX_ENGINE
    if name == "pt2e":
        from quantstage.quant.engines.pt2e.engine import PT2E_ENGINE

        return PT2E_ENGINE
    raise SpecError(f"engine {name!r} is unknown; allowed: fx, pt2e")


def engine_for(spec: QuantSpec) -> Engine:
    """The engine ``spec.engine`` names."""
    return get_engine(spec.engine)
