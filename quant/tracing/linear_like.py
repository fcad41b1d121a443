"""Modules that are a Linear in another shape, replaced by the ``nn.Linear`` they are before quantizing.

GPT-2 style models project with ``transformers.pytorch_utils.Conv1D``: ``y = x @ W + b`` with
``W`` of shape ``(in, out)`` and ``nf == out``, i.e. a Linear whose weight is stored transposed.
No quantization engine knows the class, so the model would quantize nothing. ``with_linear_equivalents``
returns a copy of the model where each such module is the equivalent ``nn.Linear`` (weight
``W.T``), which every engine quantizes and coverage counts; the model given is not modified.
Detection is by structure (class name ``Conv1D``, an int ``nf``, a 2-D ``weight`` of shape
``(in, nf)``, a ``bias`` of shape ``(nf,)`` or None), so transformers is never imported. Subclasses
of ``nn.Linear`` defined outside torch (Falcon's ``FalconLinear``) are traced through by FX, which then
sees a matmul and quantizes nothing: those that compute exactly a Linear (checked on a probe) are
replaced the same way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = [
    "as_linear",
    "is_linear_subclass",
    "is_transposed_linear",
    "linear_equivalent_paths",
    "with_linear_equivalents",
]

_TRANSPOSED_LINEAR_NAMES = frozenset({"Conv1D"})  # transformers.pytorch_utils.Conv1D (GPT-2, GPT-J's ancestors)


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear with a transposed weight (transformers' ``Conv1D``)."""
    if type(module).__name__ not in _TRANSPOSED_LINEAR_NAMES or isinstance(module, nn.Linear):
        return False
    weight, bias, nf = getattr(module, "weight", None), getattr(module, "bias", None), getattr(module, "nf", None)
    if not isinstance(nf, int) or not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != nf:
        return False
    return bias is None or (isinstance(bias, torch.Tensor) and tuple(bias.shape) == (nf,))


@torch.no_grad()
def is_linear_subclass(module: nn.Module) -> bool:
    """Whether ``module`` subclasses ``nn.Linear`` outside torch (so FX traces through it and quantizes
    nothing) and computes exactly what ``nn.Linear`` does (e.g. Falcon's ``FalconLinear``): checked on a
    probe input, so a subclass that adds to the output (a trained LoRA branch...) is left alone."""
    if not isinstance(module, nn.Linear) or type(module) is nn.Linear or type(module).__module__.startswith("torch."):
        return False
    if any(True for _ in module.children()) or {n for n, _ in module.named_parameters()} - {"weight", "bias"}:
        return False
    probe = torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(0)).to(module.weight)
    try:
        out = module(probe)
    except Exception:  # not callable on a plain batch of features: not a plain Linear
        return False
    expected = nn.functional.linear(probe, module.weight, module.bias)
    return isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.allclose(out, expected, atol=1e-6)


def as_linear(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` equivalent to ``module`` (a transposed-weight Linear such as ``Conv1D``, or an
    ``nn.Linear`` subclass that computes a Linear), or None."""
    transposed = is_transposed_linear(module)
    if not transposed and not is_linear_subclass(module):
        return None
    weight = module.weight
    bias = module.bias
    assert isinstance(weight, torch.Tensor)  # checked above
    weight = weight.detach().t() if transposed else weight.detach()
    linear = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if isinstance(bias, torch.Tensor):
            linear.bias.copy_(bias.detach())
    linear.train(module.training)
    return linear


def linear_equivalent_paths(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` that ``with_linear_equivalents`` replaces."""
    return [path for path, m in model.named_modules() if path and (is_transposed_linear(m) or is_linear_subclass(m))]


def with_linear_equivalents(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """(``model``, ()) when it has no Linear-equivalent module, else (a copy with each one replaced
    by its ``nn.Linear``, their paths). ``model`` is not modified."""
    paths = linear_equivalent_paths(model)
    if not paths:
        return model, ()
    work = copy.deepcopy(model)
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = work.get_submodule(parent_path) if parent_path else work
        linear = as_linear(work.get_submodule(path))
        assert linear is not None  # the same structure as in ``model``
        setattr(parent, name, linear)
    return work, tuple(paths)
