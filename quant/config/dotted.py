"""Dotted paths in specs (``torch.nn.Linear``, ``operator.add``, ``pkg.mod:attr``) resolved to objects."""

from __future__ import annotations

import importlib
from typing import Any

from quantstage.quant.errors import SpecError

__all__ = ["resolve_all", "resolve_dotted"]


def resolve_dotted(path: str) -> Any:
    """Resolve ``torch.nn.Linear`` / ``operator.add`` / ``pkg.mod:attr`` to the object."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        parts = [module_name, *attr_path.split(".")]
        split = 1
    else:
        parts = path.split(".")
        split = None
    candidates = [split] if split else range(len(parts) - 1, 0, -1)
    last_error: Exception | None = None
    for i in candidates:
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except (ImportError, ValueError, TypeError) as exc:  # "" and "." are not module names
            last_error = exc
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            last_error = exc
            continue
        return obj
    raise SpecError(
        f"cannot resolve {path!r} to a Python object ({last_error}); give an importable dotted "
        f"path such as 'torch.nn.Linear', 'torch.nn.functional.linear' or 'operator.add'"
    )


def resolve_all(paths: tuple[str, ...] | list[str]) -> None:
    """Resolve every path (raises SpecError naming the first that does not resolve)."""
    for path in paths:
        resolve_dotted(path)
