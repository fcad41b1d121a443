"""Engine-race stage (``engine: auto``): convert, evaluate and ship with every candidate engine, time the shipped
forms against each other and the float model, keep the winner (``quant.search.engines.race_engines``)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import QuantSpec
from quantstage.quant.measure.evaluate import EvaluationSpec
from quantstage.quant.measure.gates import GatesConfig
from quantstage.quant.search.engines import EngineChoice, EngineRace, RaceOptions, engines_table, race_engines
from quantstage.tasks._common import run_logger
from quantstage.tasks._gate import gated
from quantstage.tasks.report import artifact_key

__all__ = ["RaceStages", "pick_engine"]


class RaceStages(Protocol):
    """What the race reads of a unit's stage settings (``flows.params.StageParams`` has it)."""

    @property
    def source(self) -> ModelSource: ...
    @property
    def evaluation(self) -> EvaluationSpec: ...
    @property
    def ship_tolerance(self) -> float: ...
    @property
    def export_budget_s(self) -> float | None: ...
    @property
    def benchmark_batch_sizes(self) -> tuple[int, ...] | None: ...
    @property
    def benchmark_iterations(self) -> int: ...
    @property
    def benchmark_max_cv(self) -> float | None: ...
    @property
    def benchmark_budget_s(self) -> float | None: ...


def _log_choice(choice: EngineChoice, name: str) -> None:
    logger = run_logger()
    for row in choice.rows:
        timing = "" if row.p50_ms is None else f", p50 {row.p50_ms:.3f} ms ({row.speedup:.2f}x vs float)"
        logger.info("engine %s: %s%s%s", row.engine, row.status, timing, f" ({row.reason[:300]})" if row.reason else "")
    logger.info("engine chosen: %s", choice.why)
    table = engines_table(choice.rows)
    create_table_artifact(
        table=[dict(zip(table, values)) for values in zip(*table.values())],
        key=f"engines-{artifact_key(name)}",
        description=f"the engine race of {name}: {choice.why[:200]}",
    )


@task(name="pick_engine", cache_policy=NO_CACHE)
@gated("exclusive")  # every candidate engine traces the model
def pick_engine(
    model: torch.nn.Module,
    dataset: Dataset,
    spec: QuantSpec,
    stages: RaceStages,
    gates: GatesConfig,
    out_dir: str,
    name: str,
    qat_checkpoint: str | None = None,
) -> EngineRace:
    """Race ``spec``'s candidate engines (an auto spec) with the unit's evaluation, gates, shipping and benchmark
    settings; the winner's quantized model, accuracy and shipped form, and the rows of every engine."""
    run_logger().info("engine auto: racing the candidate engines of spec %s", spec.digest())
    options = RaceOptions(
        evaluation=stages.evaluation,
        gates=gates,
        source=stages.source,
        ship_tolerance=stages.ship_tolerance,
        export_budget_s=stages.export_budget_s,
        batch_size=(stages.benchmark_batch_sizes or (None,))[0],
        iterations=stages.benchmark_iterations,
        max_cv=stages.benchmark_max_cv,
        timing_budget_s=stages.benchmark_budget_s,
        qat_checkpoint=qat_checkpoint,
    )
    race = race_engines(model, spec, dataset, Path(out_dir) / "engines", options)
    _log_choice(race.choice, name)
    return race
