"""render_report and summary_rows: the Markdown report's verdict, gate table, accuracy and latency rows."""

from quantstage.quant import FxSpec
from quantstage.quant.measure.evaluate import AccuracyReport
from quantstage.quant.measure.gates import GatesConfig, check_gates
from quantstage.quant.report.markdown import render_report, summary_rows
from tests.quant.helpers import ALL_GATES, accuracy_report, bench_report


def _render(gates_config: GatesConfig, accuracy: AccuracyReport, promoted_alias: str | None = None) -> str:
    bench = bench_report()
    return render_report(
        source_uri="models:/digits/3",
        spec=FxSpec(),
        accuracy=accuracy,
        benchmarks=[bench, bench_report(8.0, 3.0)],
        gates=check_gates(gates_config, accuracy, bench),
        registered="digits-int8/1",
        promoted_alias=promoted_alias,
    )


def test_render_report_passing() -> None:
    text = _render(ALL_GATES, accuracy_report(1.0, 0.875, agreement=0.9375, sqnr=31.25), promoted_alias="champion")
    assert text.startswith("# quantstage: models:/digits/3\n")
    assert "**Verdict:** all gates passed; promoted to `@champion`" in text
    assert f"spec hash `{FxSpec().digest()}`, registered as `digits-int8/1`" in text
    assert "| gate | measured | threshold | result |" in text
    assert "| max_accuracy_drop | 0.125 | 0.25 | pass |" in text
    assert "| min_agreement | 0.9375 | 0.75 | pass |" in text
    assert "| min_output_sqnr_db | 31.25 | 20 | pass |" in text
    assert "| min_speedup | 2 | 1.5 | pass |" in text
    assert "| max_size_ratio | 0.25 | 0.5 | pass |" in text
    assert "| top-1 accuracy | 100.00% | 87.50% |" in text
    assert "| 32 | 1 | 4.000 / 6.000 / 8.000 | 2.000 / 3.000 / 4.000 | 2.00x |" in text
    assert "| 32 | 1 | 8.000 / 12.000 / 16.000 | 3.000 / 4.500 / 6.000 | 2.67x |" in text
    assert "Top-1 agreement 0.9375, output SQNR 31.25 dB over 100 samples." in text


def test_render_report_failing() -> None:
    text = _render(ALL_GATES, accuracy_report(None, None, agreement=0.5))
    assert "**Verdict:** GATES FAILED; alias not moved" in text
    assert "| max_accuracy_drop | n/a | 0.25 | FAIL |" in text
    assert "| min_agreement | 0.5 | 0.75 | FAIL |" in text
    assert "| top-1 accuracy | n/a | n/a |" in text


def test_summary_rows() -> None:
    rows = summary_rows(accuracy_report(0.5, 0.25), bench_report())
    assert rows == [
        ("top-1 accuracy", "50.00%", "25.00%"),
        ("p50 latency (batch 32)", "4.000 ms", "2.000 ms"),
        ("speedup", "1.00x", "2.00x"),
        ("size", "1.0 KiB", "0.2 KiB"),
    ]
