"""Every task gets gates a damaged model fails, unless the config switches one off explicitly."""

from __future__ import annotations

import pytest

from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import TASK_DEFAULTS, GatesConfig, check_gates


def _embedding(mean: float, worst: float, sqnr: float = 15.0) -> AccuracyReport:
    extra = {"embedding_cosine_mean": mean, "embedding_cosine_min": worst, "embedding_sqnr_db": sqnr}
    return AccuracyReport(48, None, None, None, sqnr, extra)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("classification", {"max_accuracy_drop": 0.01, "min_agreement": 0.90, "min_speedup": 1.0}),
        ("embedding", {"min_cosine": 0.93, "min_mean_cosine": 0.98, "min_speedup": 1.0}),
        ("regression", {"min_output_sqnr_db": 20.0, "min_speedup": 1.0}),
    ],
)
def test_each_task_has_default_gates(task: str, expected: dict[str, float]) -> None:
    gates = GatesConfig().for_task(task)
    assert {k: getattr(gates, k) for k in expected} == expected == TASK_DEFAULTS[task]
    assert set(gates.task_defaults) == set(expected)
    gate_names = {"max_accuracy_drop", "min_agreement", "min_cosine", "min_mean_cosine", "min_output_sqnr_db"}
    others = gate_names - set(expected)
    assert all(getattr(gates, k) is None for k in others)


@pytest.mark.parametrize(
    ("mean", "worst", "passes"),
    [
        (0.992, 0.972, True),  # per-channel weights, 8-bit activations (all-MiniLM-L6-v2)
        (0.991, 0.957, True),  # 7-bit weights, 8-bit activations
        (0.974, 0.916, False),  # per-channel weights, 7-bit activations
        (0.942, 0.814, False),  # torch's default dynamic qconfig
        (0.962, 0.880, False),  # ONNX Runtime's default dynamic int8
        (0.490, 0.210, False),  # static int8
    ],
)
def test_embedding_defaults_tell_good_from_damaged(mean: float, worst: float, passes: bool) -> None:
    results = check_gates(GatesConfig().for_task("embedding"), _embedding(mean, worst))
    assert [r.name for r in results] == ["min_cosine", "min_mean_cosine"]
    assert all(r.passed for r in results) is passes, [r.reason for r in results]


def test_an_explicit_null_switches_a_default_off() -> None:
    gates = GatesConfig.model_validate({"min_cosine": None, "min_mean_cosine": 0.95}).for_task("embedding")
    assert gates.min_cosine is None and gates.min_mean_cosine == 0.95 and gates.task_defaults == ("min_speedup",)
    assert [r.name for r in check_gates(gates, _embedding(0.96, 0.5))] == ["min_mean_cosine"]
    none = GatesConfig(max_accuracy_drop=None, min_agreement=None).for_task("classification")
    assert check_gates(none, AccuracyReport(8, 1.0, 0.0, 0.0, 0.0)) == []


def test_a_gate_of_another_task_cannot_be_measured() -> None:
    """An explicit cosine gate on a classifier has nothing to read: it fails and says so."""
    gates = GatesConfig(min_cosine=0.9).for_task("classification")
    result = next(r for r in check_gates(gates, AccuracyReport(8, 1.0, 1.0, 1.0, 30.0)) if r.name == "min_cosine")
    assert not result.passed and "could not be measured" in result.reason
