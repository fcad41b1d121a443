"""MLflow run state: open a run, close it FINISHED / FAILED / KILLED, recover runs a killed process left.

Everything goes through ``MlflowClient`` calls on the run id, never ``mlflow.start_run``
blocks: leaving such a block ends the run as FINISHED, whatever happens next, and a run must
be RUNNING while it converts, FINISHED only on success, FAILED on a failure.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping

import mlflow
from prefect import task

from quantstage.quant.errors import one_line
from quantstage.tasks._common import IO_RETRIES, run_logger

__all__ = [
    "close_failed",
    "close_runs_of",
    "end_run",
    "experiment_id",
    "fail_run",
    "failure_of",
    "log_metrics",
    "recover_orphaned_runs",
    "start_run",
    "use_tracking_uri",
]


def experiment_id(name: str) -> str:
    """The id of MLflow experiment ``name``, created when missing (no global fluent state)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


@task(name="start_run", **IO_RETRIES)
def start_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """Open an MLflow run in ``experiment`` and return its id."""
    run = mlflow.MlflowClient().create_run(experiment_id(experiment), run_name=run_name, tags=dict(tags))
    run_logger().info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, mlflow.get_tracking_uri())
    return str(run.info.run_id)


def use_tracking_uri(uri: str | None) -> None:
    """Point this process's MLflow client at ``uri`` (a worker is told where the flow's store is)."""
    if uri:
        mlflow.set_tracking_uri(uri)


def fail_run(run_id: str, error: str, detail: str = "", metrics: Mapping[str, float] | None = None) -> None:
    """Best effort: tag the run with the error (one line), keep ``detail`` (a traceback) as
    ``error.txt``, mark it FAILED. Never raises: the original error matters more."""
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "quantstage.error", error[:5000])
        if detail:
            client.log_text(run_id, detail, "error.txt")
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status="FAILED")


def failure_of(exc: BaseException) -> tuple[str, str]:
    """``(status, one-line reason)`` a run ends with when its conversion raised ``exc``: KILLED
    ("cancelled") when the flow run was cancelled (Prefect's TerminationSignal), else FAILED."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return "KILLED", "cancelled"
    return "FAILED", one_line(f"{type(exc).__name__}: {exc}", 500)


def close_failed(run_id: str, exc: BaseException) -> None:
    """Best effort, never raises: the run of a conversion that raised ends FAILED (KILLED when the flow
    run was cancelled), tagged with the one-line reason. The original error stays the one raised."""
    status, reason = failure_of(exc)
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "quantstage.error", reason)
        client.set_terminated(run_id, status=status)


def close_runs_of(flow_run_id: str, status: str, reason: str) -> list[str]:
    """Best effort, never raises: every MLflow run a flow run left RUNNING ends ``status`` (KILLED on
    cancel, FAILED on crash) tagged with ``reason``; return their ids. The flow's on_cancellation
    and on_crashed hook: there the flow's own code never got to close them."""
    closed: list[str] = []
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        query = f"tags.`quantstage.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'"
        for run in client.search_runs(experiments, query) if experiments else []:
            client.set_tag(run.info.run_id, "quantstage.error", reason)
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


@task(name="recover_orphaned_runs", **IO_RETRIES)
def recover_orphaned_runs(experiment: str, key: str) -> list[str]:
    """Runs of this conversion (same idempotency key) still RUNNING although their flow run ended or
    vanished — a killed process left them — marked FAILED with the reason; return their ids."""
    from prefect.client.orchestration import get_client

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], f"tags.`quantstage.idempotency_key` = '{key}' and attributes.status = 'RUNNING'"
    )
    orphans = []
    with get_client(sync_client=True) as prefect:
        for run in runs:
            flow_run_id = run.data.tags.get("quantstage.flow_run_id", "")
            try:
                state = prefect.read_flow_run(uuid.UUID(flow_run_id)).state if flow_run_id else None
            except Exception:
                state = None
            if state is not None and not state.is_final():
                continue  # its flow run is alive: a concurrent conversion, not an orphan
            reason = f"orphaned: flow run {flow_run_id or '?'} ended ({state.name if state else 'unknown'}) without closing it"
            client.set_tag(run.info.run_id, "quantstage.error", reason)
            client.set_terminated(run.info.run_id, status="FAILED")
            orphans.append(run.info.run_id)
    if orphans:
        run_logger().warning("marked %d orphaned MLflow run(s) FAILED: %s", len(orphans), ", ".join(orphans))
    return orphans


def log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Best effort: log ``metrics`` to a run after the fact (timings)."""
    with contextlib.suppress(Exception):
        client = mlflow.MlflowClient()
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)


@task(name="end_run", **IO_RETRIES)
def end_run(run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
    """Close the MLflow run with ``status`` (FINISHED or FAILED), after setting ``tags``."""
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)
