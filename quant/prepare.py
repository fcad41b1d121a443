"""Prepare a float model for quantization and calibrate its observers."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from quant import _fx
from quant.errors import DataError, TracingError
from quant.sources import Batch
from quant.spec import QuantSpec

__all__ = ["calibrate", "check_inputs_fit", "prepare"]

logger = logging.getLogger(__name__)


def _shapes(inputs: Sequence[Any]) -> str:
    return ", ".join(
        str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs
    )


def check_inputs_fit(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> None:
    """Run ``model`` once on ``example_inputs``; raise DataError naming the shapes if it fails."""
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    except Exception as exc:  # any failure here means the data does not fit the model
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data batch of shape {_shapes(example_inputs)} does not fit "
            f"{type(model).__name__}.forward: {first_line}; fix: give data whose batches "
            f"have the input shape the model was trained on"
        ) from exc


class _ScopeTracer(torch.fx.Tracer):
    """A plain FX tracer that remembers which submodule it was inside when tracing failed."""

    def __init__(self, leaves: Sequence[str] = ()) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.leaves = set(leaves)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: torch.nn.Module, forward: Callable, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def _failing_scope(model: torch.nn.Module, leaves: Sequence[str] = ()) -> str | None:
    tracer = _ScopeTracer(leaves)
    try:
        tracer.trace(model)
    except Exception:
        return tracer.stack[-1] if tracer.stack else ""
    return None


def prepare(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], spec: QuantSpec
) -> GraphModule:
    """``prepare_fx`` ``model`` (a copy, in eval mode) for ``spec``; tracing failures name the module."""
    float_model = copy.deepcopy(model).eval()
    torch.backends.quantized.engine = spec.backend
    try:
        with _fx.fx_quiet():
            return _fx.prepare_fx(
                float_model,
                spec.qconfig_mapping(),
                example_inputs,
                prepare_custom_config=spec.prepare_custom_config(),
                backend_config=spec.backend_config_object(),
            )
    except Exception as exc:
        scope = _failing_scope(copy.deepcopy(model).eval(), spec.skip_modules)
        if scope is None:  # plain tracing works: the failure is not a tracing one
            raise
        where = f"module {scope!r}" if scope else f"the root forward of {type(model).__name__}"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TracingError(
            f"torch.fx cannot symbolically trace {type(model).__name__} (failed in {where}: "
            f"{first_line}); fix: make that forward free of data-dependent control flow, or keep "
            f"that module float and untraced with skip_modules=[{scope or '<module path>'!r}]"
        ) from exc


def calibrate(
    prepared: GraphModule,
    batches: Iterable[Batch],
    *,
    max_batches: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Run up to ``max_batches`` batches through ``prepared``'s observers; return how many ran."""
    seen = 0
    prepared.eval()
    with torch.no_grad():
        for inputs, _ in batches:
            if seen >= max_batches:
                break
            prepared(inputs)
            seen += 1
            if on_batch is not None:
                on_batch(seen, max_batches)
    if seen < max_batches:
        logger.warning("calibration saw %d batches, fewer than the %d asked for", seen, max_batches)
    return seen
