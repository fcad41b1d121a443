"""What a model returns, reduced to the one tensor every stage compares.

A Hugging Face model returns a ``ModelOutput`` (``last_hidden_state``, ``pooler_output``, ...), others
a dict, a tuple or a dataclass of tensors. ``output_key`` decides once, on one forward of the float
model, which part counts: the field (or index) the user names, else the first tensor (for a
``ModelOutput`` that is ``last_hidden_state`` or ``logits``); anything else is a ``DataError``
naming the type returned and the flag to use. ``with_output`` wraps a model so that it returns
that tensor: evaluation, export (the shipped model returns it), benchmark and the MLflow signature
all see the same selection, while quantization runs on the model as it is (module paths unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from quantstage.quant.errors import DataError

__all__ = ["OutputOf", "output_key", "select_output", "with_output"]

_FLAG = "fix: name the output to compare with output: <name> (CLI --output NAME)"


def _fields(output: Any) -> list[tuple[str, Any]]:
    """``(name, value)`` of a mapping, a dataclass or a sequence (names are indices there)."""
    if isinstance(output, Mapping):
        return [(str(k), v) for k, v in output.items()]
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    if isinstance(output, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(output)]
    return []


def _describe(output: Any) -> str:
    names = [f"{name}: {type(value).__name__}" for name, value in _fields(output)]
    return f"{type(output).__name__}" + (
        f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
    )


def output_key(output: Any, requested: str | None, where: str) -> str | None:
    """Which part of ``output`` (one forward's result of ``where``) every stage compares: None for a
    tensor; ``requested`` when given and present; else the first tensor field. DataError otherwise."""
    if isinstance(output, torch.Tensor):
        if requested is not None:
            raise DataError(
                f"{where} returns a tensor, so output {requested!r} names nothing; fix: drop output (--output)"
            )
        return None
    fields = _fields(output)
    if requested is not None:
        found = dict(fields).get(requested)
        if isinstance(found, torch.Tensor):
            return requested
        tensors = [name for name, value in fields if isinstance(value, torch.Tensor)]
        raise DataError(
            f"{where} returns {_describe(output)}, whose {requested!r} is "
            f"{'missing' if found is None else type(found).__name__ + ', not a tensor'}; allowed: {tensors}; "
            f"fix: output: <one of them> (--output NAME)"
        )
    first = next((name for name, value in fields if isinstance(value, torch.Tensor)), None)
    if first is None:
        raise DataError(f"{where} returns {_describe(output)}, which holds no tensor to compare; {_FLAG}")
    return first


def select_output(output: Any, key: str | None) -> torch.Tensor:
    """The part of ``output`` that ``key`` (from ``output_key``) names."""
    if key is None:
        if not isinstance(output, torch.Tensor):
            raise DataError(f"the model returned {_describe(output)} where a tensor was expected; {_FLAG}")
        return output
    if isinstance(output, Mapping):
        value = output[key]
    elif isinstance(output, (tuple, list)):
        value = output[int(key)]
    else:
        value = getattr(output, key)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"output {key!r} of the model is a {type(value).__name__}, not a tensor; {_FLAG}")
    return value


class OutputOf(nn.Module):
    """``model`` returning only its output ``key`` (a tensor): what is evaluated, shipped and served."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return select_output(self.model(*args, **kwargs), self.key)


def with_output(model: nn.Module, key: str | None) -> nn.Module:
    """``model`` itself when it returns a tensor (``key`` None), else ``OutputOf(model, key)``."""
    return model if key is None else OutputOf(model, key)
