"""Errors a user can act on: each says what was received, what is allowed, and the fix."""

from __future__ import annotations

import re

__all__ = [
    "ArtifactError",
    "ConversionError",
    "DataError",
    "QuantStageError",
    "SourceError",
    "SpecError",
    "TracingError",
    "one_line",
]

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
