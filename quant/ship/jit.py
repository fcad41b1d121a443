"""TorchScript helpers any engine or measurement may use: quiet ``torch.jit`` calls, script-or-trace, and the
largest difference between two outputs.

TorchScript is deprecated in favour of torch.export, yet it is how the FX engine ships and how a float model's
serialized size is measured; ``jit_quiet`` keeps torch's own notices about it out of the logs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from quantstage.quant.errors import ArtifactError

__all__ = ["jit_quiet", "max_abs_diff", "to_torchscript"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def jit_quiet() -> Iterator[None]:
    """Silence TorchScript's own deprecation notices (TorchScript is how the model ships)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore",
            message=r"The TorchScript type system doesn't support instance-level annotations",
            category=UserWarning,
        )
        # a trace that bakes data-dependent values in is caught by the bit-exact verification instead
        # TracerWarning: torch.jit imports it without listing it in __all__
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        yield


def to_torchscript(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` ``model``, or trace it on ``example_inputs`` when scripting fails."""
    with jit_quiet():
        return _to_script(model, example_inputs)


def _to_script(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> tuple[torch.jit.ScriptModule, str]:
    try:
        return torch.jit.script(model), "script"
    except Exception as script_error:
        logger.info(
            "torch.jit.script failed (%s); falling back to torch.jit.trace", str(script_error).strip().splitlines()[0]
        )
        try:
            with torch.no_grad():
                # check_trace re-runs and compares the trace (seconds on a transformer); every shipped
                # form is verified bit-exact against the model afterwards anyway
                traced = torch.jit.trace(model, example_inputs, check_trace=False)  # type: ignore[no-untyped-call]  # unannotated in torch
                return traced, "trace"
        except Exception as trace_error:
            raise ArtifactError(
                f"{type(model).__name__} can be neither scripted ({script_error}) nor traced "
                f"({trace_error}); fix: make forward TorchScript-compatible"
            ) from trace_error


@torch.no_grad()
def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute elementwise difference (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
