"""The PT2E engine: ``torch.export`` + torchao's ``prepare_pt2e``/``convert_pt2e`` with
``X86InductorQuantizer``, lowered by Inductor into an AOTInductor package.

Every torchao import of quantstage lives in this package; ``Pt2eEngine`` implements
``quant.engines.Engine`` on top of its modules:

- ``_torchao``: the torchao imports (one error when it is missing);
- ``spec``: ``Pt2eSpec``, the spec this engine reads, refusing what only FX understands (no torchao import);
- ``quantizer``: the spec as an X86InductorQuantizer, and what only torchao can refuse (the engine's check);
- ``capture``: torch.export with a dynamic batch dimension, errors that name the construct;
- ``convert``: prepare (export + prepare_pt2e), reference (convert_pt2e);
- ``package``: the Inductor lowering into an AOTInductor package, checked against the reference;
- ``coverage``, ``sensitivity`` (torchao's numeric debugger).

The whole model is exported (``tracing: auto`` or ``whole``); a model torch.export cannot capture
is a TracingError that names the construct and suggests the FX engine's submodule path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantstage.quant.lazy import lazy_getattr

if TYPE_CHECKING:
    from quantstage.quant.engines.pt2e.engine import PT2E_ENGINE, Pt2eEngine

__all__ = ["PT2E_ENGINE", "Pt2eEngine"]


# the engine loads its framework on first use: importing the package (its spec) stays light
__getattr__ = lazy_getattr(__name__, {name: f"{__name__}.engine" for name in __all__})
