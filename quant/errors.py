"""Errors a user can act on: each says what was received, what is allowed, and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

__all__ = [
    "ArtifactError",
    "ConversionError",
    "DataError",
    "QuantStageError",
    "SourceError",
    "SpecError",
    "TracingError",
    "describe",
    "one_line",
    "raised_by_quantstage",
    "stage_error",
]

_PACKAGE = Path(__file__).resolve().parent  # quant/: a frame here is quantstage's own code

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one line: terminal colour codes dropped, lines joined with "; ", spaces collapsed."""
    lines = [" ".join(line.split()) for line in _ANSI.sub("", text).splitlines()]
    joined = "; ".join(line for line in lines if line)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


class QuantStageError(Exception):
    """Base of every error quantstage raises for bad input; the CLI prints it as one line."""


class SpecError(QuantStageError, ValueError):
    """A QuantSpec or flow parameter that cannot be used."""


class DataError(QuantStageError, ValueError):
    """Data that is missing or does not fit the model."""


class TracingError(QuantStageError):
    """A model that torch.fx cannot symbolically trace."""


class ConversionError(QuantStageError):
    """A model that cannot be converted as asked."""


class ArtifactError(QuantStageError):
    """A saved model that does not reproduce the in-memory model."""


class SourceError(QuantStageError):
    """A model source (URI, registry name, alias) that cannot be resolved."""


E = TypeVar("E", bound=QuantStageError)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of ``exc``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {one_line(text.splitlines()[0], 300)}" if text else type(exc).__name__


def raised_by_quantstage(exc: BaseException) -> bool:
    """True when ``exc`` is a QuantStageError or was raised in quantstage's own code (``quant/``: a bug to
    report as is), False when torch, a library or the model raised it (to classify)."""
    if isinstance(exc, QuantStageError):
        return True
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def stage_error(cls: type[E], stage: str, where: str, exc: BaseException, fix: str) -> E:
    """A ``cls`` saying, on one line, that ``stage`` failed in ``where`` (a module path, an op, the model)
    with ``exc`` (its type and first line) and how to fix it."""
    return cls(one_line(f"{stage} failed in {where}: {describe(exc)}; fix: {fix}"))
