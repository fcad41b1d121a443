"""Which attributes of a module the code around it reads (its parent's forward, helpers it calls).

A submodule quantized on its own is replaced by a GraphModule that has none of the float
module's attributes: glue code that reads ``self.projection.weight.dtype`` (ViT's patch
embedding) or ``conv.stride`` (MobileNetV2's TF padding) breaks. ``watch_reads`` records, during
one forward, every read of a module's plain attribute, parameter or buffer made while that module
is not running its own forward (the module's class is swapped for a recording subclass for the
duration, so ``isinstance`` still holds; the model's behaviour is unchanged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

__all__ = ["copyable_attributes", "watch_reads"]

_INTERNAL = frozenset({"training", "forward", "dump_patches", "call_super_init"})


def _recording_class(cls: type, reads: dict[int, set[str]], running: set[int]) -> type:
    base_getattribute = cast(Callable[[Any, str], Any], cls.__getattribute__)  # the unbound method

    def __getattribute__(self: Any, name: str) -> Any:  # the dunder being overridden
        if name[:1] != "_" and name not in _INTERNAL:
            key = id(self)
            if key not in running:
                d = object.__getattribute__(self, "__dict__")
                if name in d or name in d["_parameters"] or name in d["_buffers"]:
                    reads.setdefault(key, set()).add(name)
        return base_getattribute(self, name)

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__})


@contextlib.contextmanager
def watch_reads(model: nn.Module) -> Iterator[dict[str, set[str]]]:
    """Record, while the block runs, the attributes read on each submodule of ``model`` from outside
    its own forward: yields a dict path -> names, filled when the block ends."""
    reads: dict[int, set[str]] = {}
    running: set[int] = set()
    result: dict[str, set[str]] = {}
    classes: dict[type, type] = {}
    swapped: list[tuple[nn.Module, type]] = []
    handles = []
    paths = {id(m): path for path, m in model.named_modules() if path}
    for path, module in model.named_modules():
        if not path or isinstance(module, torch.jit.ScriptModule):
            continue
        cls = type(module)
        try:
            if cls not in classes:
                classes[cls] = _recording_class(cls, reads, running)
            module.__class__ = classes[cls]
        except Exception:  # a class that cannot be subclassed or swapped (slots, metaclasses): not watched
            continue
        swapped.append((module, cls))
        handles.append(module.register_forward_pre_hook(lambda m, _a: running.add(id(m))))
        handles.append(module.register_forward_hook(lambda m, _a, _o: running.discard(id(m)), always_call=True))
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
        for module, cls in swapped:
            module.__class__ = cls
        result.update({paths[key]: names for key, names in reads.items() if key in paths})


def copyable_attributes(module: nn.Module, names: set[str]) -> tuple[dict[str, Any], list[str]]:
    """(the plain attributes among ``names`` with their values: a replacement can carry them,
    the names that are tensors or modules: it cannot)."""
    plain: dict[str, Any] = {}
    tensors: list[str] = []
    for name in sorted(names):
        value = getattr(module, name, None)
        if isinstance(value, (torch.Tensor, nn.Module)):
            tensors.append(name)
        else:
            plain[name] = value
    return plain, tensors
