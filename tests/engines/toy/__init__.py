"""The toy engine: dynamic int8 ``nn.Linear`` in plain torch, shipped as TorchScript.

It exists to prove CONTRIBUTING's "Adding an engine": ``tests/engines/test_toy_engine.py`` copies quantstage,
drops this folder in as ``quant/engines/toy/``, adds its line to ``quant/engines/registry.py`` and converts a
model with ``engine: toy`` end to end through the CLI. Like the real engines, the package imports light: the
spec (``spec``) loads without the engine (``engine``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import TOY_ENGINE, ToyEngine

__all__ = ["TOY_ENGINE", "ToyEngine"]


def __getattr__(name: str) -> Any:
    """The engine loads on first use: importing the package (its spec) stays light."""
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
