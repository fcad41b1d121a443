"""Model inputs of one batch: a tensor, a tuple of positional tensors, or keyword tensors.

Every stage calls a model on ``args_of(inputs)``: a bare tensor is one positional argument, a
tuple is the positional arguments. A batch that arrives as a dict of tensors is bound to the
model's ``forward`` signature once, when the data is loaded (``bind_to_forward``), so FX
preparation, calibration, evaluation, benchmarking and TorchScript export all see positional
arguments in signature order, while the names stay known for the MLflow signature.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from quantstage.quant.errors import DataError

__all__ = [
    "Inputs",
    "args_of",
    "batch_len",
    "bind_to_forward",
    "call",
    "check_inputs_fit",
    "describe",
    "forward_parameters",
    "head",
]

Inputs = torch.Tensor | tuple[Any, ...]

# What torch says when a batch has the wrong shape or dtype for a layer.
_SHAPE_WORDS = re.compile(
    r"shape|size|mat1|mat2|dimension|channels|expected .* (got|but)|out of range|scalar type|dtype", re.IGNORECASE
)
# What Python says when a batch has more or fewer arguments than forward takes.
_ARGUMENT_WORDS = re.compile(r"positional argument|keyword argument|required argument")


def args_of(inputs: Any) -> tuple[Any, ...]:
    """The positional arguments ``forward`` is called with."""
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def call(model: torch.nn.Module, inputs: Any) -> Any:
    """Run ``model`` on one batch of inputs: a dict as keyword arguments, anything else as ``args_of``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*args_of(inputs))


def batch_len(inputs: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 for a batch without tensors)."""
    for x in args_of(inputs):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return 1


def head(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a batch, in the same form (non-tensor arguments kept as they are);
    a dict of keyword tensors stays a dict."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, dict):
        return {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in inputs.items()}
    return tuple(x[:n] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in args_of(inputs))


def describe(inputs: Any, names: Sequence[str] | None = None) -> str:
    """Shapes of a batch for messages: ``(32, 1, 8, 8)`` or ``input_ids=(4, 16), attention_mask=(4, 16)``."""
    args = args_of(inputs)
    shapes = [str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in args]
    if names and len(names) >= len(shapes):
        return ", ".join(f"{n}={s}" for n, s in zip(names, shapes))
    return ", ".join(shapes)


def forward_parameters(model: torch.nn.Module) -> list[inspect.Parameter]:
    """The parameters of ``model.forward`` (without ``self``)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []


def _signature_text(model: torch.nn.Module) -> str:
    return f"{type(model).__name__}.forward({', '.join(p.name for p in forward_parameters(model))})"


def bind_to_forward(model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """Positional arguments (signature order) and their names for a dict batch.

    Arguments the batch leaves out take their defaults; a key that is not an argument, or a
    required argument that is missing, is a DataError naming it and the signature.
    """
    params = forward_parameters(model)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in positional]
    unknown = [k for k in batch if k not in names]
    if unknown:
        raise DataError(
            f"data batch key {unknown[0]!r} is not an argument of {_signature_text(model)}; "
            f"fix: name the batch's tensors after forward's arguments (got keys {sorted(batch)})"
        )
    last = max(names.index(k) for k in batch) if batch else -1
    args: list[Any] = []
    for p in positional[: last + 1]:
        if p.name in batch:
            args.append(batch[p.name])
        elif p.default is not inspect.Parameter.empty:
            args.append(p.default)
        else:
            raise DataError(
                f"data batch has no {p.name!r}, a required argument of {_signature_text(model)}; "
                f"fix: add it to every batch (got keys {sorted(batch)})"
            )
    missing = [p.name for p in positional[last + 1 :] if p.default is inspect.Parameter.empty]
    if missing:
        raise DataError(
            f"data batch has no {missing[0]!r}, a required argument of {_signature_text(model)}; "
            f"fix: add it to every batch (got keys {sorted(batch)})"
        )
    return tuple(args), tuple(names[: last + 1])


def check_inputs_fit(model: torch.nn.Module, example_inputs: Any, names: Sequence[str] | None = None) -> Any:
    """Run ``model`` once on ``example_inputs`` and return what it returned; raise DataError naming the
    arguments and shapes if it fails."""
    try:
        with torch.no_grad():
            return call(model.eval(), example_inputs)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapes, where = describe(example_inputs, names), f"{type(model).__name__}.forward"
        shape_complaint = isinstance(exc, (RuntimeError, IndexError)) and _SHAPE_WORDS.search(first_line)
        if shape_complaint or (isinstance(exc, TypeError) and _ARGUMENT_WORDS.search(first_line)):
            raise DataError(
                f"data batch of shape {shapes} does not fit {where}: {first_line}; fix: give data whose batches "
                f"have the input shape the model was trained on"
            ) from exc
        raise DataError(  # not a shape complaint: the forward itself may be what fails
            f"{where} raised {type(exc).__name__} on a data batch of shape {shapes}: {first_line}; fix: if those "
            f"are the inputs it was trained on, call the model on one batch outside quantstage and fix its forward"
        ) from exc
