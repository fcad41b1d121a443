"""A sweep's runs never lie either: the lifecycle a single conversion has (tests/flows/test_recovery.py).
Runs a dead sweep left RUNNING are closed by the next sweep of the same key; a winner registered by a
sweep that stopped before its promotion was decided is promoted by the next sweep."""

from __future__ import annotations

import mlflow
import pytest

from quantstage.flows.sweep import sweep_flow
from quantstage.flows.sweep_params import SweepParams

pytestmark = pytest.mark.flow

NAME = "digits-cnn-sweep-recovery"


@pytest.fixture(scope="module")
def swept(digits_source: str):
    params = SweepParams(
        model_uri="models:/digits-cnn@champion",
        registered_name=NAME,
        candidates=[{}],
        task_runner="threads",
        workers=1,
        benchmark_iterations=10,
        screening_iterations=5,
        sensitivity=False,
    )
    first = sweep_flow(params)
    assert first.version is not None and first.promoted, first.reason
    return params, first


def test_runs_a_dead_sweep_left_running_are_closed_by_the_next_sweep_of_its_key(swept) -> None:
    params, first = swept
    client = mlflow.MlflowClient()
    parent = client.get_run(first.parent_run_id)
    flow_run_id = parent.data.tags["quantstage.flow_run_id"]  # finished: nobody will close its runs
    assert parent.data.tags["quantstage.idempotency_key"] == first.idempotency_key
    assert client.get_run(first.winner_run_id).data.tags["quantstage.flow_run_id"] == flow_run_id
    for run_id in (first.parent_run_id, first.winner_run_id):  # as if its process had been killed mid-sweep
        client.update_run(run_id, status="RUNNING")
    again = sweep_flow(params)
    assert again.skipped and "already swept" in again.reason
    for run_id in (first.parent_run_id, first.winner_run_id):
        closed = client.get_run(run_id)
        assert closed.info.status == "FAILED"
        assert closed.data.tags["quantstage.error"].startswith(f"orphaned: flow run {flow_run_id} ended (Completed)")


def test_a_winner_registered_but_never_promoted_is_promoted_by_the_next_sweep(swept) -> None:
    params, first = swept
    client = mlflow.MlflowClient()
    # as if the sweep died right after registering its winner: no promotion decided, no alias, runs RUNNING
    client.delete_registered_model_alias(NAME, "champion")
    client.delete_model_version_tag(NAME, first.version, "promoted")
    client.delete_model_version_tag(NAME, first.version, "promotion_reason")
    for run_id in (first.parent_run_id, first.winner_run_id):
        client.update_run(run_id, status="RUNNING")
    resumed = sweep_flow(params)
    assert not resumed.skipped and resumed.version == first.version and resumed.promoted, resumed.reason
    assert resumed.reason.startswith(f"resumed the publication of version {first.version} (its sweep stopped")
    assert (resumed.winner, resumed.winner_run_id) == (first.winner, first.winner_run_id)
    assert resumed.parent_run_id == first.parent_run_id
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == [first.version]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first.version
    assert client.get_model_version(NAME, first.version).tags["promoted"] == "true"
    for run_id in (first.parent_run_id, first.winner_run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["quantstage.resumed_by"]
        assert run.data.tags["quantstage.registered_version"] == first.version
