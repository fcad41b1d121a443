"""check_gates: each gate's verdict and reason, the defaults, None switches a gate off; GatesConfig's checks."""

import math

import pytest

from quantstage.quant.measure.benchmark import BenchmarkReport
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GatesConfig, check_gates
from tests.quant.helpers import ALL_GATES, accuracy_report, bench_report


def test_default_gates_check_accuracy_drop_and_agreement() -> None:
    results = check_gates(
        GatesConfig().for_task("classification"), accuracy_report(1.0, 0.995, agreement=0.97), bench_report()
    )
    assert [r.name for r in results] == ["max_accuracy_drop", "min_agreement"]
    assert all(r.passed for r in results) and [r.threshold for r in results] == [0.01, 0.90]
    unlabeled = check_gates(
        GatesConfig().for_task("classification"), accuracy_report(None, None, agreement=0.97), bench_report()
    )
    assert [r.name for r in unlabeled] == ["min_agreement"]  # the default accuracy drop needs labels
    explicit = check_gates(
        GatesConfig(max_accuracy_drop=0.02).for_task("classification"), accuracy_report(None, None, agreement=0.5), None
    )
    assert [(r.name, r.passed) for r in explicit] == [("max_accuracy_drop", False), ("min_agreement", False)]


def test_all_gates_disabled() -> None:
    config = GatesConfig(max_accuracy_drop=None)
    assert check_gates(config, accuracy_report(None, None), None) == []


def test_relative_accuracy_drop_gate() -> None:
    report = AccuracyReport(samples=10, float_accuracy=0.5, quant_accuracy=0.45, agreement=0.9, sqnr_db=30.0)
    absolute = check_gates(GatesConfig(max_accuracy_drop=0.06), report)[0]
    relative = check_gates(GatesConfig(max_accuracy_drop=0.06, accuracy_drop_relative=True), report)[0]
    assert absolute.passed and absolute.value == pytest.approx(0.05)
    assert not relative.passed and relative.value == pytest.approx(0.1)
    assert "relative accuracy drop" in relative.reason


@pytest.mark.parametrize(
    ("name", "accuracy", "bench", "passed", "reason"),
    [
        ("max_accuracy_drop", accuracy_report(1.0, 0.875), bench_report(), True, "accuracy drop 0.125 <= 0.25: passed"),
        ("max_accuracy_drop", accuracy_report(1.0, 0.75), bench_report(), True, "accuracy drop 0.25 <= 0.25: passed"),
        ("max_accuracy_drop", accuracy_report(1.0, 0.5), bench_report(), False, "accuracy drop 0.5 <= 0.25: FAILED"),
        (
            "max_accuracy_drop",
            accuracy_report(None, None),
            bench_report(),
            False,
            "accuracy drop could not be measured",
        ),
        (
            "min_agreement",
            accuracy_report(agreement=0.75),
            bench_report(),
            True,
            "top-1 agreement 0.75 >= 0.75: passed",
        ),
        ("min_agreement", accuracy_report(agreement=0.5), bench_report(), False, "top-1 agreement 0.5 >= 0.75: FAILED"),
        (
            "min_output_sqnr_db",
            accuracy_report(sqnr=math.inf),
            bench_report(),
            True,
            "output SQNR (dB) inf >= 20: passed",
        ),
        (
            "min_output_sqnr_db",
            accuracy_report(sqnr=19.5),
            bench_report(),
            False,
            "output SQNR (dB) 19.5 >= 20: FAILED",
        ),
        (
            "min_output_sqnr_db",
            accuracy_report(sqnr=math.nan),
            bench_report(),
            False,
            "output SQNR (dB) could not be measured",
        ),
        ("min_speedup", accuracy_report(), bench_report(3.0, 2.0), True, "speedup 1.5 >= 1.5: passed"),
        ("min_speedup", accuracy_report(), bench_report(2.0, 2.0), False, "speedup 1 >= 1.5: FAILED"),
        ("min_speedup", accuracy_report(), None, False, "speedup could not be measured"),
        (
            "max_size_ratio",
            accuracy_report(),
            bench_report(float_size=1000, quant_size=500),
            True,
            "size ratio 0.5 <= 0.5: passed",
        ),
        (
            "max_size_ratio",
            accuracy_report(),
            bench_report(float_size=1000, quant_size=600),
            False,
            "size ratio 0.6 <= 0.5: FAILED",
        ),
        ("max_size_ratio", accuracy_report(), None, False, "size ratio could not be measured"),
    ],
    ids=[
        "drop-pass",
        "drop-equal",
        "drop-fail",
        "drop-unmeasured",
        "agreement-pass",
        "agreement-fail",
        "sqnr-inf",
        "sqnr-fail",
        "sqnr-nan",
        "speedup-pass",
        "speedup-fail",
        "speedup-no-bench",
        "size-pass",
        "size-fail",
        "size-no-bench",
    ],
)
def test_gate(name: str, accuracy: AccuracyReport, bench: BenchmarkReport | None, passed: bool, reason: str) -> None:
    results = {r.name: r for r in check_gates(ALL_GATES, accuracy, bench)}
    assert list(results) == [
        "max_accuracy_drop",
        "min_agreement",
        "min_output_sqnr_db",
        "min_speedup",
        "max_size_ratio",
    ]
    result = results[name]
    assert result.passed is passed, result
    assert result.reason == reason
    assert result.threshold == getattr(ALL_GATES, name)
    if "could not be measured" in reason:
        assert result.value is None
    assert result.as_dict()["name"] == name


THRESHOLD_GATES = ["max_accuracy_drop", "min_agreement", "min_output_sqnr_db", "min_speedup", "max_size_ratio"]


@pytest.mark.parametrize("disabled", THRESHOLD_GATES, ids=THRESHOLD_GATES)
def test_none_disables_a_gate(disabled: str) -> None:
    config = ALL_GATES.model_copy(update={disabled: None})
    names = [r.name for r in check_gates(config, accuracy_report(), bench_report())]
    assert disabled not in names
    assert len(names) == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_accuracy_drop": -0.1}, "max_accuracy_drop"),
        ({"max_accuracy_drop": 1.5}, "max_accuracy_drop"),
        ({"min_agreement": 1.1}, "min_agreement"),
        ({"min_speedup": 0.0}, "min_speedup"),
        ({"max_size_ratio": 0.0}, "max_size_ratio"),
        ({"min_sqnr": 20.0}, "min_sqnr"),
    ],
    ids=["drop-negative", "drop-above-1", "agreement-above-1", "speedup-zero", "size-zero", "extra"],
)
def test_gates_config_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GatesConfig(**kwargs)
