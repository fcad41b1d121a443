"""The PT2E engine's stages as one-line errors: whatever torch, torchao or Inductor raise inside a
stage (capture, prepare, convert, compile, ship) becomes a ``ConversionError`` that names the
stage, the model, the op or module the failure was in when the exception tells, and the fix.
A ``QuantStageError`` (already one line, with its fix) passes through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import re
import traceback
from collections.abc import Iterator

from quantstage.quant.errors import ConversionError, QuantStageError, one_line

__all__ = ["FIXES", "stage"]

logger = logging.getLogger(__name__)

FIXES = {
    "capture": "make that code traceable, or use --engine fx (tracing: auto quantizes the traceable submodules)",
    "prepare": "keep that module float (skip_modules / skip_object_types), or use --engine fx",
    "calibrate": "give calibration batches of the exported shapes and dtypes, or use --engine fx",
    "convert": "keep that module float (skip_modules / skip_object_types), or use --engine fx",
    "compile": "use --engine fx, or report it with the model",
    "ship": "use --engine fx, or report it with the model",
}

_FRAMEWORK = re.compile(r"[/\\](torch|torchao|transformers)[/\\]")
_OP = re.compile(r"\b(aten\.[\w.]+|quantized_decomposed\.[\w.]+|torch\.ops\.[\w.]+)")


def _where(exc: BaseException) -> str:
    """``op aten.x`` when the message names one, else the innermost framework function that raised."""
    op = _OP.search(str(exc))
    if op:
        return f" at op {op.group(1)}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _FRAMEWORK.search(f.filename)]
    if frames:
        last = frames[-1]
        return f" in {last.name} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
    return ""


@contextlib.contextmanager
def stage(name: str, model: str) -> Iterator[None]:
    """Turn any non-quantstage exception raised inside into a one-line ``ConversionError`` for stage ``name``."""
    try:
        yield
    except QuantStageError:
        raise
    except Exception as exc:
        logger.debug("PT2E %s of %s failed", name, model, exc_info=True)
        text = one_line(str(exc), 300) or type(exc).__name__
        raise ConversionError(
            f"engine 'pt2e' failed at {name} of {model} ({type(exc).__name__}: {text}{_where(exc)}); allowed: "
            f"models torch.export captures and X86InductorQuantizer annotates; fix: {FIXES[name]}"
        ) from exc
