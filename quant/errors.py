"""Errors a user can act on: each says what was received, what is allowed, and the fix."""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConversionError",
    "DataError",
    "QuantStageError",
    "SourceError",
    "SpecError",
    "TracingError",
]


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
