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

from typing import TYPE_CHECKING

from quantstage.quant.lazy import lazy_getattr

if TYPE_CHECKING:
    from quantstage.quant.engines.fx.engine import FX_ENGINE, FxEngine

__all__ = ["FX_ENGINE", "FxEngine"]


# the engine loads its framework on first use: importing the package (its spec) stays light
__getattr__ = lazy_getattr(__name__, {name: f"{__name__}.engine" for name in __all__})
