"""Ship a model that is called like the float model: its argument names, keywords in any order, and
optional arguments left out.

``served_form`` wraps the quantized model as it is served: the output part every stage compares, tagged with
the ``CallSignature`` its callers use (``Called``; an engine's ``ship`` reads it with ``split_signature``).
Each engine makes its form honour it: the FX engine ships a scripted wrapper with the float model's argument
names (``quant.engines.fx.named``); ``named_module`` builds the plain Python wrapper torch.export records the
names from (keyword names kept in the PT2E engine's AOTInductor package). ``exec_source`` compiles such a
generated ``forward`` so that ``inspect.getsource`` (hence ``torch.jit.script``) finds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import keyword
import linecache
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from quantstage.quant.data.inputs import forward_parameters
from quantstage.quant.data.outputs import with_output

__all__ = [
    "MAX_OPTIONAL",
    "CallSignature",
    "Called",
    "Pattern",
    "call_signature",
    "exec_source",
    "named_module",
    "served_form",
    "split_signature",
    "with_signature",
]

MAX_OPTIONAL = 3  # optional arguments whose presence patterns get a variant each (2**3 = 8 at most)

Pattern = tuple[str, ...]  # the argument names present in one call, in signature order


@dataclasses.dataclass(frozen=True)
class CallSignature:
    """How the served model is called: ``names`` (forward's argument names, in the batches' positional
    order) of which ``optional`` had a default in the float ``forward`` and may be left out."""

    names: tuple[str, ...]
    optional: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()  # optional arguments the data never gives (bound to their default None)

    @property
    def used(self) -> tuple[str, ...]:
        """The arguments the served model takes: every name but the unused ones."""
        return tuple(n for n in self.names if n not in self.unused)

    def patterns(self) -> list[Pattern]:
        """Every presence pattern of the optional arguments, all present first."""
        leavable = [n for n in self.optional if n not in self.unused][-MAX_OPTIONAL:]
        found: list[Pattern] = []
        for dropped in range(len(leavable) + 1):
            for absent in itertools.combinations(leavable, dropped):
                found.append(tuple(n for n in self.used if n not in absent))
        return found


def _unwrapped(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)  # OutputOf / Called wrap the model as .model
    return _unwrapped(inner) if isinstance(inner, nn.Module) and _variadic(model) else model


def _variadic(model: nn.Module) -> bool:
    return any(p.kind is p.VAR_POSITIONAL for p in forward_parameters(model))


def call_signature(model: nn.Module, names: Sequence[str] | None, example: Sequence[Any] = ()) -> CallSignature | None:
    """The signature ``model`` (or the model a ``*args`` wrapper of it calls) is served with for batches
    bound to ``names``; an optional argument that is None in ``example`` (one batch's positional
    arguments: a gap the binding filled with the default, e.g. GPT-2's ``past_key_values``) is not taken.
    None without names, or when they are not plain identifiers."""
    if not names or any(not n.isidentifier() or keyword.iskeyword(n) for n in names):
        return None
    params = {p.name: p for p in forward_parameters(_unwrapped(model))}
    optional = tuple(n for n in names if n in params and params[n].default is not inspect.Parameter.empty)
    unused = tuple(n for n, value in zip(names, example) if value is None and n in optional)
    return CallSignature(tuple(names), optional, unused)


class Called(nn.Module):
    """``model`` as it is served, carrying the ``CallSignature`` its callers use (for ``ship``)."""

    def __init__(self, model: nn.Module, signature: CallSignature) -> None:
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def with_signature(model: nn.Module, signature: CallSignature | None) -> nn.Module:
    """``model`` tagged with ``signature`` (``model`` itself when there is none)."""
    return model if signature is None else Called(model, signature)


def served_form(
    model: nn.Module, output_key: str | None, input_names: Sequence[str] | None, example: Sequence[Any] = ()
) -> nn.Module:
    """What ships for ``model``: the part of its output every stage compares (``output_key``), called
    like the float model (``input_names``: forward's arguments the data binds; ``example``: one batch)."""
    return with_signature(with_output(model, output_key), call_signature(model, input_names, example))


def split_signature(model: nn.Module) -> tuple[nn.Module, CallSignature | None]:
    """The served model and its signature, from what ``with_signature`` made."""
    if isinstance(model, Called):
        return model.model, model.signature
    return model, None


def exec_source(source: str, name: str) -> Callable[..., Any]:
    """Compile generated ``source`` registered in ``linecache`` (inspect.getsource, hence torch.jit.script,
    finds it) and return its function ``name``."""
    filename = f"<quantstage-generated-{hashlib.sha256(source.encode()).hexdigest()[:16]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": __name__, "torch": torch, "Tensor": Tensor, "Optional": Optional}
    exec(compile(source, filename, "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


def named_module(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A module whose ``forward(self, <names>)`` calls ``model`` positionally: torch.export then records the
    arguments by name (the package takes them as keywords)."""
    params = ", ".join(names)
    source = f"def forward(self, {params}):\n    return self.model({params})\n"
    cls = type("NamedForward", (_Holder,), {"forward": exec_source(source, "forward")})
    module: nn.Module = cls(model)
    return module


class _Holder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
