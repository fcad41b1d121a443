"""Coverage: which weighted layers of a quantized model run quantized, and why the others do not.

``CoverageReport`` (one ``CoverageEntry`` per weighted layer) is what an engine reports for a
model quantized whole; ``SubmoduleCoverage`` (``quant.tracing``) what the submodule path
reports. Both answer the ``Coverage`` protocol the gates, the report and the tables read.
"""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "FLOAT",
    "QUANTIZED",
    "REASON_BACKEND",
    "REASON_REFERENCE",
    "REASON_SKIPPED",
    "REASON_UNSUPPORTED",
    "Coverage",
    "CoverageEntry",
    "CoverageReport",
]

QUANTIZED = "quantized"
FLOAT = "float"

REASON_SKIPPED = "skipped by config (qconfig None)"
REASON_UNSUPPORTED = "not supported by backend_config (qconfig set)"
REASON_BACKEND = "left float by the backend's rules (no qconfig recorded)"
REASON_REFERENCE = "reference (not lowered to a native op)"


@runtime_checkable
class Coverage(Protocol):
    """What every coverage report answers (gates, report, MLflow table)."""

    @property
    def quantized_count(self) -> int:
        """Layers (or submodules) that run quantized: the ``quantized_any`` gate reads it."""
        ...

    @property
    def quantized_fraction(self) -> float:
        """Share of the weighted parameters that run quantized."""
        ...

    @property
    def quantizes_nothing(self) -> bool: ...

    def as_table(self) -> dict[str, list[Any]]:
        """Columns for a table artifact."""
        ...

    def summary(self) -> str:
        """A line (or a few) for logs and the Markdown report."""
        ...

    def markdown(self) -> list[str]:
        """The coverage section of the Markdown report."""
        ...


@dataclasses.dataclass(frozen=True)
class CoverageEntry:
    """One weighted layer of the converted model.

    ``name`` is the module path (``call_module``) or the graph node name (functionals), ``op``
    the class or function name, ``status`` ``"quantized"`` or ``"float"``, ``reason`` the
    quantized form (``static int8``, ``dynamic int8``, ``dynamic float16``, ``weight-only int8``,
    ``reference (not lowered to a native op)``) or why it stayed float, and ``params`` the
    number of parameter elements of the layer in the float model (0 when not found there).
    """

    name: str
    op: str
    status: str
    reason: str
    params: int

    @property
    def quantized(self) -> bool:
        return self.status == QUANTIZED


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    """The weighted layers of a converted model, quantized or float, with parameter counts."""

    entries: tuple[CoverageEntry, ...]

    @property
    def quantized(self) -> list[CoverageEntry]:
        return [e for e in self.entries if e.status == QUANTIZED]

    @property
    def float(self) -> list[CoverageEntry]:
        return [e for e in self.entries if e.status == FLOAT]

    @property
    def quantized_count(self) -> int:
        return len(self.quantized)

    @property
    def quantized_fraction(self) -> builtins.float:  # builtins: the class has a ``float`` property
        """Quantized parameters / all parameters among the entries (0.0 when there are none)."""
        total = sum(e.params for e in self.entries)
        return sum(e.params for e in self.quantized) / total if total else 0.0

    @property
    def quantizes_nothing(self) -> bool:
        """True when no entry is quantized (a spec that skips everything, a wrong mode, ...)."""
        return self.quantized_count == 0

    def as_table(self) -> dict[str, list[Any]]:
        """Columns name, op, status, reason, params (e.g. for ``mlflow.log_table``)."""
        fields = ("name", "op", "status", "reason", "params")
        return {f: [getattr(e, f) for e in self.entries] for f in fields}

    def markdown(self) -> list[str]:
        """The coverage section of the Markdown report: summary and the layers left float."""
        lines = ["## Quantized coverage", "", self.summary(), ""]
        if self.float:
            lines += ["| float layer | op | why | parameters |", "|---|---|---|---|"]
            lines += [f"| {e.name} | {e.op} | {e.reason} | {e.params} |" for e in self.float]
        return lines

    def summary(self, max_listed: int = 5) -> str:
        """One line: ``7/9 weighted layers quantized (98.2% of their parameters); float: ...``."""
        if not self.entries:
            return "no weighted layers found"
        line = (
            f"{self.quantized_count}/{len(self.entries)} weighted layers quantized "
            f"({100.0 * self.quantized_fraction:.1f}% of their parameters)"
        )
        floats = self.float
        if floats:
            shown = ", ".join(f"{e.name} ({e.reason.split(' (')[0]})" for e in floats[:max_listed])
            more = f", and {len(floats) - max_listed} more" if len(floats) > max_listed else ""
            line += f"; float: {shown}{more}"
        return line
