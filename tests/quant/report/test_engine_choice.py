"""The report's "Engine choice" section (``engine: auto``): a row per candidate engine and why the winner won."""

from __future__ import annotations

from quantstage.quant.engines import FxSpec
from quantstage.quant.measure.gates import GatesConfig, check_gates
from quantstage.quant.report.markdown import render_report
from quantstage.quant.search.engines import EngineChoice, EngineRow
from tests.quant.helpers import accuracy_report, bench_report

CHOICE = EngineChoice(
    chosen="fx",
    why="fx: the fastest that passed the accuracy and coverage gates: 2.00x vs float",
    rows=(
        EngineRow(
            "fx",
            "chosen",
            "the fastest",
            5.9,
            1.5,
            0.163,
            2.0,
            {"accuracy_drop": 0.0, "output_sqnr_db": 48.1},
            1.0,
            "torchscript_optimized",
        ),
        EngineRow("pt2e", "refused", "float_global_pool = False has no meaning for engine 'pt2e'"),
    ),
)


def _render(engines: EngineChoice | None) -> str:
    accuracy, bench = accuracy_report(), bench_report()
    return render_report(
        source_uri="models:/digits/3",
        spec=FxSpec(),
        accuracy=accuracy,
        benchmarks=[bench],
        gates=check_gates(GatesConfig(), accuracy, bench),
        engines=engines,
    )


def test_the_report_shows_the_race_and_why() -> None:
    text = _render(CHOICE)
    assert "## Engine choice (engine: auto)" in text
    assert "**Chosen: `fx`**: the fastest that passed" in text
    assert "| fx | chosen | 5.9 | 1.5 | 0.163 | 2.00x | 0.0000 | 48.1 | 100.00% | torchscript_optimized |" in text
    assert "| pt2e | refused | n/a | n/a | n/a | n/a | n/a | n/a | n/a | - |" in text
    assert "- pt2e: float_global_pool = False has no meaning for engine 'pt2e'" in text
    assert text.index("## Engine choice") < text.index("## Summary")


def test_a_pinned_engine_s_report_has_no_engine_section() -> None:
    assert "Engine choice" not in _render(None)
