"""The engine race behind ``engine: auto``: convert with every candidate engine, keep the best shipped form.

For each candidate of an ``AutoSpec`` (in order, until ``auto_budget_s`` is spent: the rest are skipped),
``race_engines`` quantizes the model (``quant.quantize``), evaluates it as the pipeline does
(``quant.measure.evaluate``) and ships it with its engine (``Engine.ship``: the shipped form is kept for the
winner, never shipped twice). An engine that refuses the spec, or fails with an error quantstage raises for bad
input or that torch or a library raised, is a row with its one-line reason; an error in quantstage's own code
propagates (``quant.errors.raised_by_quantstage``). Every shipped form and the float model are then timed
interleaved on the same inputs, one thread, at the headline batch (``benchmark_many``). The winner is the
fastest that passes the accuracy and coverage gates; one as fast within the measured noise (the MAD-based
margin of the paired ratios, as the speed gate uses) and more accurate wins the tie; when none passes, the most
accurate (the pipeline's gates then fail the conversion, as for a pinned engine).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from quantstage.quant.config.spec import SpecBase
from quantstage.quant.data.inputs import args_of, batch_len, head
from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.outputs import with_output
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines.auto import EngineCandidate, auto_spec
from quantstage.quant.engines.registry import engine_for
from quantstage.quant.errors import ConversionError, QuantStageError, describe, raised_by_quantstage
from quantstage.quant.measure.benchmark import BenchmarkReport, benchmark_many, paired_speedup
from quantstage.quant.measure.evaluate import AccuracyReport, EvaluationSpec, evaluate
from quantstage.quant.measure.gates import GateResult, GatesConfig, check_gates
from quantstage.quant.quantize import Quantized, quantize
from quantstage.quant.ship.shipped import Origin, Shipped
from quantstage.quant.ship.signature import served_form

__all__ = [
    "EngineChoice",
    "EngineRace",
    "EngineRow",
    "Entrant",
    "RaceOptions",
    "engines_table",
    "race_engines",
    "ship_quantized",
]

logger = logging.getLogger(__name__)

Status = Literal["chosen", "passed", "failed gates", "refused", "error", "skipped"]
_VERIFY_BATCHES = 4
_ACCURACY_METRICS = ("int8_accuracy", "accuracy_drop", "agreement", "embedding_cosine_mean", "output_sqnr_db")


@dataclasses.dataclass(frozen=True)
class RaceOptions:
    """How the race measures: the pipeline's evaluation, gates, shipping and benchmark settings."""

    evaluation: EvaluationSpec | None = None
    gates: GatesConfig | None = None  # default: the evaluation task's defaults
    source: ModelSource | None = None  # how the float model was loaded (an engine's rebuild fallback needs it)
    ship_tolerance: float = 0.0
    export_budget_s: float | None = None
    batch_size: int | None = None  # default: the evaluation batch's
    iterations: int = 100
    max_cv: float | None = 0.25
    timing_budget_s: float | None = None
    qat_checkpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class EngineRow:
    """One candidate engine as the race saw it."""

    engine: str
    status: Status
    reason: str = ""
    convert_s: float | None = None  # quantize and evaluate
    ship_s: float | None = None
    p50_ms: float | None = None  # the shipped form, headline batch, one thread
    speedup: float | None = None  # vs the float model, the same rounds
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # accuracy
    quantized_fraction: float | None = None
    shipped_as: str = ""

    def as_row(self) -> dict[str, Any]:
        """The row as flat columns (the accuracy metrics the race compares, None where not measured)."""
        row = {k: v for k, v in dataclasses.asdict(self).items() if k != "metrics"}
        return row | {name: self.metrics.get(name) for name in _ACCURACY_METRICS}


def engines_table(rows: Sequence[EngineRow]) -> dict[str, list[Any]]:
    """Columns for a table artifact (``engines.json``): one row per candidate engine."""
    flat = [row.as_row() for row in rows]
    return {key: [row[key] for row in flat] for key in (flat[0] if flat else {})}


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """What the race decided, as data: the engine chosen, why (one line), every candidate's row."""

    chosen: str
    why: str
    rows: tuple[EngineRow, ...]


@dataclasses.dataclass(eq=False)  # compared by identity
class Entrant:
    """A candidate engine that converted and shipped the model: what the pipeline continues with if it wins."""

    engine: str
    quantized: Quantized
    accuracy: AccuracyReport
    shipped: Shipped
    gates: list[GateResult]
    convert_s: float
    ship_s: float
    bench: BenchmarkReport | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def speedup(self) -> float:
        return self.bench.speedup if self.bench is not None else math.nan

    def row(self, status: Status, reason: str) -> EngineRow:
        bench = self.bench
        metrics = self.accuracy.as_metrics()
        return EngineRow(
            engine=self.engine,
            status=status,
            reason=reason,
            convert_s=self.convert_s,
            ship_s=self.ship_s,
            p50_ms=bench.quant_latency.p50_ms if bench is not None else None,
            speedup=bench.speedup if bench is not None else None,
            metrics={k: metrics[k] for k in _ACCURACY_METRICS if k in metrics},
            quantized_fraction=self.quantized.coverage.quantized_fraction,
            shipped_as=self.shipped.method,
        )


@dataclasses.dataclass
class EngineRace:
    """The winner (its quantized model, accuracy and shipped form) and the choice, as data."""

    winner: Entrant
    choice: EngineChoice

    def shipped_for(self, quantized: Quantized) -> Shipped | None:
        """The winner's shipped form when ``quantized`` is the winner's model (not re-quantized since)."""
        return self.winner.shipped if quantized is self.winner.quantized else None


def ship_quantized(quantized: Quantized, dataset: Dataset, folder: Path, options: RaceOptions | None = None) -> Shipped:
    """Ship ``quantized`` with its engine as the pipeline's export stage does: the served form (the output the
    stages compare, called like the float model), verified on a few evaluation batches and on batch 1."""
    options = options or RaceOptions()
    verify = [args_of(inputs) for inputs, _ in dataset.evaluation[:_VERIFY_BATCHES]]
    verify.append(args_of(head(dataset.evaluation[0][0], 1)))
    origin = None
    if options.source is not None:
        origin = Origin(
            quantized.model, quantized.spec, quantized.tracing, options.source, dataset.output_key, dataset.input_names
        )
    served = served_form(quantized.model, dataset.output_key, dataset.input_names, dataset.example_inputs)
    return engine_for(quantized.spec).ship(
        served, folder, verify, origin=origin, tolerance=options.ship_tolerance, budget_s=options.export_budget_s
    )


def _gates(options: RaceOptions) -> GatesConfig:
    """The accuracy and coverage gates (speed is what the race compares; size is the normal gates' business)."""
    task = options.evaluation.task if options.evaluation is not None else "classification"
    gates = options.gates or GatesConfig().for_task(task)
    return gates.model_copy(update={"min_speedup": None, "max_size_ratio": None})


def _enter(
    model: nn.Module, candidate: EngineCandidate, spec: SpecBase, dataset: Dataset, folder: Path, options: RaceOptions
) -> Entrant | EngineRow:
    """Quantize, evaluate and ship with one engine: the entrant, or its error row."""
    started = time.perf_counter()
    convert_s: float | None = None
    try:
        calibration = [inputs for inputs, _ in dataset.calibration]
        quantized = quantize(
            model, spec, calibration, example_inputs=dataset.example_inputs, qat_checkpoint=options.qat_checkpoint
        )
        accuracy = evaluate(
            model,
            quantized.model,
            dataset.evaluation,
            options.evaluation,
            input_names=dataset.input_names,
            output_key=dataset.output_key,
        )
        convert_s = time.perf_counter() - started
        shipped = ship_quantized(quantized, dataset, folder / candidate.engine / "model", options)
    except Exception as exc:
        if raised_by_quantstage(exc) and not isinstance(exc, QuantStageError):
            raise  # a bug in quantstage's own code: not an engine's failure
        logger.info("engine %s failed: %s", candidate.engine, describe(exc))
        return EngineRow(candidate.engine, "error", describe(exc), convert_s=convert_s)
    ship_s = time.perf_counter() - started - convert_s
    gates = check_gates(_gates(options), accuracy, None, quantized.coverage)
    logger.info(
        "engine %s: converted in %.1f s, shipped %s in %.1f s", candidate.engine, convert_s, shipped.method, ship_s
    )
    return Entrant(candidate.engine, quantized, accuracy, shipped, gates, convert_s, ship_s)


def _time(model: nn.Module, entrants: list[Entrant], dataset: Dataset, options: RaceOptions) -> None:
    """Every shipped form (freshly loaded, as served) and the float model, interleaved, one thread."""
    inputs = dataset.evaluation[0][0]
    example = args_of(head(inputs, options.batch_size or batch_len(inputs)))
    float_model = with_output(model.eval(), dataset.output_key)
    loaded = {e.engine: e.shipped.load() for e in entrants}
    reports = benchmark_many(
        float_model,
        loaded,
        example,
        iterations=options.iterations,
        num_threads=1,
        max_cv=options.max_cv,
        budget_s=options.timing_budget_s,
    )
    for entrant in entrants:
        entrant.bench = reports[entrant.engine]


_ACCURACY_ORDER = ("top-1 accuracy", "agreement", "mean embedding cosine", "output SQNR dB")


def _accuracy_key(report: AccuracyReport) -> tuple[float, ...]:
    """Higher is more accurate: top-1 accuracy, agreement, mean embedding cosine, output SQNR (``_ACCURACY_ORDER``)."""
    values = (report.quant_accuracy, report.agreement, report.extra.get("embedding_cosine_mean"), report.sqnr_db)
    return tuple(-math.inf if v is None or math.isnan(v) else v for v in values)


def _compared(a: AccuracyReport, b: AccuracyReport) -> str:
    """The measure that tells ``a`` from ``b`` in accuracy, both values: ``output SQNR dB 36.97 vs 36.34``."""
    for name, x, y in zip(_ACCURACY_ORDER, _accuracy_key(a), _accuracy_key(b)):
        if x != y:
            return f"{name} {x:.4g} vs {y:.4g}"
    return "equally accurate"


def _accuracy_text(report: AccuracyReport) -> str:
    if report.accuracy_drop is not None:
        return f"accuracy drop {report.accuracy_drop:.4f}"
    if report.agreement is not None:
        return f"agreement {report.agreement:.4f}"
    if "embedding_cosine_mean" in report.extra:
        return f"mean cosine {report.extra['embedding_cosine_mean']:.4f}"
    return f"output SQNR {report.sqnr_db:.1f} dB"


def _faster(fast: Entrant, slow: Entrant) -> tuple[float, float]:
    """How much faster ``fast`` ran than ``slow`` (the median paired ratio) and the noise of that median."""
    assert fast.bench is not None and slow.bench is not None, "timed before compared"
    return paired_speedup(slow.bench.quant_times_ms, fast.bench.quant_times_ms)


def _tied(a: Entrant, b: Entrant) -> bool:
    ratio, noise = _faster(a, b)
    return ratio - noise <= 1.0


def _pick(entrants: list[Entrant]) -> tuple[Entrant, str, dict[str, str]]:
    """The winner, why it won (one line), and why each other entrant lost."""
    passing = [e for e in entrants if e.passed]
    pool = passing or entrants
    fastest = max(pool, key=lambda e: e.speedup)
    tied = [e for e in pool if e is fastest or _tied(fastest, e)] if passing else pool  # none passing: accuracy
    winner = max(tied, key=lambda e: _accuracy_key(e.accuracy))
    lost: dict[str, str] = {}
    for e in pool:
        if e is not winner:
            ratio, noise = _faster(winner, e)
            lost[e.engine] = (
                f"{ratio:.2f}x slower than {winner.engine} (noise {noise:.2f})"
                if e not in tied
                else f"less accurate ({_compared(e.accuracy, winner.accuracy)})"
                if not passing
                else f"as fast as {winner.engine} within the noise ({winner.engine} ran {ratio:.2f}x as fast, noise "
                f"{noise:.2f}), less accurate ({_compared(e.accuracy, winner.accuracy)})"
            )
    where = f"at batch {winner.bench.batch_size if winner.bench else '?'}, 1 thread"
    accuracy = _accuracy_text(winner.accuracy)
    if not passing:
        why = f"no engine passed the accuracy and coverage gates; {winner.engine} is the most accurate ({accuracy})"
    elif len(pool) == 1:
        why = f"the only engine that passed the accuracy and coverage gates ({winner.speedup:.2f}x vs float {where})"
    elif winner is not fastest:
        ratio, noise = _faster(fastest, winner)
        why = (
            f"as fast as {fastest.engine} within the measured noise ({fastest.engine} ran {ratio:.2f}x as fast, noise "
            f"{noise:.2f}, {where}) and more accurate ({_compared(winner.accuracy, fastest.accuracy)})"
        )
    else:
        runner = max((e for e in pool if e is not winner), key=lambda e: e.speedup)
        ratio, noise = _faster(winner, runner)
        why = (
            f"the fastest that passed the accuracy and coverage gates: {winner.speedup:.2f}x vs float, {ratio:.2f}x "
            f"vs {runner.engine} (noise {noise:.2f}) {where}" + (", and at least as accurate" if len(tied) > 1 else "")
        )
    return winner, f"{winner.engine}: {why}", lost


def _failed(entrant: Entrant) -> str:
    return "; ".join(g.reason for g in entrant.gates if not g.passed)


def race_engines(
    model: nn.Module, spec: SpecBase, dataset: Dataset, folder: Path, options: RaceOptions | None = None
) -> EngineRace:
    """Race the candidate engines of ``spec`` (an ``AutoSpec``) on ``model``; forms are shipped under ``folder``
    (one folder per engine). ConversionError when no candidate ships a model (see the module docstring)."""
    auto, options = auto_spec(spec), options or RaceOptions()
    started = time.perf_counter()
    rows: dict[str, EngineRow] = {}
    entrants: list[Entrant] = []
    for candidate in auto.candidates(check=True):
        spent = time.perf_counter() - started
        if candidate.spec is None:
            rows[candidate.engine] = EngineRow(candidate.engine, "refused", candidate.refused)
        elif (entrants or any(r.status == "error" for r in rows.values())) and spent >= auto.auto_budget_s:
            reason = f"auto_budget_s {auto.auto_budget_s:g} s spent ({spent:.0f} s) before its turn"
            rows[candidate.engine] = EngineRow(candidate.engine, "skipped", reason)
        else:
            result = _enter(model, candidate, candidate.spec, dataset, folder, options)
            entrants += [result] if isinstance(result, Entrant) else []
            rows[candidate.engine] = result if isinstance(result, EngineRow) else EngineRow(result.engine, "passed")
    if not entrants:
        summary = "; ".join(f"{r.engine}: {r.status}: {r.reason}" for r in rows.values())
        raise ConversionError(
            f"engine 'auto': no candidate engine shipped a model ({summary}); fix: change what the errors name, "
            f"or pin an engine (engine: fx or pt2e) to see its error alone"
        )
    _time(model, entrants, dataset, options)
    winner, why, lost = _pick(entrants)
    for e in entrants:
        status: Status = "chosen" if e is winner else ("passed" if e.passed else "failed gates")
        reason = (
            why.removeprefix(f"{e.engine}: ")
            if e is winner
            else "; ".join(r for r in (lost.get(e.engine, ""), _failed(e)) if r)
        )
        rows[e.engine] = e.row(status, reason)
    logger.info("engine race: %s", why)
    ordered = tuple(rows[name] for name in auto.engines)
    return EngineRace(winner, EngineChoice(winner.engine, why, ordered))
