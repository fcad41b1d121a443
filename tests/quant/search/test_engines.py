"""The engine race (``engine: auto``) on small real models: a row for every candidate engine, the winner shipped
once; a refused, failing or skipped engine is a row, a bug in quantstage propagates; the pick rule itself."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import AutoSpec
from quantstage.quant.errors import ConversionError
from quantstage.quant.measure.benchmark import BenchmarkReport, LatencyStats, benchmark_many, paired_speedup
from quantstage.quant.measure.evaluate import sqnr_db
from quantstage.quant.measure.gates import GateResult
from quantstage.quant.search import engines as race_module
from quantstage.quant.search.engines import EngineRace, Entrant, RaceOptions, engines_table, race_engines
from tests.models import DigitsMLP, GatedNet, SmallCNN
from tests.quant.helpers import accuracy_report

pytestmark = pytest.mark.usefixtures("restore_torch_state")

OPTIONS = RaceOptions(iterations=20, timing_budget_s=2.0)


@pytest.fixture(scope="module")
def small(data: Dataset) -> Dataset:
    """The digits data, fewer batches: the race converts the model once per engine."""
    return dataclasses.replace(data, calibration=data.calibration[:8], evaluation=data.evaluation[:4])


def _model(cls: type[torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _rows(race: EngineRace) -> dict[str, tuple[str, str]]:
    return {row.engine: (row.status, row.reason) for row in race.choice.rows}


@pytest.fixture(scope="module")
def cnn_race(small: Dataset, tmp_path_factory: pytest.TempPathFactory) -> EngineRace:
    return race_engines(_model(SmallCNN), AutoSpec(), small, tmp_path_factory.mktemp("race"), OPTIONS)


def test_every_engine_is_a_row_and_a_passing_one_is_chosen(cnn_race: EngineRace, small: Dataset) -> None:
    rows = {row.engine: row for row in cnn_race.choice.rows}
    assert list(rows) == ["fx", "pt2e"]
    chosen = rows[cnn_race.choice.chosen]
    assert chosen.status == "chosen" and cnn_race.winner.engine == chosen.engine and cnn_race.winner.passed
    assert cnn_race.choice.why.startswith(f"{chosen.engine}: ") and "\n" not in cnn_race.choice.why
    other = rows["pt2e" if chosen.engine == "fx" else "fx"]
    assert other.status in ("passed", "failed gates") and other.reason
    for row in rows.values():
        assert row.convert_s and row.ship_s is not None and row.p50_ms and row.speedup and row.shipped_as
        assert row.quantized_fraction == 1.0 and row.metrics["output_sqnr_db"] > 30.0, row
    # the fastest passing engine wins, unless the other is as fast within the noise and less accurate
    assert chosen.speedup >= other.speedup or "within the measured noise" in cnn_race.choice.why  # type: ignore[operator]
    table = engines_table(cnn_race.choice.rows)
    assert table["engine"] == ["fx", "pt2e"] and len({len(column) for column in table.values()}) == 1


def test_the_winner_s_shipped_form_is_what_the_pipeline_logs(cnn_race: EngineRace, small: Dataset) -> None:
    winner = cnn_race.winner
    assert cnn_race.shipped_for(winner.quantized) is winner.shipped
    assert cnn_race.shipped_for(_model(SmallCNN)) is None  # a model the fallback re-quantized ships anew
    x = small.evaluation[0][0]
    with torch.no_grad():
        assert sqnr_db(winner.quantized.model(x), winner.shipped.load()(x)) > 40.0


def test_a_refused_engine_is_a_row_and_the_other_ships(small: Dataset, tmp_path: Path) -> None:
    race = race_engines(_model(SmallCNN), AutoSpec(float_global_pool=False), small, tmp_path, OPTIONS)
    rows = _rows(race)
    assert rows["fx"][0] == "chosen" and race.winner.quantized.engine == "fx"
    assert rows["pt2e"][0] == "refused"
    assert "float_global_pool = False has no meaning for engine 'pt2e'" in rows["pt2e"][1]
    assert "the only engine that passed" in race.choice.why


def test_an_engine_that_fails_is_a_row_and_fx_ships(small: Dataset, tmp_path: Path) -> None:
    """torch.export cannot capture GatedNet's data-dependent branch; FX quantizes it by submodules."""
    race = race_engines(_model(GatedNet), AutoSpec(), small, tmp_path, OPTIONS)
    rows = _rows(race)
    assert rows["fx"][0] == "chosen" and race.winner.quantized.tracing == "submodules"
    status, reason = rows["pt2e"]
    assert status == "error" and reason.startswith("TracingError: torch.export cannot capture GatedNet"), reason
    assert "\n" not in reason


def test_a_spent_budget_skips_the_engines_after_the_first(small: Dataset, tmp_path: Path) -> None:
    race = race_engines(_model(DigitsMLP), AutoSpec(auto_budget_s=0), small, tmp_path, OPTIONS)
    rows = _rows(race)
    assert rows["fx"][0] == "chosen"
    assert rows["pt2e"][0] == "skipped" and rows["pt2e"][1].startswith("auto_budget_s 0 s spent"), rows


def test_a_library_error_is_a_row_a_bug_of_quantstage_propagates(
    small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def torch_fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a kernel torch has not")

    monkeypatch.setattr(race_module, "evaluate", torch_fails)
    with pytest.raises(
        ConversionError, match=r"no candidate engine shipped a model \(fx: error: RuntimeError: a kernel"
    ):
        race_engines(_model(DigitsMLP), AutoSpec(engines=("fx",)), small, tmp_path, OPTIONS)
    monkeypatch.setattr(race_module, "evaluate", lambda *a, **k: sqnr_db(None, None))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):  # raised in quant/: a bug, not the engine's failure
        race_engines(_model(DigitsMLP), AutoSpec(engines=("fx",)), small, tmp_path, OPTIONS)


# -- the pick rule, on measured numbers made up ------------------------------------------------------------------


def _entrant(engine: str, ms: list[float], accuracy: float, passed: bool = True) -> Entrant:
    float_ms = [2.0] * len(ms)
    stats = LatencyStats.from_times([t / 1000 for t in ms], 32)
    bench = BenchmarkReport(
        32, 1, len(ms), stats, stats, 1, 1, float_times_ms=tuple(float_ms), quant_times_ms=tuple(ms)
    )
    gate = GateResult("max_accuracy_drop", 0.9 - accuracy, 0.01, passed, "accuracy drop")
    report = accuracy_report(quant_accuracy=accuracy)
    return Entrant(engine, None, report, None, [gate], 1.0, 1.0, bench)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fx", "pt2e", "winner", "why"),
    [
        ((1.0, 0.89), (0.5, 0.88), "pt2e", "the fastest that passed"),
        ((1.0, 0.89), (1.0, 0.895), "pt2e", "as fast as fx within the measured noise"),
        ((1.0, 0.895), (1.0, 0.89), "fx", "the fastest that passed"),
        ((1.0, 0.89), (0.5, 0.5), "fx", "the only engine that passed"),
    ],
    ids=["faster", "tie-more-accurate", "tie-fx-more-accurate", "faster-fails"],
)
def test_the_fastest_passing_wins_a_tie_goes_to_the_more_accurate(
    fx: tuple, pt2e: tuple, winner: str, why: str
) -> None:
    wobble = [0.0, 0.01, -0.01, 0.02, -0.02] * 4
    entrants = [
        _entrant(name, [ms + w for w in wobble], acc, passed=acc > 0.85)
        for name, (ms, acc) in (("fx", fx), ("pt2e", pt2e))
    ]
    chosen, line, lost = race_module._pick(entrants)
    assert chosen.engine == winner and why in line, line
    assert set(lost) <= {"fx", "pt2e"} - {winner}


def test_none_passing_the_most_accurate_is_chosen() -> None:
    entrants = [_entrant("fx", [1.0] * 10, 0.5, passed=False), _entrant("pt2e", [0.5] * 10, 0.4, passed=False)]
    chosen, line, _ = race_module._pick(entrants)
    assert chosen.engine == "fx" and "no engine passed" in line


def test_benchmark_many_times_every_form_in_the_same_rounds() -> None:
    torch.manual_seed(0)
    float_model, a, b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    reports = benchmark_many(float_model, {"a": a, "b": b}, (torch.rand(8, 64),), iterations=12, warmup=2)
    assert set(reports) == {"a", "b"}
    assert reports["a"].float_times_ms == reports["b"].float_times_ms and len(reports["a"].quant_times_ms) == 12
    assert reports["a"].batch_size == 8 and reports["a"].threads == 1
    ratio, noise = paired_speedup(reports["a"].quant_times_ms, reports["a"].quant_times_ms)
    assert ratio == 1.0 and noise == 0.0
    assert math.isnan(paired_speedup([], [])[0])
