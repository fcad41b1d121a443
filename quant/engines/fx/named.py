"""The FX engine's TorchScript of a model called like the float model: argument names, keywords in any order,
optional arguments left out (``quant.ship.signature``).

A traced TorchScript module takes the positional tensors it was traced with, under made-up names
(``argument_1``...), all required. When the data came as dicts (the input names are known),
``named_torchscript`` ships a scripted wrapper instead, whose ``forward`` has the float model's
argument names; an argument that has a default in the float ``forward`` is ``Optional[Tensor] = None``
there. The wrapper dispatches on which optional arguments are present to one TorchScript variant per
presence pattern (at most ``MAX_OPTIONAL`` optional arguments, so at most 8 variants), each traced by
calling the model with those keyword arguments only and checked against the model on the
verification inputs; a pattern whose variant cannot be traced or does not reproduce the model is
dropped (its arguments stay required), and the reason is logged. The variants are traced from the
same module, so they share its parameter tensors (saved once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.jit import jit_quiet, max_abs_diff, to_torchscript
from quantstage.quant.ship.signature import CallSignature, Pattern, exec_source

__all__ = ["check_patterns", "named_forms", "named_torchscript"]

logger = logging.getLogger(__name__)


class _Keywords(nn.Module):
    """``model`` called with ``names`` as keyword arguments, given positionally (what one variant traces)."""

    def __init__(self, model: nn.Module, names: Pattern) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: Any) -> Any:
        return self.model(**dict(zip(self.names, args)))


class _Dispatch(nn.Module):
    def __init__(self, variants: Sequence[torch.jit.ScriptModule]) -> None:
        super().__init__()
        for i, variant in enumerate(variants):
            setattr(self, f"v{i}", variant)


def _dispatch_source(
    names: Sequence[str], nullable: Sequence[str], variants: dict[Pattern, int], unused: Sequence[str] = ()
) -> str:
    """``forward`` with ``names`` (those in ``nullable`` Optional = None) that calls variant ``v<i>`` for the
    pattern of present arguments it was traced for, and raises for any other pattern. An ``unused``
    argument (one the data never gave) is accepted as None only, so positional calls keep their places."""
    params = [f"{n}: Optional[Tensor] = None" if n in nullable else f"{n}: Tensor" for n in names]
    supported = " or ".join("(" + ", ".join(p) + ")" for p in variants)
    lines = [f"def forward(self, {', '.join(params)}) -> Tensor:"]
    for n in unused:
        message = f"{n} was not given when the model was converted, so this int8 model does not take it; leave it out"
        lines += [f"    if {n} is not None:", f"        raise RuntimeError({message!r})"]
    nullable = [n for n in nullable if n not in unused]
    names = [n for n in names if n not in unused]

    def branch(index: int, present: tuple[str, ...], indent: str) -> None:
        if index == len(nullable):
            pattern = tuple(n for n in names if n not in nullable or n in present)
            if pattern in variants:
                lines.append(f"{indent}return self.v{variants[pattern]}({', '.join(pattern)})")
            else:
                message = f"called with ({', '.join(pattern)}); this model takes one of: {supported}"
                lines.append(f"{indent}raise RuntimeError({message!r})")
            return
        name = nullable[index]
        lines.append(f"{indent}if {name} is not None:")
        branch(index + 1, (*present, name), indent + "    ")
        lines.append(f"{indent}else:")
        branch(index + 1, present, indent + "    ")

    branch(0, (), "    ")
    return "\n".join(lines) + "\n"


def _present(names: Sequence[str], pattern: Pattern, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a for n, a in zip(names, args) if n in pattern)


@torch.no_grad()
def check_patterns(
    candidate: Callable[..., Any],
    model: nn.Module,
    names: Sequence[str],
    patterns: Sequence[Pattern],
    verify_inputs: Sequence[tuple[Any, ...]],
    tolerance: float = 0.0,
) -> float:
    """The largest difference between ``candidate`` and ``model`` called with the keywords of every pattern
    on every verification input; ArtifactError naming the pattern when one exceeds ``tolerance``."""
    worst = 0.0
    for pattern in patterns:
        for inputs in verify_inputs:
            kwargs = dict(zip(pattern, _present(names, pattern, inputs)))
            diff = max_abs_diff(model(**kwargs), candidate(**kwargs))
            if diff > tolerance:
                raise ArtifactError(
                    f"called with ({', '.join(pattern)}) the shipped form differs from the model by {diff:g} "
                    f"(tolerance {tolerance:g})"
                )
            worst = max(worst, diff)
    return worst


def _variant(
    model: nn.Module, names: Sequence[str], pattern: Pattern, verify_inputs: Sequence[tuple[Any, ...]], tolerance: float
) -> tuple[torch.jit.ScriptModule, str]:
    """TorchScript of ``model`` called with the arguments of ``pattern``, checked on the verification inputs."""
    example = _present(names, pattern, verify_inputs[0])
    if all(a is not None for a in verify_inputs[0]) and len(pattern) == len(names):
        variant, method = to_torchscript(model, example)  # all present: scripted when it scripts
    else:
        with jit_quiet(), torch.no_grad():
            traced = torch.jit.trace(_Keywords(model, pattern), example, check_trace=False)  # type: ignore[no-untyped-call]  # unannotated in torch
        variant, method = traced, "trace"
    with torch.no_grad():
        for inputs in verify_inputs:
            present = _present(names, pattern, inputs)
            diff = max_abs_diff(model(**dict(zip(pattern, present))), variant(*present))
            if diff > tolerance:
                raise ArtifactError(f"it differs from the model by {diff:g} (tolerance {tolerance:g})")
    return variant, method


def named_torchscript(
    model: nn.Module, signature: CallSignature, verify_inputs: Sequence[tuple[Any, ...]], tolerance: float = 0.0
) -> tuple[torch.jit.ScriptModule, str, list[Pattern]]:
    """The scripted wrapper (see the module docstring), how its all-present variant was made ("script" or
    "trace"), and the presence patterns it serves. ArtifactError when not even the all-present pattern
    can be made."""
    model.eval()
    names, used = signature.names, signature.used
    variants: dict[Pattern, torch.jit.ScriptModule] = {}
    method = "trace"
    for pattern in signature.patterns():
        try:
            variant, how = _variant(model, names, pattern, verify_inputs, tolerance)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if len(pattern) == len(used):
                raise ArtifactError(f"{type(model).__name__} cannot be made TorchScript ({reason})") from exc
            absent = [n for n in names if n not in pattern]
            logger.info("no variant without %s: %s (%s)", ", ".join(absent), type(exc).__name__, reason[:300])
            continue
        variants[pattern] = variant
        method = how if len(pattern) == len(used) else method
    leavable = [n for n in used if any(n not in p for p in variants)]
    required = [n for n in signature.optional if n in used and n not in leavable]
    if required:
        logger.warning("shipped forward takes %s as required arguments (no variant leaves them out)", required)
    first = min((names.index(n) for n in (*leavable, *signature.unused)), default=len(names))
    nullable = names[first:]  # after the first optional argument every one defaults to None (Python syntax)
    index = {pattern: i for i, pattern in enumerate(variants)}
    source = _dispatch_source(names, nullable, index, signature.unused)
    cls = type("NamedForward", (_Dispatch,), {"forward": exec_source(source, "forward")})
    with jit_quiet():
        wrapper = torch.jit.script(cls(list(variants.values())))
    logger.info(
        "named forward(%s) with %d variant(s): %s",
        ", ".join(used),
        len(variants),
        "; ".join("(" + ", ".join(p) + ")" for p in variants),
    )
    return wrapper.eval(), method, list(variants)


def named_forms(
    model: nn.Module, signature: CallSignature, verify_inputs: Sequence[tuple[Any, ...]], tolerance: float = 0.0
) -> tuple[list[tuple[str, Callable[[], Any], bool]], Callable[[], list[Pattern]]]:
    """``variants.torchscript_forms`` for a named forward: the in-memory model, the scripted wrapper, and the
    wrapper frozen and optimized for inference, each checked on every pattern it serves; and a function
    returning those patterns (once the wrapper is built)."""
    cache: list[tuple[torch.jit.ScriptModule, list[Pattern]]] = []

    def wrapper() -> tuple[torch.jit.ScriptModule, list[Pattern]]:
        if not cache:
            module, _, patterns = named_torchscript(model, signature, verify_inputs, tolerance)
            cache.append((module, patterns))
        return cache[0]

    def checked(transform: Callable[[torch.jit.ScriptModule], Any]) -> Callable[[], Any]:
        def build() -> Any:
            module, patterns = wrapper()
            with jit_quiet():
                candidate = transform(module)
            check_patterns(candidate, model, signature.names, patterns, verify_inputs, tolerance)
            return candidate

        return build

    forms = [
        ("fx_graph_module", lambda: model, False),
        ("torchscript", lambda: wrapper()[0], True),
        ("torchscript_frozen", checked(torch.jit.freeze), True),
        ("torchscript_optimized", checked(torch.jit.optimize_for_inference), True),
    ]
    return forms, lambda: wrapper()[1]
