"""Capture a model with ``torch.export`` for PT2E: a dynamic batch dimension, errors that name the construct.

The batch dimension is exported as ``Dim("batch", min=1, max=MAX_BATCH)``: a model exported at
one batch size serves any. torch.export refuses to mark a dimension of size 1 dynamic (it
specializes it), so an example batch of 1 is repeated to 2 rows for the export only.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.engines.pt2e.gelu import swap_tanh_gelu
from quantstage.quant.errors import TracingError

__all__ = ["MAX_BATCH", "Bound", "export_program", "distinct_calls", "forward_names", "working_copy"]

logger = logging.getLogger(__name__)

MAX_BATCH = 4096


def forward_names(model: nn.Module, count: int) -> tuple[str, ...]:
    """The names of the first ``count`` parameters of ``model.forward``."""
    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return tuple(params[:count]) if len(params) >= count else tuple(f"input_{i}" for i in range(count))


class Bound(nn.Module):
    """Calls an exported graph, which takes positional tensors only, the way the float model was called:
    keyword arguments are bound to positions by the float model's parameter names (one exported as
    ``None``, such as a KV cache between two inputs, may be left out)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)

    def train(self, mode: bool = True) -> Bound:
        """Exported graphs keep the mode they were exported in (eval); torchao refuses ``.train()/.eval()``
        on them, so only this wrapper's flag changes."""
        self.training = mode
        return self

    def positional(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if not kwargs:
            return args
        values = dict(zip(self.names, args))
        values.update(kwargs)
        example = getattr(self, "example_args", ())  # an argument exported as None (a cache) may be left out
        for name, value in zip(self.names, example):
            if value is None:
                values.setdefault(name, None)
        unknown = sorted(set(kwargs) - set(self.names))
        missing = [n for n in self.names if n not in values]
        if unknown or missing:
            raise TypeError(
                f"the exported model takes {', '.join(self.names)} (as exported); got {', '.join(sorted(values))}"
            )
        return tuple(values[n] for n in self.names)


def working_copy(model: nn.Module) -> nn.Module:
    """The copy of ``model`` PT2E exports, in eval mode (``quant.quantize.prepare_model`` has already made
    GPT-2's ``Conv1D`` the ``nn.Linear`` it is: ``quant.tracing.linear_like``): tanh-GELU modules swapped
    for ``nn.GELU`` (``gelu.py``), and
    a transformers model's key/value cache off (a ``DynamicCache`` output is no tensor tree
    torch.export can return, and a converted model serves one forward pass, with no cache to carry);
    ``model`` is not modified."""
    work = copy.deepcopy(model).eval()
    swap_tanh_gelu(work)
    config = getattr(work, "config", None)
    if getattr(config, "use_cache", None) is True:
        config.use_cache = False  # type: ignore[union-attr]
    return work


def distinct_calls(graph: nn.Module) -> int:
    """Give each call of a module that runs more than once its own path in the exported graph
    (``layer1.0.relu@1``, from torch.export's ``nn_module_stack`` key); return how many nodes changed.

    X86InductorQuantizer groups nodes into patterns by the innermost module path: a module called
    twice (torchvision's ResNet reuses ``self.relu`` after the residual add) is one pattern with two
    outputs, which torchao refuses ("Input partition has more than one output node"). The call's
    path is added as one more innermost entry (``module_name`` skips still see the module's own
    path); ``coverage.module_path`` strips the suffix again."""
    changed = 0
    for node in graph.graph.nodes:  # type: ignore[union-attr]
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        calls = "".join(match.group(0) for match in map(_CALL.search, map(str, stack)) if match)
        key, (path, cls) = list(stack.items())[-1]
        if calls and not str(path).endswith(calls):  # an extra innermost entry: module_name filters still match
            node.meta["nn_module_stack"] = {**stack, f"{key}{calls}#call": (f"{path}{calls}", cls)}
            changed += 1
    return changed


_CALL = re.compile(r"@(\d+)$")


def _batched(example_args: tuple[Any, ...]) -> tuple[tuple[Any, ...], int]:
    """The example with at least 2 rows (repeated from 1), and its batch size."""
    tensors = [a for a in example_args if isinstance(a, torch.Tensor) and a.dim() > 0]
    if not tensors:
        return example_args, 0
    batch = int(tensors[0].shape[0])
    if batch != 1:
        return example_args, batch
    doubled = tuple(
        torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a
        for a in example_args
    )
    return doubled, 2


def dynamic_shapes(example_args: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """Dim 0 dynamic on every tensor whose first dimension is the batch."""
    dim = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return tuple(
        {0: dim} if batch and isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else None
        for a in example_args
    )


def _construct(exc: BaseException) -> str:
    """The user code line torch.export names in its error, if any."""
    text = str(exc)
    match = re.search(r'File "([^"]+)", line (\d+), in (\w+)', text) or re.search(
        r"File: ([^\s]+):(\d+) in (\w+)", text
    )
    if match:
        return f" at {match.group(1)}:{match.group(2)} in {match.group(3)}()"
    return ""


def export_program(model: nn.Module, example_args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    """``(ExportedProgram, the example it was exported with, its dynamic_shapes)`` of ``model`` in eval
    mode; TracingError naming the construct torch.export could not capture."""
    args, batch = _batched(example_args)
    shapes = dynamic_shapes(args, batch)
    try:
        with torch.no_grad():
            program = torch.export.export(model.eval(), args, dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # torch.export raises many types (UserError, Unsupported, GuardOnDataDependent...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.debug("torch.export failed", exc_info=True)
        raise TracingError(
            f"torch.export cannot capture {type(model).__name__} ({type(exc).__name__}: {first[:300]}"
            f"{_construct(exc)}); fix: make that code traceable (torch.cond for data-dependent branches, no "
            f"Python side effects), or use engine 'fx' (tracing: auto quantizes the traceable submodules)"
        ) from exc
    return program, args, shapes
