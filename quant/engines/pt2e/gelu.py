"""Tanh-approximated GELU modules swapped for ``nn.GELU(approximate="tanh")`` in the working copy.

transformers' ``NewGELUActivation`` (GPT-2, GPT-Neo, Phi: ``gelu_new``) and its kin write the tanh
approximation out (``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``). After a
dynamically quantized linear, Inductor (torch 2.13) fuses that formula into the int8 linear wrongly
(package vs reference model: 16-20 dB SQNR; the same layer with ``F.gelu(approximate="tanh")``
lowers exactly). The module is recognised by what it does, not imported: a parameterless leaf
whose class name says GELU and whose output on a probe equals ``gelu(approximate="tanh")``.
A formula written inline in a model's forward is still caught by the package check in
``package.lower_to_package`` (a one-line error).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_tanh_gelu", "swap_tanh_gelu"]

_PROBE = torch.linspace(-8.0, 8.0, 513).reshape(1, 513)


def is_tanh_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is a parameterless GELU module computing the tanh approximation."""
    if isinstance(module, nn.GELU) or "gelu" not in type(module).__name__.lower():
        return False
    if any(True for _ in module.children()) or any(True for _ in module.parameters()):
        return False
    if any(True for _ in module.buffers()):
        return False
    try:
        with torch.no_grad():
            out = module(_PROBE.clone())
    except Exception:  # a module that takes something else is no activation
        return False
    expected = nn.functional.gelu(_PROBE, approximate="tanh")
    return isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5)


def swap_tanh_gelu(model: nn.Module) -> list[str]:
    """Replace every tanh-GELU module of ``model`` (modified in place: pass the working copy) by
    ``nn.GELU(approximate="tanh")`` at the same path; return the paths swapped."""
    found = [name for name, module in model.named_modules() if name and is_tanh_gelu(module)]
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.GELU(approximate="tanh"))
    return found
