"""Where torch or the model failed after preparing, and which quantized parts to leave float for it.

On the submodule path a part that torch cannot calibrate, convert or lower, or that makes the
model fail once it is quantized, is left float (the coverage says why) rather than failing the
conversion; on the whole path, and when no part is to blame, the failure becomes one line naming
the stage, the module and the fix. Failures raised by quantstage's own code are not touched
(``quant.errors.raised_by_quantstage``): they are bugs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.data.inputs import call
from quantstage.quant.tracing.reroot import covers

__all__ = ["blamed_parts", "float_copy", "locate", "where"]


def locate(model: nn.Module, inputs: Any) -> tuple[str | None, Exception | None]:
    """Run ``model`` on one batch of ``inputs`` (no grad, eval); return (the path of the innermost
    module running when it raised, the exception), or (None, None) when it ran."""
    stack: list[str] = []
    names = {id(m): path for path, m in model.named_modules()}

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names.get(id(module), ""))

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        with torch.no_grad():
            call(model.eval(), inputs)
    except Exception as exc:  # what failed is the point: the caller classifies it
        return (stack[-1] if stack else ""), exc
    finally:
        for handle in handles:
            handle.remove()
    return None, None


def blamed_parts(path: str | None, parts: Sequence[str]) -> list[str]:
    """The quantized parts to leave float for a failure in the module at ``path``: the part it lies
    in, else (the code around parts failed) the parts under it."""
    if path is None:
        return []
    inside = [p for p in parts if covers(p, path)]
    if inside:
        return [max(inside, key=len)]
    return [p for p in parts if covers(path, p)]


def where(path: str | None, model: nn.Module) -> str:
    """A module path for a one-line error."""
    return f"module {path!r} of {type(model).__name__}" if path else f"the forward of {type(model).__name__}"


def float_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its parameters (to put a float part back)."""
    return copy.deepcopy(module, {id(p): p for p in module.parameters()})
