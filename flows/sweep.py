"""sweep_flow: one float model, many candidate QuantSpecs, evaluated in parallel; only the best
passing candidate is registered and promoted.

Orchestration only. Each candidate (convert → validate → export → benchmark → log) is one
unit of work, ``tasks.candidate.run_candidate``, logged as an MLflow run nested under the
sweep's parent run; the units run in parallel on the task runner the parameters name:

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

Fairness: latencies measured while other candidates run beside them are not comparable, so
each unit of work only screens latency (``screening_iterations`` timed calls). After every
candidate has finished (and a temporary cluster is gone), the finalists — the ``finalists``
fastest passing candidates by the screening numbers — are re-benchmarked here, one at a time,
against the float model (``benchmark_iterations`` calls), and the ranking uses those numbers
(``fairness=sequential_rebenchmark``; the comparison table shows both). Ranking policies are in
``quant.ranking``. A candidate whose unit of work raised is recorded with its error and never
wins; when no candidate passes every gate nothing is registered and the flow fails
(``SweepFailure``, listing each candidate's failing gates).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from prefect import flow, runtime
from prefect.futures import wait
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from flows._source_params import SourceParams
from quant.errors import QuantStageError, SpecError
from quant.gates import GatesConfig
from quant.ranking import comparison_table, failure_summary, finalists, rank
from quant.spec import QuantSpec, first_error
from tasks.candidate import (
    CandidateJob,
    CandidateResult,
    describe_error,
    log_sweep,
    publish_sweep_table,
    rebenchmark_candidate,
    run_candidate,
    start_candidate_runs,
    tracking_uri,
)
from tasks.events import PROMOTED, emit_model_event
from tasks.load import load_data, load_model, source_identity
from tasks.track import (
    compare_with_holder,
    digest,
    end_run,
    find_version_by_key,
    log_data_lineage,
    promote,
    register_model,
    registry_lock,
    start_run,
    tag_version,
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

FAIRNESS = "sequential_rebenchmark"


class SweepFailure(QuantStageError):
    """No candidate passed every gate: nothing was registered."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _label(spec: QuantSpec) -> str:
    """What a spec sets apart from the defaults, e.g. ``backend="qnnpack", mode="dynamic"``."""
    changed = _flatten(spec.model_dump(mode="json", exclude_defaults=True))
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) or "default spec"
    return text if len(text) <= 120 else text[:117] + "..."


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if tree.get(part) is None:
            tree[part] = {}
        elif not isinstance(tree[part], dict):
            raise ValueError(f"grid field {dotted!r}: {part!r} is a value, not a section of the spec")
        tree = tree[part]
    tree[leaf] = value


def expand_grid(base: QuantSpec, grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of ``grid`` (dotted spec field → values) applied to ``base``, as
    ``(label, raw spec)`` pairs in product order (the last field varies fastest); unvalidated."""
    for key, values in grid.items():
        top = key.split(".")[0]
        if top not in QuantSpec.model_fields:
            raise ValueError(
                f"grid field {key!r} is not a QuantSpec field; use a dotted path from {sorted(QuantSpec.model_fields)}, "
                f"e.g. 'backend' or 'qconfig_mapping.observers.reduce_range'"
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid field {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, keys)]
    combos = []
    for values in itertools.product(*(grid[k] for k in keys)):
        raw = base.model_dump(mode="json")
        for key, value in zip(keys, values):
            _set_path(raw, key, value)
        combos.append((", ".join(f"{n}={json.dumps(v)}" for n, v in zip(names, values)), raw))
    return combos


class SweepParams(SourceParams):
    """Parameters of one sweep: a source model, the candidates, and what they share."""

    candidates: tuple[QuantSpec, ...] = Field(
        (), description="Candidate specs, evaluated in this order (indices 0..n-1), before the grid's."
    )
    grid: dict[str, tuple[Any, ...]] | None = Field(
        None,
        description="Dotted QuantSpec field -> values; every combination applied to base_spec is a candidate, "
        "e.g. {'backend': ['x86', 'qnnpack'], 'qconfig_mapping.observers.reduce_range': [true, false]}.",
    )
    base_spec: QuantSpec = Field(default_factory=QuantSpec, description="The spec the grid varies.")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="Checks every candidate must pass to win.")
    policy: Literal["fastest_passing", "pareto"] = Field(
        "fastest_passing",
        description="fastest_passing: lowest re-measured p50 among the passing candidates (ties: smaller accuracy "
        "drop); pareto: smallest accuracy drop among the passing candidates within pareto_tolerance of the fastest.",
    )
    pareto_tolerance: float = Field(0.05, ge=0.0, description="pareto: latency window above the fastest (0.05 = 5%).")
    finalists: int | None = Field(
        3, ge=1, description="Passing candidates (fastest first, parallel numbers) re-benchmarked alone; null: all."
    )
    task_runner: Literal["threads", "dask", "ray"] = Field("threads", description="Where the candidates run.")
    address: str | None = Field(
        None, description="dask/ray: attach to this scheduler (e.g. tcp://10.0.0.5:8786) instead of a local cluster."
    )
    workers: int = Field(2, ge=1, description="threads: pool size; dask without address: LocalCluster processes.")
    sensitivity: bool = Field(False, description="Per-layer sensitivity for every candidate (costs a pass per layer).")
    sensitivity_batches: int = Field(4, ge=1, description="Calibration batches the sensitivity analysis runs.")
    alias: str = Field("champion", description="Alias moved to the winner's version.")
    promote_if: Literal["gates", "better"] = Field(
        "better",
        description="'gates': move the alias to the winner; 'better': only when it is at least as good as the "
        "current alias holder on the same evaluation (as convert_flow).",
    )
    experiment: str = Field("quantstage", description="MLflow experiment of the parent and nested runs.")
    benchmark_iterations: int = Field(
        100, ge=5, description="Timed calls per model when the finalists are re-benchmarked alone (the ranked numbers)."
    )
    benchmark_max_cv: float | None = Field(
        0.25, gt=0.0, description="Re-benchmark: coefficient of variation above which a timing is re-measured, then "
        "marked unstable.",
    )
    screening_iterations: int = Field(
        20, ge=5, description="Timed calls per model inside each unit of work, beside the other candidates: a screening "
        "that picks the finalists (no re-measuring: numbers taken under load are noisy anyway).",
    )
    ship_tolerance: float = Field(
        0.0, ge=0.0, description="Largest absolute output difference the shipped TorchScript may have (0: bit-exact)."
    )
    force: bool = Field(
        False, description="Sweep even when a winner of the same sweep (same idempotency key) is already registered."
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _each_candidate(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        specs = []
        for i, raw in enumerate(value):
            try:
                specs.append(raw if isinstance(raw, QuantSpec) else QuantSpec.model_validate(raw))
            except ValidationError as exc:
                raise ValueError(f"candidate {i}: {first_error(exc)}") from None
        return tuple(specs)

    @model_validator(mode="after")
    def _candidates_usable(self) -> SweepParams:
        specs = self.candidate_specs()
        if not specs:
            raise ValueError("no candidates: give candidates (a list of specs) and/or grid (field -> values)")
        seen: dict[str, int] = {}
        for i, (name, spec) in enumerate(specs):
            if spec.mode == "qat":
                raise ValueError(
                    f"candidate {i} ({name}): mode 'qat' converts a QAT-trained checkpoint, which a sweep does not "
                    f"take; use convert_flow with qat_checkpoint, or mode static/dynamic/float16"
                )
            if (first := seen.setdefault(spec.digest(), i)) != i:
                raise ValueError(f"candidates {first} and {i} are the same spec (hash {spec.digest()}); drop one")
        if self.address and self.task_runner == "threads":
            raise ValueError(f"address {self.address!r} applies to task_runner 'dask' or 'ray', not 'threads'")
        return self

    def idempotency_key(self, identity: str) -> str:
        """sha256 of the resolved source, every candidate spec (in order), the data, the evaluation,
        the gates and the ranking settings — not the task runner, which does not change the answer."""
        return digest({
            "sweep": True,
            "source": identity,
            "candidates": [spec.digest() for _, spec in self.candidate_specs()],
            "data": self.data.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "gates": self.gates.model_dump(mode="json"),
            "ranking": [self.policy, self.pareto_tolerance, self.finalists],
        })

    def candidate_specs(self) -> list[tuple[str, QuantSpec]]:
        """``(label, spec)`` of every candidate: the explicit ones, then the grid's; validated,
        an error names the candidate index and the field."""
        out = [(_label(s), s) for s in self.candidates]
        if self.grid:
            for offset, (label, raw) in enumerate(expand_grid(self.base_spec, self.grid)):
                try:
                    out.append((label, QuantSpec.model_validate(raw)))
                except ValidationError as exc:
                    raise ValueError(f"candidate {len(self.candidates) + offset} (grid {label}): {first_error(exc)}") from None
        return out


class SweepResult(BaseModel):
    """What a sweep produced: every candidate's outcome, the ranking, the registered winner."""

    parent_run_id: str
    registered_name: str
    version: str | None = Field(None, description="Registry version of the winner (None: nothing registered).")
    promoted: bool = False
    winner: int | None = Field(None, description="Index of the winning candidate.")
    winner_run_id: str | None = None
    policy: str
    fairness: str = FAIRNESS
    reason: str = ""
    order: list[int] = Field(default_factory=list, description="Eligible candidates, best first.")
    front: list[int] = Field(default_factory=list, description="Pareto front of the re-measured candidates.")
    candidates: list[CandidateResult] = Field(default_factory=list)
    sequential: dict[int, dict[str, float]] = Field(default_factory=dict, description="Re-benchmark numbers by index.")
    table: dict[str, list] = Field(default_factory=dict, description="The comparison table (columns).")
    skipped: bool = Field(False, description="Nothing evaluated: a winner of the same sweep is already registered.")
    idempotency_key: str = ""


def build_task_runner(params: SweepParams) -> Any:
    """The Prefect task runner ``params`` asks for (see the module docstring)."""
    if params.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=params.workers)
    if params.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise SpecError(
                "task_runner 'dask' needs prefect-dask: pip install 'quantstage[dask]' (or prefect-dask)"
            ) from exc
        if params.address:
            return DaskTaskRunner(address=params.address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": params.workers, "processes": True, "threads_per_worker": 1, "dashboard_address": None,
            },
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


def _outcome(future: Any, job: CandidateJob) -> CandidateResult:
    try:
        return future.result()
    except Exception as exc:  # a candidate that raised is recorded with its error and never wins
        return CandidateResult.failed(job, describe_error(exc))


@flow(name="sweep-candidates", log_prints=True)
def evaluate_candidates(jobs: list[CandidateJob]) -> list[CandidateResult]:
    """Run every candidate's unit of work in parallel on this flow's task runner; collect outcomes."""
    futures = run_candidate.map(jobs)
    wait(futures)
    results = [_outcome(future, job) for future, job in zip(futures, jobs)]
    failed = [r for r in results if r.error]
    print(f"{len(results) - len(failed)} of {len(results)} candidates ran to the end" +
          "".join(f"\n  #{r.index} {r.name}: {r.error}" for r in failed))
    return results


def _run_name() -> str:
    params = runtime.flow_run.parameters.get("params")
    if isinstance(params, SweepParams):
        return f"sweep {params.source_label} [{params.task_runner}]"
    return f"sweep {SweepParams.raw_source_label(params)} [{(params or {}).get('task_runner', 'threads')}]"


def _lineage(params: SweepParams, source: Any, winner: CandidateResult, parent_run_id: str) -> dict[str, str]:
    lineage = {
        "source_uri": params.source_label,
        "source_name": source.name or "",
        "source_version": source.version or "",
        "source_run_id": source.run_id or "",
        "spec_hash": winner.spec_hash,
        "backend": winner.backend,
        "mode": winner.mode,
        "gates_passed": "true",
        "flow_run_id": str(runtime.flow_run.id),
        "mlflow_run_id": winner.run_id,
        "eval_digest": params.eval_digest(),
        "promote_if": params.promote_if,
        "sweep_run_id": parent_run_id,
        "sweep_candidate": str(winner.index),
        "sweep_policy": params.policy,
        "fairness": FAIRNESS,
    }
    if PREFECT_UI_URL.value() and (url := runtime.flow_run.ui_url):
        lineage["flow_run_url"] = url
    return lineage


@flow(name="sweep", flow_run_name=_run_name, log_prints=True)
def sweep_flow(params: SweepParams) -> SweepResult:
    """Evaluate every candidate spec in parallel, re-benchmark the finalists alone, register and
    promote only the winner; publish the comparison table."""
    runner = build_task_runner(params)  # fails fast when the runner's package is missing
    specs = params.candidate_specs()
    source_uri, target = params.source_label, params.target_name
    key = params.idempotency_key(source_identity(params.source))
    if not params.force and (existing := find_version_by_key(target, key)):
        reason = (
            f"already swept: {target} version {existing['version']} is the winner of a sweep with idempotency key "
            f"{key[:12]}… (candidate {existing['tags'].get('sweep_candidate')}); pass force=True to sweep again"
        )
        print(f"skipped: {reason}")
        return SweepResult(
            parent_run_id=existing["tags"].get("sweep_run_id", ""), registered_name=target, version=existing["version"],
            winner_run_id=existing["run_id"], policy=params.policy, reason=reason, skipped=True, idempotency_key=key,
        )
    source = load_model(params.source)  # the float model the finalists are re-benchmarked against, here
    dataset = load_data(params.data, source.model)
    parent = start_run(
        params.experiment,
        f"sweep {target} from {source_uri} ({len(specs)} candidates)",
        {"quantstage.source_uri": source_uri, "quantstage.flow_run_id": str(runtime.flow_run.id),
         "quantstage.sweep": "true", "quantstage.fairness": FAIRNESS},
    )
    try:
        log_data_lineage(parent, dataset, params.data)
        run_ids = start_candidate_runs(parent, params.experiment, [name for name, _ in specs], {"quantstage.sweep_run_id": parent})
        shared = dict(
            source=params.source, data=params.data, evaluation=params.evaluation,
            gates=params.gates.for_task(params.evaluation.task), tracking_uri=tracking_uri(),
            benchmark_iterations=params.screening_iterations, benchmark_max_cv=None, ship_tolerance=params.ship_tolerance,
            sensitivity=params.sensitivity, sensitivity_batches=params.sensitivity_batches,
        )
        jobs = [
            CandidateJob(index=i, name=name, spec=spec, run_id=run_id, **shared)
            for i, ((name, spec), run_id) in enumerate(zip(specs, run_ids))
        ]
        with _api_for_workers(params):
            results = evaluate_candidates.with_options(task_runner=runner)(jobs)
        for r in results:
            if r.error:  # the unit of work marks its run FAILED; this covers a worker that died
                end_run(r.run_id, "FAILED", {"quantstage.error": r.error[:5000]})
        # fairness: the finalists again, one at a time, with no candidate running beside them
        sequential = {
            i: rebenchmark_candidate(
                i, results[i].run_id, results[i].torchscript_uri, results[i].backend, source.model, dataset,
                iterations=params.benchmark_iterations, max_cv=params.benchmark_max_cv,
            )
            for i in finalists([r.score() for r in results], params.finalists)
        }
        scores = [r.score(sequential.get(r.index, {}).get("sequential_int8_latency_p50_ms")) for r in results]
        ranking = rank(scores, params.policy, tolerance=params.pareto_tolerance)
        table = comparison_table(scores, ranking)
        table["sequential_speedup"] = [sequential.get(r.index, {}).get("sequential_speedup") for r in results]
        table["seconds"] = [r.seconds.get("total_s") for r in results]
        table["run_id"] = [r.run_id for r in results]
        table["spec_hash"] = [r.spec_hash for r in results]
        winner = results[ranking.winner.index] if ranking.winner else None
        print(f"ranking ({params.policy}, {FAIRNESS}): {ranking.reason}\n{failure_summary(scores)}")
        log_sweep(
            parent,
            params={
                "policy": params.policy, "fairness": FAIRNESS, "candidates": str(len(results)),
                "task_runner": params.task_runner, "workers": str(params.workers), "address": params.address or "",
                "finalists": str(params.finalists), "pareto_tolerance": str(params.pareto_tolerance),
                "source_uri": source_uri, "source_version": source.version or "",
                "screening_iterations": str(params.screening_iterations),
                "benchmark_iterations": str(params.benchmark_iterations),
            },
            metrics={
                "candidates_evaluated": float(sum(s.evaluated for s in scores)),
                "candidates_passed": float(sum(s.passed for s in scores)),
                "candidates_failed": float(sum(s.error is not None for s in scores)),
                "winner_index": None if winner is None else float(winner.index),
            },
            table=table, scores=scores, ranking=ranking,
            documents={
                "sweep/params.json": params.model_dump_json(indent=2),
                "sweep/ranking.txt": f"{ranking.reason}\n\n{failure_summary(scores)}\n",
            },
        )
        publish_sweep_table(table, target, f"sweep of {len(results)} candidates for {target}: {ranking.reason}")
        if winner is None:
            raise SweepFailure(
                f"no candidate of the sweep passed every gate, so nothing was registered and "
                f"models:/{target}@{params.alias} was not moved:\n{failure_summary(scores)}"
            )
        if params.promote_if == "better":
            promoted, reason = compare_with_holder(target, "", params.alias, winner.metrics, params.eval_digest())
        else:
            promoted, reason = True, "the sweep's winner passed every gate (promote_if=gates)"
        with registry_lock():  # check-then-register, one registrar at a time
            existing = None if params.force else find_version_by_key(target, key)
            if existing is None:
                version = register_model(
                    winner.model_uri, target, _lineage(params, source, winner, parent) | {"idempotency_key": key},
                    description=f"sweep winner #{winner.index} ({winner.name}) of {source_uri} (version {source.version})",
                )
        if existing is not None:  # a concurrent sweep with the same key registered its winner first
            end_run(parent, "FINISHED", {"quantstage.duplicate_of": f"{target}/{existing['version']}"})
            return SweepResult(
                parent_run_id=parent, registered_name=target, version=existing["version"], policy=params.policy,
                reason=f"registered meanwhile by another sweep with idempotency key {key[:12]}…", skipped=True,
                idempotency_key=key, candidates=results, table=table,
            )
        if promoted:
            promote(target, version, params.alias)
            emit_model_event(PROMOTED, target, version, {
                "alias": params.alias, "source_uri": source_uri, "source_version": source.version or "",
                "reason": reason, "mlflow_run_id": winner.run_id, "flow_run_id": str(runtime.flow_run.id),
                "metrics": {k: winner.metrics[k] for k in ("int8_accuracy", "output_sqnr_db", "speedup") if k in winner.metrics},
            })
            print(f"models:/{target}@{params.alias} -> version {version} (candidate #{winner.index}): {reason}")
        else:
            print(f"registered version {version}, not promoted: {reason}")
        tag_version(target, version, {"promoted": str(promoted).lower(), "promotion_reason": reason[:4000]})
        end_run(winner.run_id, "FINISHED", {"quantstage.winner": "true", "quantstage.registered_version": version})
    except BaseException:
        end_run(parent, "FAILED")
        raise
    end_run(parent, "FINISHED", {"quantstage.winner": str(winner.index), "quantstage.registered_version": version})
    return SweepResult(
        parent_run_id=parent, registered_name=target, version=version, promoted=promoted, winner=winner.index,
        winner_run_id=winner.run_id, policy=params.policy, reason=ranking.reason, order=list(ranking.order),
        front=list(ranking.front), candidates=results, sequential=sequential, table=table, idempotency_key=key,
    )
