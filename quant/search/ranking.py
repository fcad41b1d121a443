"""Choosing among quantization candidates: ranking policies, the Pareto front, the comparison table.

Each candidate of a sweep is reduced to a ``CandidateScore``: did it pass every gate, its
accuracy drop, and its p50 latency twice — ``parallel_latency_ms`` as measured inside its
own unit of work (while other candidates ran beside it: comparable only roughly) and
``latency_ms`` as re-measured afterwards one candidate at a time on a quiet machine (what the
ranking uses; ``None`` for a candidate that was not re-measured).

Policies (lower is better on both axes):

* ``fastest_passing`` — among the candidates that passed every gate and were re-measured,
  the lowest ``latency_ms``; ties go to the smaller accuracy drop, then the lower index.
* ``pareto`` — the same eligible set; the candidates within ``tolerance`` (0.05 = 5%) of the
  fastest one's latency form a window, and the winner is the one in the window with the
  smallest accuracy drop (ties: lower latency, then lower index). It is always a point of the
  eligible set's Pareto front (accuracy drop vs latency): nothing outside the window is
  faster, and nothing inside it has a smaller drop.

A candidate whose unit of work raised (``error``) never wins; a missing accuracy drop (data
without labels) ranks as the worst drop. Pure Python; the chart uses ``quant.report.plots``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from quantstage.quant.report.plots import save_figure, subplots

__all__ = [
    "POLICIES",
    "CandidateScore",
    "Policy",
    "Ranking",
    "comparison_table",
    "failure_summary",
    "finalists",
    "pareto_front",
    "rank",
    "tradeoff_chart",
]

Policy = Literal["fastest_passing", "pareto"]
POLICIES: tuple[str, ...] = ("fastest_passing", "pareto")

# headline metrics copied into the comparison table when a candidate logged them
_TABLE_METRICS = ("int8_accuracy", "output_sqnr_db", "speedup", "size_ratio", "quantized_fraction")


@dataclasses.dataclass(frozen=True)
class CandidateScore:
    """What the ranking knows of one candidate."""

    index: int
    name: str
    passed: bool = False
    accuracy_drop: float | None = None
    latency_ms: float | None = None  # sequential re-measurement (ranked on); None: not re-measured
    parallel_latency_ms: float | None = None  # measured in the unit of work, beside other candidates
    failed_gates: tuple[str, ...] = ()  # the reasons of the gates it failed
    error: str | None = None  # the unit of work raised
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def evaluated(self) -> bool:
        """It ran to the end and has numbers (passed its gates or not)."""
        return self.error is None and self.parallel_latency_ms is not None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "passed" if self.passed else "gates failed"


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The outcome of a policy: the winner (or None), the eligible candidates best first, why."""

    policy: str
    winner: CandidateScore | None
    order: tuple[int, ...]  # indices of the eligible candidates, best first
    front: tuple[int, ...]  # Pareto front (accuracy drop vs latency_ms) of the eligible candidates
    reason: str


def _drop(score: CandidateScore) -> float:
    value = score.accuracy_drop
    return math.inf if value is None or math.isnan(value) else value


def _eligible(scores: Sequence[CandidateScore]) -> list[CandidateScore]:
    return [s for s in scores if s.error is None and s.passed and s.latency_ms is not None]


def pareto_front(scores: Sequence[CandidateScore], *, latency: str = "latency_ms") -> list[int]:
    """Indices of the candidates no other candidate beats on both accuracy drop and latency.

    ``latency`` names the attribute to use (``"latency_ms"`` or ``"parallel_latency_ms"``);
    candidates with an error or without that latency are left out. Ordered by latency.
    """
    points = [
        (s.index, _drop(s), getattr(s, latency)) for s in scores if s.error is None and getattr(s, latency) is not None
    ]
    front = [
        (i, d, t) for i, d, t in points if not any((d2 <= d and t2 <= t) and (d2 < d or t2 < t) for _, d2, t2 in points)
    ]
    return [i for i, _, _ in sorted(front, key=lambda p: (p[2], p[1], p[0]))]


def finalists(scores: Sequence[CandidateScore], k: int | None = 3) -> list[int]:
    """The candidates worth re-measuring: the ``k`` passing ones with the lowest parallel
    latency (every passing one when ``k`` is None), fastest first."""
    passing = [s for s in scores if s.error is None and s.passed and s.parallel_latency_ms is not None]
    passing.sort(key=lambda s: (s.parallel_latency_ms, _drop(s), s.index))
    return [s.index for s in (passing if k is None else passing[:k])]


def rank(scores: Sequence[CandidateScore], policy: str = "fastest_passing", *, tolerance: float = 0.05) -> Ranking:
    """Rank the candidates that passed every gate and were re-measured; pick the winner."""
    if policy not in POLICIES:
        raise ValueError(f"ranking policy {policy!r} is unknown; allowed: {', '.join(POLICIES)}")
    if tolerance < 0:
        raise ValueError(f"pareto tolerance must be >= 0 (a share of the fastest latency), got {tolerance!r}")
    eligible = _eligible(scores)
    front = tuple(pareto_front(eligible))
    if not eligible:
        return Ranking(policy, None, (), front, "no candidate passed every gate")
    by_latency = sorted(eligible, key=lambda s: (s.latency_ms, _drop(s), s.index))
    if policy == "fastest_passing":
        order = by_latency
        best = order[0]
        reason = f"fastest passing candidate: p50 {best.latency_ms:.4g} ms"
    else:
        # latency_ms is not None on every eligible candidate (``_eligible`` filters on it)
        limit = cast(float, by_latency[0].latency_ms) * (1.0 + tolerance)
        window = sorted(
            (s for s in eligible if cast(float, s.latency_ms) <= limit), key=lambda s: (_drop(s), s.latency_ms, s.index)
        )
        in_window = {s.index for s in window}
        order = window + [s for s in by_latency if s.index not in in_window]
        best = order[0]
        reason = (
            f"smallest accuracy drop ({_fmt(best.accuracy_drop)}) among the {len(window)} passing candidate(s) "
            f"within {100 * tolerance:g}% of the fastest p50 ({by_latency[0].latency_ms:.4g} ms): "
            f"p50 {best.latency_ms:.4g} ms"
        )
    return Ranking(policy, best, tuple(s.index for s in order), front, f"#{best.index} {best.name}: {reason}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def failure_summary(scores: Sequence[CandidateScore]) -> str:
    """One line per candidate: the gates it failed, its error, or why it could not be ranked."""
    lines = []
    for s in scores:
        if s.error is not None:
            why = f"error: {s.error}"
        elif not s.passed:
            why = "; ".join(s.failed_gates) or "gates failed"
        elif s.latency_ms is None:
            why = "passed, not re-measured"
        else:
            why = "passed"
        lines.append(f"#{s.index} {s.name}: {why}")
    return "\n".join(lines)


def comparison_table(
    scores: Sequence[CandidateScore], ranking: Ranking, *, parallel_front: Sequence[int] | None = None
) -> dict[str, list[Any]]:
    """Columns of the comparison table, one row per candidate in index order.

    ``rank`` is the position in the policy's order (None: not eligible); ``pareto`` marks the
    Pareto front of every evaluated candidate on the parallel numbers (the only latency all of
    them have) unless ``parallel_front`` is given.
    """
    front = set(pareto_front(scores, latency="parallel_latency_ms") if parallel_front is None else parallel_front)
    position = {index: i + 1 for i, index in enumerate(ranking.order)}
    winner = ranking.winner.index if ranking.winner else None
    rows = sorted(scores, key=lambda s: s.index)
    columns: dict[str, list[Any]] = {
        "index": [s.index for s in rows],
        "candidate": [s.name for s in rows],
        "status": ["winner" if s.index == winner else s.status for s in rows],
        "rank": [position.get(s.index) for s in rows],
        "gates_passed": [s.passed and s.error is None for s in rows],
        "accuracy_drop": [s.accuracy_drop for s in rows],
        "parallel_p50_ms": [s.parallel_latency_ms for s in rows],
        "sequential_p50_ms": [s.latency_ms for s in rows],
    }
    for metric in _TABLE_METRICS:
        columns[metric] = [s.metrics.get(metric) for s in rows]
    columns["pareto"] = [s.index in front for s in rows]
    columns["failed_gates"] = ["; ".join(s.failed_gates) for s in rows]
    columns["error"] = [s.error or "" for s in rows]
    return columns


def tradeoff_chart(scores: Sequence[CandidateScore], ranking: Ranking, path: str | Path) -> Path:
    """Scatter of accuracy drop vs p50 latency (PNG): every evaluated candidate at its parallel
    latency (hollow), the re-measured ones at their sequential latency (filled), the winner starred."""
    fig, ax = subplots(figsize=(6.4, 4.4))
    evaluated = [s for s in scores if s.evaluated and s.accuracy_drop is not None]
    for s in evaluated:
        color = "tab:green" if s.passed else "tab:red"
        ax.scatter([s.parallel_latency_ms], [s.accuracy_drop], facecolors="none", edgecolors=color, s=50)
        ax.annotate(f"#{s.index}", (s.parallel_latency_ms, s.accuracy_drop), textcoords="offset points", xytext=(4, 4))
        if s.latency_ms is not None:
            ax.scatter([s.latency_ms], [s.accuracy_drop], color=color, s=50)
            ax.plot([s.parallel_latency_ms, s.latency_ms], [s.accuracy_drop] * 2, color=color, alpha=0.3, lw=1)
    by_index = {s.index: s for s in scores}
    front = [by_index[i] for i in ranking.front if by_index[i].accuracy_drop is not None]
    if len(front) > 1:
        ax.plot(
            [s.latency_ms for s in front],
            [s.accuracy_drop for s in front],
            "--",
            color="gray",
            lw=1,
            label="Pareto front",
        )
    winner = ranking.winner
    if winner is not None and winner.accuracy_drop is not None:
        ax.scatter(
            [winner.latency_ms],
            [winner.accuracy_drop],
            marker="*",
            s=250,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"winner #{winner.index}",
        )
    ax.set_xlabel("int8 p50 latency (ms): hollow = parallel, filled = re-measured alone")
    ax.set_ylabel("accuracy drop (float - int8)")
    ax.set_title(f"sweep: {len(evaluated)} evaluated, policy {ranking.policy}")
    if front or winner is not None:
        ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)
