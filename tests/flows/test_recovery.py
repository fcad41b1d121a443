"""States that never lie: a failed conversion's run is FAILED with its reason, an orphaned run is found
and closed by the next conversion of the same key, and a conversion stopped between registering and
promoting is completed by a rerun (one version, alias moved)."""

from __future__ import annotations

import mlflow
import pytest

from quantstage.flows.convert import ConvertParams, convert_flow
from quantstage.quant.engines import FxSpec

pytestmark = pytest.mark.flow


def _params(name: str, **kwargs) -> ConvertParams:
    return ConvertParams(
        model_uri="models:/digits-cnn@champion",
        registered_name=name,
        sensitivity=False,
        benchmark_iterations=5,
        **kwargs,
    )


def _runs(experiment: str = "quantstage") -> list:
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_failed_conversion_leaves_its_run_failed_with_the_reason(digits_source: str) -> None:
    params = _params("digits-cnn-failing", spec=FxSpec(skip_modules=("head.nope",), strict_skips=True))
    state = convert_flow(params, return_state=True)
    assert state.is_failed()
    run = next(r for r in _runs() if r.data.tags.get("mlflow.runName", "").startswith("digits-cnn-failing from"))
    assert run.info.status == "FAILED"
    reason = run.data.tags["quantstage.error"]
    assert reason.startswith("SpecError: 1 skip(s) match nothing") and "\n" not in reason


def test_an_orphaned_run_is_closed_by_the_next_conversion_of_its_key(digits_source: str) -> None:
    first = convert_flow(_params("digits-cnn-orphans"))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("quantstage").experiment_id
    flow_run_id = client.get_run(first.run_id).data.tags["quantstage.flow_run_id"]  # finished: nobody will close it
    orphan = client.create_run(
        experiment,
        run_name="killed mid-flow",
        tags={
            "quantstage.idempotency_key": first.idempotency_key,
            "quantstage.flow_run_id": flow_run_id,
        },
    )
    again = convert_flow(_params("digits-cnn-orphans"))
    assert again.skipped
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags["quantstage.error"].startswith(f"orphaned: flow run {flow_run_id} ended (Completed)")


def test_a_registration_stopped_before_promotion_is_completed_by_a_rerun(digits_source: str) -> None:
    name = "digits-cnn-resume"
    first = convert_flow(_params(name))
    client = mlflow.MlflowClient()
    # as if the process died right after registering: no promotion decided, no alias, run still RUNNING
    client.delete_registered_model_alias(name, "champion")
    client.delete_model_version_tag(name, first.version, "promoted")
    client.delete_model_version_tag(name, first.version, "promotion_reason")
    client.update_run(first.run_id, status="RUNNING")
    resumed = convert_flow(_params(name))
    assert not resumed.skipped and resumed.version == first.version and resumed.promoted, resumed.reason
    assert resumed.reason.startswith(f"resumed the publication of version {first.version}")
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [first.version]
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    assert client.get_model_version(name, first.version).tags["promoted"] == "true"
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_cancel_and_crash_hooks_close_the_flow_runs_mlflow_runs(mlflow_store: str) -> None:
    """What Prefect calls when a flow run is cancelled (its process killed) or crashes: every MLflow
    run tagged with that flow run ends KILLED / FAILED with the reason; other runs are untouched."""
    import types
    import uuid

    from quantstage.flows.hooks import CLOSE_RUNS_ON_CANCEL, CLOSE_RUNS_ON_CRASH

    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"hooks-{uuid.uuid4().hex[:6]}")
    cancelled, crashed = uuid.uuid4(), uuid.uuid4()
    runs = {
        flow_run: client.create_run(experiment, tags={"quantstage.flow_run_id": str(flow_run)}).info.run_id
        for flow_run in (cancelled, crashed, uuid.uuid4())
    }
    state = types.SimpleNamespace(name="Crashed", message="Flow run process exited with\nsignal 9")
    CLOSE_RUNS_ON_CANCEL[0](None, types.SimpleNamespace(id=cancelled), types.SimpleNamespace(name="Cancelled"))
    CLOSE_RUNS_ON_CRASH[0](None, types.SimpleNamespace(id=crashed), state)
    statuses = {k: client.get_run(v) for k, v in runs.items()}
    assert statuses[cancelled].info.status == "KILLED"
    assert statuses[cancelled].data.tags["quantstage.error"].startswith("cancelled: flow run")
    assert statuses[crashed].info.status == "FAILED"
    assert statuses[crashed].data.tags["quantstage.error"].endswith("(Crashed): Flow run process exited with signal 9")
    assert [r.info.status for k, r in statuses.items() if k not in (cancelled, crashed)] == ["RUNNING"]
