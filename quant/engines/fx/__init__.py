"""The FX engine: torch.ao FX graph-mode quantization (``prepare_fx``, ``convert_fx`` decomposed).

Every ``torch.ao`` / ``torch.fx`` import of quantstage lives in this package; ``FxEngine``
implements ``quant.engines.Engine`` on top of its modules:

- ``_torch``: the torch.ao imports and the narrow warning filters around them;
- ``spec``: ``FxSpec``, the spec this engine reads (no torch.ao import: parsing a spec stays light);
- ``configs``: QConfigMapping, BackendConfig and custom configs built from an ``FxSpec``;
- ``prepare``: prepare_fx / prepare_qat_fx with tracing errors that name the module;
- ``convert``: reference_convert, lower and the convert_fx drop-in ``convert``;
- ``dynamic``: 8-bit activations for lowered dynamic Linear layers (torch hard-codes 7);
- ``coverage``, ``skips``, ``sensitivity`` (FX numeric suite), ``qat`` (checkpoints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantstage.quant.engines.fx.engine import FX_ENGINE, FxEngine

__all__ = ["FX_ENGINE", "FxEngine"]


def __getattr__(name: str) -> Any:
    """The engine loads its framework on first use: importing the package (its spec) stays light."""
    if name in __all__:
        from quantstage.quant.engines.fx import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
