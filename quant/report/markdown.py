"""The human-readable conversion report (markdown) and the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the report reads what the other subpackages measured
    from quantstage.quant.engines.registry import QuantSpec
    from quantstage.quant.measure.benchmark import BenchmarkReport
    from quantstage.quant.measure.coverage import Coverage
    from quantstage.quant.measure.evaluate import AccuracyReport
    from quantstage.quant.measure.gates import GateResult
    from quantstage.quant.measure.sensitivity import LayerSensitivity
    from quantstage.quant.search.engines import EngineChoice
    from quantstage.quant.search.fallback import FallbackResult
    from quantstage.quant.ship.shipped import VariantResult

__all__ = [
    "PENDING_PROMOTION",
    "render_report",
    "set_verdict",
    "summary_rows",
    "sweep_pending",
    "verdict_line",
]

PENDING_PROMOTION = "promotion decided at registration"


def sweep_pending(parent_run_id: str) -> str:
    """The verdict of a sweep candidate's report until the sweep's ranking decides."""
    return f"promotion decided by the sweep's ranking (parent run {parent_run_id})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}%"


def summary_rows(accuracy: AccuracyReport, bench: BenchmarkReport) -> list[tuple[str, str, str]]:
    """``(metric, float, int8)`` rows: accuracy, p50 latency, speedup, size."""
    return [
        ("top-1 accuracy", _pct(accuracy.float_accuracy), _pct(accuracy.quant_accuracy)),
        (
            f"p50 latency (batch {bench.batch_size})",
            f"{bench.float_latency.p50_ms:.3f} ms",
            f"{bench.quant_latency.p50_ms:.3f} ms",
        ),
        ("speedup", "1.00x", f"{bench.speedup:.2f}x"),
        ("size", f"{bench.float_size_bytes / 1024:.1f} KiB", f"{bench.quant_size_bytes / 1024:.1f} KiB"),
    ]


def render_report(
    *,
    source_uri: str,
    spec: QuantSpec,
    accuracy: AccuracyReport,
    benchmarks: Sequence[BenchmarkReport],
    gates: Sequence[GateResult],
    registered: str | None = None,
    promoted_alias: str | None = None,
    promotion: str | None = None,
    sensitivity: Sequence[LayerSensitivity] = (),
    fallback: FallbackResult | None = None,
    coverage: Coverage | None = None,
    variants: Sequence[VariantResult] = (),
    machine: dict[str, Any] | None = None,
    shipped_as: str | None = None,
    engines: EngineChoice | None = None,
) -> str:
    """Markdown report of one conversion. The verdict line says whether the alias moved
    (``promoted_alias``), or ``promotion`` when that is decided later (``set_verdict`` then);
    ``engines``: the engine race of an auto spec (its table, and why the winner won)."""
    if not benchmarks:
        raise ValueError("render_report needs at least one BenchmarkReport (the headline numbers)")
    passed = all(g.passed for g in gates)
    lines = [
        f"# quantstage: {source_uri}",
        "",
        verdict_line(passed, promoted_alias, promotion),
        "",
        f"Backend `{spec.backend}`, mode `{spec.mode}`, {spec.calibration_batches} calibration batches, "
        f"spec hash `{spec.digest()}`" + (f", registered as `{registered}`" if registered else ""),
        *_engine_section(engines),
        "",
        "## Summary",
        "",
        "| metric | float | int8 |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {f} | {q} |" for m, f, q in summary_rows(accuracy, benchmarks[0])]
    lines += [
        "",
        (f"Top-1 agreement {accuracy.agreement:.4f}, " if accuracy.agreement is not None else "")
        + f"output SQNR {accuracy.sqnr_db:.2f} dB over {accuracy.samples} samples."
        + "".join(f" {k}: {v:.4g}." for k, v in accuracy.extra.items()),
        "",
        "## Gates",
        "",
        "| gate | measured | threshold | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {g.name} | {'n/a' if g.value is None else f'{g.value:.4g}'} | {g.threshold:.4g} | "
        f"{'pass' if g.passed else 'FAIL'} |"
        for g in gates
    ]
    lines += [
        "",
        "## Latency (interleaved float/int8, per call)",
        "",
        "| batch | threads | float p50 / p90 / p99 ms | int8 p50 / p90 / p99 ms | speedup | stable |",
        "|---|---|---|---|---|---|",
    ]
    for b in benchmarks:
        f, q = b.float_latency, b.quant_latency
        lines.append(
            f"| {b.batch_size} | {b.threads} | {f.p50_ms:.3f} / {f.p90_ms:.3f} / {f.p99_ms:.3f} | "
            f"{q.p50_ms:.3f} / {q.p90_ms:.3f} / {q.p99_ms:.3f} | {b.speedup:.2f}x | "
            f"{'yes' if b.stable else f'NO (CV {max(f.cv, q.cv):.2f})'} |"
        )
    lines += _shipping_section(variants, machine)
    if shipped_as:
        lines += ["", "## Shipped as a rebuild bundle", "", shipped_as]
    lines += _coverage_section(coverage) + _sensitivity_section(sensitivity) + _fallback_section(fallback)
    return "\n".join(lines) + "\n"


def verdict_line(passed: bool, promoted_alias: str | None, promotion: str | None = None) -> str:
    """``**Verdict:** all gates passed; promoted to `@champion` (why)`` and its other forms."""
    gates = "all gates passed" if passed else "GATES FAILED"
    if promotion is not None and promoted_alias is None:
        return f"**Verdict:** {gates}; {promotion}"
    moved = f"promoted to `@{promoted_alias}`" if promoted_alias else "alias not moved"
    return f"**Verdict:** {gates}; {moved}" + (f" ({promotion})" if promotion else "")


def set_verdict(report: str, passed: bool, promoted_alias: str | None, reason: str = "") -> str:
    """``report`` with its verdict line replaced once the promotion is decided."""
    lines = report.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("**Verdict:**"):
            lines[i] = verdict_line(passed, promoted_alias, reason or None)
            break
    return "\n".join(lines)


def _shipping_section(variants: Sequence[VariantResult], machine: dict[str, Any] | None) -> list[str]:
    lines = []
    if machine:
        lines += [
            "",
            f"Measured on {machine.get('cpu_model')} ({machine.get('isa_int8')}), engine "
            f"{machine.get('quantized_engine')}, torch {machine.get('torch_version')}.",
        ]
    if variants:
        lines += [
            "",
            "## Shipped form (fastest that reproduces the lowered model)",
            "",
            "| form | p50 ms | max abs diff | shippable |",
            "|---|---|---|---|",
        ]
        for v in variants:
            p50 = "n/a" if v.p50_ms is None else f"{v.p50_ms:.3f}"
            diff = v.error or ("n/a" if v.max_abs_diff is None else f"{v.max_abs_diff:g}")
            lines.append(f"| {v.name} | {p50} | {diff} | {'yes' if v.shippable else 'no'} |")
    return lines


def _engine_section(choice: EngineChoice | None) -> list[str]:
    """The engine race (``engine: auto``): one row per candidate engine, and why the winner won."""
    if choice is None:
        return []
    lines = [
        "",
        "## Engine choice (engine: auto)",
        "",
        f"**Chosen: `{choice.chosen}`**: {choice.why.removeprefix(f'{choice.chosen}: ')}",
        "",
        "| engine | status | convert s | ship s | p50 ms | speedup | accuracy drop | SQNR dB | quantized | shipped as |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in choice.rows:
        cells = [r.convert_s, r.ship_s, r.p50_ms]
        timing = " | ".join("n/a" if v is None else f"{v:.3g}" if v < 1 else f"{v:.1f}" for v in cells)
        drop, sqnr = r.metrics.get("accuracy_drop"), r.metrics.get("output_sqnr_db")
        lines.append(
            f"| {r.engine} | {r.status} | {timing} | {'n/a' if r.speedup is None else f'{r.speedup:.2f}x'} | "
            f"{'n/a' if drop is None else f'{drop:.4f}'} | {'n/a' if sqnr is None else f'{sqnr:.1f}'} | "
            f"{_pct(r.quantized_fraction)} | {r.shipped_as or '-'} |"
        )
    reasons = [f"- {r.engine}: {r.reason}" for r in choice.rows if r.reason and r.status != "chosen"]
    return lines + ([""] + reasons if reasons else [])


def _coverage_section(coverage: Coverage | None) -> list[str]:
    return [] if coverage is None else ["", *coverage.markdown()]


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _sensitivity_section(layers: Sequence[LayerSensitivity], top: int = 10) -> list[str]:
    if not layers:
        return []
    lines = [
        "",
        f"## Per-layer sensitivity (worst {min(top, len(layers))} of {len(layers)}, FX numeric suite)",
        "",
        "| layer | op | activation SQNR dB | weight SQNR dB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {x.name} | {x.op} | {_db(x.activation_sqnr_db)} | {_db(x.weight_sqnr_db)} |" for x in layers[:top]]
    return lines


def _fallback_section(result: FallbackResult | None) -> list[str]:
    if result is None:
        return []
    verdict = (
        f"kept float: {', '.join(result.chosen.float_layers)}"
        if result.chosen
        else "no set of layers within the limits passed"
    )
    lines = [
        "",
        f"## Accuracy-aware fallback ({result.evaluations} evaluations): {verdict}",
        "",
        "| trial | float layers | accuracy drop | int8 p50 ms | gates |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(result.trials, start=1):
        latency = t.metrics.get("int8_latency_p50_ms")
        lines.append(
            f"| {i} | {', '.join(t.float_layers) or '-'} | {t.accuracy_drop:.4f} | "
            f"{'n/a' if latency is None else f'{latency:.3f}'} | {'pass' if t.passed else 'fail'} |"
        )
    return lines
