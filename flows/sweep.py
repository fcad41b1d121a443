"""sweep_flow: one float model, many candidate QuantSpecs, evaluated in parallel; only the best
passing candidate is registered and promoted.

Orchestration only. Each candidate is one conversion unit (``flows.unit``: the same chain of
stage tasks a single conversion runs), run by the task ``convert_candidate`` and logged as an
MLflow run nested under the sweep's parent run; the units run in parallel on the task runner
the parameters name:

* ``threads`` — a ``ThreadPoolTaskRunner(max_workers=workers)`` in this process;
* ``dask`` — ``prefect_dask.DaskTaskRunner``: attached to the scheduler at ``address``, or a
  temporary ``distributed.LocalCluster`` of ``workers`` processes, one thread each;
* ``ray`` — ``prefect_ray.RayTaskRunner`` (``pip install prefect-ray``), at ``address`` if given.

The runner is built from the parameters when the flow runs (``evaluate_candidates.with_options
(task_runner=…)``, a subflow), so a deployment picks it per run too.

Workers receive only small serialisable values and return only numbers, MLflow run ids and
artifact URIs: every worker loads the float model and the data itself, and each candidate's
quantized model travels as the TorchScript file it logged. **Shared storage is required**:
workers must reach the MLflow tracking server (its URI is passed to them explicitly) and read
and write its artifact store — a folder every worker mounts at the same path, or an MLflow
server with a proxied artifact store (``mlflow server --serve-artifacts``). Workers reach the
Prefect API through the settings Prefect ships with each task (``PREFECT_API_URL``).

Fairness: latencies measured beside other candidates are not comparable, so units only screen
latency (``screening_iterations``); the ``finalists`` fastest passing candidates are then
re-benchmarked here one at a time (``benchmark_iterations``) and ranked on those numbers
(``quant.search.ranking``). The winner is published like a single conversion; a candidate that
raised never wins; when none passes every gate nothing is registered (``SweepFailure``). The run
lifecycle is a single conversion's (``tasks.run.ConversionRun``): the same key skips, orphaned
runs are closed, a winner registered by a sweep that stopped is promoted by the next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from prefect import flow, runtime
from prefect.futures import wait
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from quantstage.flows.hooks import CLOSE_RUNS_ON_CANCEL, CLOSE_RUNS_ON_CRASH
from quantstage.flows.sweep_params import FAIRNESS, SweepParams, SweepResult, expand_grid
from quantstage.flows.unit import UnitJob, UnitResult, convert_candidate
from quantstage.quant.data.sources import Dataset
from quantstage.quant.engines import QuantSpec
from quantstage.quant.errors import QuantStageError, SpecError
from quantstage.quant.report.markdown import sweep_pending
from quantstage.quant.search.ranking import CandidateScore, Ranking, comparison_table, failure_summary, finalists, rank
from quantstage.tasks.load import SourceModel
from quantstage.tasks.publish import Publication
from quantstage.tasks.run import ConversionRun, Settled
from quantstage.tasks.runs import end_run
from quantstage.tasks.sweep import (
    describe_error,
    log_sweep,
    publish_sweep_table,
    rebenchmark_candidate,
    start_candidate_runs,
    tracking_uri,
)

__all__ = [
    "FAIRNESS",
    "SweepFailure",
    "SweepParams",
    "SweepResult",
    "build_task_runner",
    "evaluate_candidates",
    "expand_grid",
    "sweep_flow",
]


class SweepFailure(QuantStageError):
    """No candidate passed every gate: nothing was registered."""


def build_task_runner(params: SweepParams) -> Any:
    """The Prefect task runner ``params`` asks for (see the module docstring)."""
    if params.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=params.workers)
    if params.task_runner == "dask":
        try:
            from prefect_dask.task_runners import DaskTaskRunner
        except ImportError as exc:
            raise SpecError(
                "task_runner 'dask' needs prefect-dask: pip install 'quantstage[dask]' (or prefect-dask)"
            ) from exc
        if params.address:
            return DaskTaskRunner(address=params.address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs=dict(n_workers=params.workers, processes=True, threads_per_worker=1, dashboard_address=None),
        )
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise SpecError("task_runner 'ray' needs prefect-ray: pip install prefect-ray") from exc
    return RayTaskRunner(address=params.address) if params.address else RayTaskRunner()


@contextlib.contextmanager
def _api_for_workers(params: SweepParams) -> Iterator[None]:
    """Dask/Ray workers are other processes: in ephemeral mode (no PREFECT_API_URL) each would
    start a temporary API of its own; point them at this process's instead (the settings travel
    with every task)."""
    if params.task_runner == "threads" or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one this process's client already runs on
    server.start()  # no-op when running
    if params.address:
        print(
            f"PREFECT_API_URL is not set: workers at {params.address} are pointed at this machine's temporary API "
            f"{server.api_url}, which only local workers can reach; run a Prefect server they can reach instead"
        )
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def _outcome(future: Any, job: UnitJob) -> UnitResult:
    try:
        result: UnitResult = future.result()
    except Exception as exc:  # a candidate that raised is recorded with its error and never wins
        return UnitResult.failed(job, describe_error(exc))
    return result


@flow(name="sweep-candidates", log_prints=True)
def evaluate_candidates(jobs: list[UnitJob]) -> list[UnitResult]:
    """Run every candidate's conversion unit in parallel on this flow's task runner; collect outcomes."""
    futures = convert_candidate.map(jobs)
    wait(futures)
    results = [_outcome(future, job) for future, job in zip(futures, jobs)]
    failed = [r for r in results if r.error]
    for r in failed:  # the unit of work marks its run FAILED; this covers a worker that died
        end_run(r.run_id, "FAILED", {"quantstage.error": r.error[:5000] if r.error else ""})
    print(
        f"{len(results) - len(failed)} of {len(results)} candidates ran to the end"
        + "".join(f"\n  #{r.index} {r.name}: {r.error}" for r in failed)
    )
    return results


def _run_name() -> str:
    params = runtime.flow_run.parameters.get("params")
    if isinstance(params, SweepParams):
        return f"sweep {params.source_label} [{params.task_runner}]"
    return f"sweep {SweepParams.raw_source_label(params)} [{(params or {}).get('task_runner', 'threads')}]"


def _jobs(params: SweepParams, specs: list[tuple[str, QuantSpec]], run_ids: list[str], parent: str) -> list[UnitJob]:
    """One conversion unit per candidate: screening benchmark, one thread, beside the others."""
    stages = params.stage_params(benchmark_iterations=params.screening_iterations, benchmark_max_cv=None)
    return [
        UnitJob(
            index=i,
            name=name,
            spec=spec,
            stages=stages,
            run_id=run_id,
            parallel=True,
            tracking_uri=tracking_uri(),
            promotion=sweep_pending(parent),
            extra_params={"candidate.index": str(i), "candidate.name": name[:500]},
        )
        for i, ((name, spec), run_id) in enumerate(zip(specs, run_ids))
    ]


def _sweep_params(params: SweepParams, n: int, source_version: str | None) -> dict[str, str]:
    return {
        "policy": params.policy,
        "fairness": FAIRNESS,
        "candidates": str(n),
        "task_runner": params.task_runner,
        "workers": str(params.workers),
        "address": params.address or "",
        "finalists": str(params.finalists),
        "pareto_tolerance": str(params.pareto_tolerance),
        "source_uri": params.source_label,
        "source_version": source_version or "",
        "screening_iterations": str(params.screening_iterations),
        "benchmark_iterations": str(params.benchmark_iterations),
    }


def _comparison(
    results: list[UnitResult], scores: list[CandidateScore], ranking: Ranking, sequential: dict[int, dict[str, float]]
) -> dict[str, list[Any]]:
    """The comparison table: the ranking's columns, the quiet re-benchmark, time, run and spec of each candidate."""
    table = comparison_table(scores, ranking)
    table["sequential_speedup"] = [sequential.get(r.index, {}).get("sequential_speedup") for r in results]
    table["seconds"] = [r.seconds.get("total_s") for r in results]
    table["run_id"] = [r.run_id for r in results]
    table["spec_hash"] = [r.spec.digest() for r in results]
    return table


def _sweep_metrics(scores: list[CandidateScore], winner: UnitResult | None) -> dict[str, float]:
    return {
        "candidates_evaluated": float(sum(s.evaluated for s in scores)),
        "candidates_passed": float(sum(s.passed for s in scores)),
        "candidates_failed": float(sum(s.error is not None for s in scores)),
        **({} if winner is None else {"winner_index": float(winner.index)}),
    }


class _Ranked(NamedTuple):
    """The candidates' outcomes, their quiet re-benchmark and the ranking."""

    results: list[UnitResult]
    sequential: dict[int, dict[str, float]]
    ranking: Ranking
    table: dict[str, list[Any]]

    @property
    def winner(self) -> UnitResult | None:
        return self.results[self.ranking.winner.index] if self.ranking.winner else None


def _rank(
    params: SweepParams, results: list[UnitResult], source: SourceModel, dataset: Dataset, parent: str
) -> _Ranked:
    """Fairness: the finalists again, one at a time, alone (the speed gate is judged there, not in
    parallel); rank on those numbers; log the comparison to the parent run and as a Prefect table."""
    remeasured = {
        i: rebenchmark_candidate(
            i,
            results[i].run_id,
            results[i].model_uri or "",
            results[i].spec,
            source.model,
            dataset,
            iterations=params.benchmark_iterations,
            max_cv=params.benchmark_max_cv,
            min_speedup=params.gates.for_task(params.evaluation.task).min_speedup,
        )
        for i in finalists([r.score() for r in results], params.finalists)
    }
    sequential = {i: metrics for i, (metrics, _) in remeasured.items()}
    scores = [r.score(*remeasured.get(r.index, ({}, []))) for r in results]
    ranking = rank(scores, params.policy, tolerance=params.pareto_tolerance)
    ranked = _Ranked(results, sequential, ranking, _comparison(results, scores, ranking, sequential))
    reason, summary = ranked.ranking.reason, failure_summary(scores)
    print(f"ranking ({params.policy}, {FAIRNESS}): {reason}\n{summary}")
    log_sweep(
        parent,
        params=_sweep_params(params, len(results), source.version),
        metrics=_sweep_metrics(scores, ranked.winner),
        table=ranked.table,
        scores=scores,
        ranking=ranked.ranking,
        documents={
            "sweep/params.json": params.model_dump_json(indent=2),
            "sweep/ranking.txt": f"{reason}\n\n{summary}\n",
        },
    )
    target = params.target_name
    publish_sweep_table(ranked.table, target, f"sweep of {len(results)} candidates for {target}: {reason}")
    if ranked.winner is None or ranked.winner.model_uri is None:
        raise SweepFailure(
            f"no candidate of the sweep passed every gate, so nothing was registered and "
            f"models:/{target}@{params.alias} was not moved:\n{summary}"
        )
    return ranked


def _settled(params: SweepParams, settled: Settled, parent: str = "", ranked: _Ranked | None = None) -> SweepResult:
    """The result of a sweep the registry already held: skipped, resumed, or registered meanwhile."""
    return SweepResult(
        parent_run_id=parent or settled.tags.get("sweep_run_id", ""),
        registered_name=params.target_name,
        version=settled.version,
        promoted=settled.promoted,
        winner=settled.candidate,
        winner_run_id=settled.run_id or None,
        policy=params.policy,
        reason=settled.reason,
        skipped=settled.skipped,
        idempotency_key=settled.key,
        candidates=ranked.results if ranked else [],
        table=ranked.table if ranked else {},
    )


def _swept(params: SweepParams, run: ConversionRun, ranked: _Ranked, published: Publication) -> SweepResult:
    winner = ranked.winner
    assert winner is not None
    print(
        f"version {published.version} (candidate #{winner.index}): "
        + (f"models:/{params.target_name}@{params.alias}" if published.promoted else "not promoted")
        + f" ({published.reason})"
    )
    return SweepResult(
        parent_run_id=run.run_id,
        registered_name=params.target_name,
        version=published.version,
        promoted=published.promoted,
        winner=winner.index,
        winner_run_id=winner.run_id,
        policy=params.policy,
        reason=ranked.ranking.reason,
        order=list(ranked.ranking.order),
        front=list(ranked.ranking.front),
        candidates=ranked.results,
        sequential=ranked.sequential,
        table=ranked.table,
        idempotency_key=run.key,
    )


@flow(
    name="sweep",
    flow_run_name=_run_name,
    log_prints=True,
    on_cancellation=CLOSE_RUNS_ON_CANCEL,
    on_crashed=CLOSE_RUNS_ON_CRASH,
)
def sweep_flow(params: SweepParams) -> SweepResult:
    """Evaluate every candidate spec in parallel, re-benchmark the finalists alone, register and
    promote only the winner; publish the comparison table."""
    runner = build_task_runner(params)  # fails fast when the runner's package is missing
    specs = params.candidate_specs()
    run = ConversionRun(params, "sweep")
    if (settled := run.settle()) is not None:  # swept before (or stopped after registering: resumed)
        return _settled(params, settled)
    source, dataset = run.load()  # the float model the finalists are re-benchmarked against, here
    name = f"sweep {params.target_name} from {params.source_label} ({len(specs)} candidates)"
    with run.opened(name, {"quantstage.sweep": "true", "quantstage.fairness": FAIRNESS}) as parent:
        names = [label for label, _ in specs]
        run_ids = start_candidate_runs(
            parent, params.experiment, names, run.tags() | {"quantstage.sweep_run_id": parent}
        )
        with _api_for_workers(params):
            results = evaluate_candidates.with_options(task_runner=runner)(_jobs(params, specs, run_ids, parent))
        ranked = _rank(params, results, source, dataset, parent)
        winner = ranked.winner
        assert winner is not None  # _rank raised SweepFailure otherwise
        described = f"sweep winner #{winner.index} ({winner.name}) of {params.source_label} (version {source.version})"
        sweep_tags = {"sweep_run_id": parent, "sweep_candidate": str(winner.index), "sweep_policy": params.policy}
        published = run.publish(winner.winner(described, sweep_tags | {"fairness": FAIRNESS}, candidate=winner.index))
        if isinstance(published, Settled):  # a concurrent sweep with the same key registered its winner first
            return _settled(params, published, parent, ranked)
        return _swept(params, run, ranked, published)
