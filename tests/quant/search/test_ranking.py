"""Ranking policies, the Pareto front and the comparison table (pure, no models)."""

from __future__ import annotations

import pytest

from quantstage.quant.search.ranking import (
    CandidateScore,
    comparison_table,
    failure_summary,
    finalists,
    pareto_front,
    rank,
    tradeoff_chart,
)


def _score(
    index: int,
    drop: float | None,
    latency: float | None,
    *,
    passed: bool = True,
    parallel: float | None = None,
    error: str | None = None,
    failed: tuple[str, ...] = (),
) -> CandidateScore:
    return CandidateScore(
        index=index,
        name=f"c{index}",
        passed=passed,
        accuracy_drop=drop,
        latency_ms=latency,
        parallel_latency_ms=parallel if parallel is not None else (None if error else latency),
        failed_gates=failed,
        error=error,
        metrics={"speedup": 2.0},
    )


SCORES = [
    _score(0, 0.004, 1.00),
    _score(1, 0.000, 1.04),  # within 5% of the fastest, smaller drop
    _score(2, 0.000, 1.50),  # same drop, slower: dominated by 1
    _score(3, 0.020, 0.50, passed=False, failed=("accuracy drop 0.02 <= 0.01: FAILED",)),  # fastest, fails a gate
    _score(4, None, None, error="SpecError: boom"),
]


def test_fastest_passing_picks_lowest_latency_among_passing() -> None:
    ranking = rank(SCORES, "fastest_passing")
    assert ranking.winner.index == 0
    assert ranking.order == (0, 1, 2)
    assert "fastest passing" in ranking.reason


def test_fastest_passing_breaks_latency_ties_by_accuracy_drop() -> None:
    scores = [_score(0, 0.006, 1.0), _score(1, 0.002, 1.0), _score(2, 0.002, 1.0)]
    assert rank(scores).order == (1, 2, 0)


def test_pareto_picks_smallest_drop_within_tolerance_of_fastest() -> None:
    assert rank(SCORES, "pareto", tolerance=0.05).winner.index == 1
    # a tighter window leaves only the fastest passing candidate
    assert rank(SCORES, "pareto", tolerance=0.01).winner.index == 0
    # a wide window: equal drops, the faster one wins
    ranking = rank(SCORES, "pareto", tolerance=1.0)
    assert ranking.winner.index == 1 and ranking.order == (1, 2, 0)


def test_pareto_winner_is_on_the_front() -> None:
    for tolerance in (0.0, 0.01, 0.05, 0.5, 2.0):
        ranking = rank(SCORES, "pareto", tolerance=tolerance)
        assert ranking.winner.index in ranking.front, (tolerance, ranking)


def test_pareto_front_drops_dominated_and_failed_points() -> None:
    assert pareto_front(SCORES) == [3, 0, 1]  # ordered by latency; 2 is dominated by 1, 4 has no numbers
    assert rank(SCORES).front == (0, 1)  # the ranking's front: eligible (passing, re-measured) only


def test_errors_and_unmeasured_candidates_never_win() -> None:
    scores = [
        _score(0, 0.0, None, parallel=0.1),  # passing, not re-measured
        _score(1, 0.0, 0.05, error="RuntimeError: worker died"),
        _score(2, 0.0, 2.0),
    ]
    assert rank(scores).winner.index == 2
    assert rank(scores, "pareto").winner.index == 2


def test_no_passing_candidate_means_no_winner() -> None:
    scores = [SCORES[3], SCORES[4]]
    ranking = rank(scores, "pareto")
    assert ranking.winner is None and ranking.order == ()
    summary = failure_summary(scores)
    assert "#3 c3: accuracy drop 0.02 <= 0.01: FAILED" in summary
    assert "#4 c4: error: SpecError: boom" in summary


def test_missing_accuracy_drop_ranks_as_worst() -> None:
    scores = [_score(0, None, 1.0), _score(1, 0.01, 1.0)]
    assert rank(scores).order == (1, 0)
    assert rank(scores, "pareto").winner.index == 1


def test_finalists_are_the_k_fastest_passing_by_parallel_numbers() -> None:
    scores = [
        _score(0, 0.0, None, parallel=3.0),
        _score(1, 0.0, None, parallel=1.0),
        _score(2, 0.0, None, parallel=0.5, passed=False),
        _score(3, 0.0, None, parallel=2.0),
        _score(4, None, None, error="boom"),
    ]
    assert finalists(scores, 2) == [1, 3]
    assert finalists(scores, None) == [1, 3, 0]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ranking policy 'slowest' is unknown; allowed: fastest_passing, pareto"):
        rank(SCORES, "slowest")


def test_comparison_table_has_both_latencies_and_the_winner(tmp_path) -> None:
    scores = [_score(0, 0.004, 1.0, parallel=2.0), *SCORES[1:]]
    ranking = rank(scores)
    table = comparison_table(scores, ranking)
    assert table["index"] == [0, 1, 2, 3, 4]
    assert table["status"] == ["winner", "passed", "passed", "gates failed", "error"]
    assert table["rank"] == [1, 2, 3, None, None]
    assert table["parallel_p50_ms"][0] == 2.0 and table["sequential_p50_ms"][0] == 1.0
    assert table["pareto"] == [False, True, False, True, False]  # front of the parallel numbers
    assert table["error"][4] == "SpecError: boom" and table["failed_gates"][3].startswith("accuracy drop")
    assert len({len(column) for column in table.values()}) == 1
    chart = tradeoff_chart(scores, ranking, tmp_path / "tradeoff.png")
    assert chart.stat().st_size > 1000
