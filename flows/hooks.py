"""Flow-run state hooks: MLflow runs never stay RUNNING after their flow run was cancelled or crashed.

A cancel that kills the flow-run process, or a crash (the process died, or the zombie-run automation
of ``deploy/stack.sh`` marked it Crashed), leaves the flow's own code no chance to close its MLflow
run; Prefect then calls these hooks in the runner, which close every run tagged with that flow run."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import FlowStateHook

from quantstage.tasks.runs import close_runs_of

__all__ = ["CLOSE_RUNS_ON_CANCEL", "CLOSE_RUNS_ON_CRASH"]


def _killed(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    close_runs_of(str(flow_run.id), "KILLED", f"cancelled: flow run {flow_run.id} ({state.name})")


def _crashed(flow: Flow[Any, Any], flow_run: FlowRun, state: State) -> None:
    message = " ".join(str(state.message or "").split())[:300]
    close_runs_of(str(flow_run.id), "FAILED", f"crashed: flow run {flow_run.id} ({state.name}): {message}")


CLOSE_RUNS_ON_CANCEL: list[FlowStateHook[..., Any]] = [_killed]
CLOSE_RUNS_ON_CRASH: list[FlowStateHook[..., Any]] = [_crashed]
