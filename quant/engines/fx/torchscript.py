"""The FX engine's TorchScript export, verified before anything is logged.

A converted FX GraphModule does not round-trip through ``torch.save``/``torch.load`` in
torch 2.13, and pickled GraphModules cannot cross process boundaries; TorchScript does
both. ``export_torchscript`` scripts the model, saves it, loads it back and checks that
the loaded model reproduces the in-memory outputs bit-exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.jit import jit_quiet, max_abs_diff, to_torchscript

__all__ = ["TorchScriptArtifact", "export_torchscript", "load_torchscript"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TorchScriptArtifact:
    """A saved TorchScript file that was loaded back and matched the in-memory model."""

    path: Path
    module: torch.jit.ScriptModule  # the module loaded back from ``path``
    method: str  # "script" or "trace"
    size_bytes: int
    sha256: str


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file saved by ``export_torchscript``."""
    with jit_quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]  # unannotated in torch
        return cast(torch.jit.ScriptModule, loaded.eval())


def export_torchscript(
    model: torch.nn.Module,
    path: str | Path,
    verify_inputs: Sequence[tuple[Any, ...]],
    *,
    reference: torch.nn.Module | None = None,
    tolerance: float = 0.0,
    method: str | None = None,
) -> TorchScriptArtifact:
    """Script (or trace) ``model``, save it to ``path``, load it back and verify it.

    ``verify_inputs`` is a list of positional-argument tuples; on every one the loaded
    model must reproduce ``reference`` (default: ``model`` itself) bit-exactly, or within
    ``tolerance`` (max absolute difference) when one is stated. A ScriptModule is saved as is
    (``method`` names how it was made, e.g. "frozen").
    """
    if not verify_inputs:
        raise ArtifactError("export_torchscript needs at least one input to verify the saved model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        scripted, method = model, method or "script"
    else:
        scripted, method = to_torchscript(model, verify_inputs[0])
    try:
        with jit_quiet():
            torch.jit.save(scripted, str(path))
        loaded = load_torchscript(path)
    except Exception as exc:  # torch's own failure on this model's TorchScript: a form that cannot ship
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(
            f"TorchScript ({method}) of {type(model).__name__} cannot be saved to {str(path)!r} and loaded back "
            f"({type(exc).__name__}: {first}); refusing to ship it"
        ) from exc
    reference = reference if reference is not None else model
    with torch.no_grad():
        for i, inputs in enumerate(verify_inputs):
            expected, got = reference(*inputs), loaded(*inputs)
            diff = max_abs_diff(expected, got)
            if diff > tolerance:
                allowed = "bit-exact" if tolerance == 0 else f"tolerance {tolerance:g}"
                raise ArtifactError(
                    f"TorchScript saved at {str(path)!r} does not reproduce the lowered model on "
                    f"verification input {i} (max abs difference {diff:g}, {allowed} required); refusing to ship it"
                )
    data = path.read_bytes()
    artifact = TorchScriptArtifact(
        path=path,
        module=loaded,
        method=method,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    logger.info("saved %s (%s, %d bytes), verified on %d inputs", path, method, len(data), len(verify_inputs))
    return artifact
