"""The process gate is declared by the stage tasks: tracing stages exclusive, the others shared, held
only while a unit runs beside others in this process (``in_parallel``)."""

from __future__ import annotations

import threading
import time

import pytest

from quantstage.tasks import _gate
from quantstage.tasks._gate import DECLARED, GATE, gated, in_parallel

EXPECTED = {
    "quantstage.tasks.calibrate.calibrate_model": "exclusive",
    "quantstage.tasks.sensitivity.analyze_sensitivity": "exclusive",
    "quantstage.tasks.fallback.search_float_layers": "exclusive",
    "quantstage.tasks.reference_convert.convert_reference": "shared",
    "quantstage.tasks.lower.lower_model": "shared",
    "quantstage.tasks.validate.validate_accuracy": "shared",
    "quantstage.tasks.benchmark.benchmark_model": "shared",
    "quantstage.tasks.load.load_model": "shared",
    "quantstage.tasks.load.load_dataset": "shared",
    "quantstage.tasks.export.export_model": "shared",
    "quantstage.tasks.export.export_reference": "shared",
    "quantstage.tasks.log_model.log_conversion": "shared",
}


def _state() -> tuple[int, bool]:
    return GATE._shared, GATE._exclusive


@gated("shared")
def _runs() -> tuple[int, bool]:
    return _state()


@gated("exclusive")
def _traces() -> tuple[tuple[int, bool], tuple[int, bool]]:
    return _state(), _runs()  # a gated call inside a gated one holds nothing more (no deadlock)


def test_every_stage_task_declares_its_gate() -> None:
    import quantstage.tasks  # noqa: F401  (registers every declaration)

    assert {name: DECLARED.get(name) for name in EXPECTED} == EXPECTED


def test_the_gate_is_held_only_in_parallel() -> None:
    assert _runs() == (0, False) and _traces() == ((0, False), (0, False))  # a unit alone: nothing held
    with in_parallel("x86"):
        assert _runs() == (1, False)
        assert _traces() == ((0, True), (0, True))
    with in_parallel("x86", parallel=False):
        assert _runs() == (0, False)
    assert _state() == (0, False)


def test_an_exclusive_task_waits_for_shared_holders() -> None:
    log: list[str] = []

    @gated("shared")
    def slow() -> None:
        log.append("shared in")
        time.sleep(0.3)
        log.append("shared out")

    @gated("exclusive")
    def trace() -> None:
        log.append("exclusive")

    def unit(task: object) -> None:
        with in_parallel("x86"):
            task()  # type: ignore[operator]

    first = threading.Thread(target=unit, args=(slow,))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=unit, args=(trace,))
    second.start()
    first.join()
    second.join()
    assert log == ["shared in", "shared out", "exclusive"]


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gate mode 'alone' is not one of 'shared', 'exclusive'; fix:"):
        gated("alone")  # type: ignore[arg-type]
    assert _gate._PARALLEL_ENGINE.get() is None
