"""Idempotent conversions and trusted promotion (issue #6), under the session fixtures."""

from __future__ import annotations

import time

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from quantstage.flows.convert import ConvertParams, convert_flow
from quantstage.quant.engines import FxSpec

pytestmark = pytest.mark.flow

NAME = "digits-cnn-promo"


def _params(**kwargs) -> ConvertParams:
    return ConvertParams(
        model_uri="models:/digits-cnn@champion",
        registered_name=NAME,
        sensitivity=False,
        benchmark_iterations=5,
        **kwargs,
    )


def _events(name: str) -> list:
    async def read():
        async with get_client() as client:
            page = await client.read_events(filter=EventFilter(event=EventNameFilter(name=[name])), limit=50)
            return page.events

    import asyncio

    for _ in range(20):  # events reach the API asynchronously
        events = asyncio.run(read())
        if events:
            return events
        time.sleep(0.5)
    return []


@pytest.fixture(scope="module")
def first(digits_source: str):
    return convert_flow(_params())


def test_first_conversion_promotes_and_tags_key(first) -> None:
    client = mlflow.MlflowClient()
    assert first.promoted and not first.skipped
    mv = client.get_model_version(NAME, first.version)
    assert mv.tags["idempotency_key"] == first.idempotency_key and len(first.idempotency_key) == 64
    assert mv.tags["promoted"] == "true" and "no version holds @champion" in mv.tags["promotion_reason"]
    assert mv.tags["eval_digest"] and mv.tags["promote_if"] == "better"
    assert str(client.get_registered_model(NAME).aliases["champion"]) == first.version


def test_same_conversion_again_is_skipped(first) -> None:
    started = time.monotonic()
    state = convert_flow(_params(), return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_completed()
    again = state.result()
    assert again.skipped and not again.promoted
    assert again.version == first.version and again.run_id == first.run_id
    assert "already converted" in again.reason and "force=True" in again.reason
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")) == 1
    assert elapsed < 30, f"a skipped run took {elapsed:.1f}s"


def test_force_converts_again_and_equal_is_good_enough(first) -> None:
    forced = convert_flow(_params(force=True))
    assert not forced.skipped and forced.version != first.version
    assert forced.idempotency_key == first.idempotency_key
    # same model, same spec, same data: as good as the holder, so @champion moves (>=)
    assert forced.promoted, forced.reason
    assert str(mlflow.MlflowClient().get_registered_model(NAME).aliases["champion"]) == forced.version


def test_worse_conversion_leaves_alias(first) -> None:
    client = mlflow.MlflowClient()
    holder = client.get_model_version_by_alias(NAME, "champion")
    # the holder's run claims better accuracy than any int8 model can reach on this data
    client.log_metric(holder.tags["mlflow_run_id"], "int8_accuracy", 1.5, step=99)
    worse = FxSpec(
        qconfig_mapping={"preset": "static", "observers": {"activation": "minmax", "weight": "per_tensor"}},
        calibration_batches=1,
    )
    state = convert_flow(_params(spec=worse), return_state=True)
    assert state.is_completed()
    result = state.result()
    assert not result.promoted and not result.skipped
    assert "int8_accuracy" in result.reason and "keeps @champion" in result.reason
    assert str(client.get_registered_model(NAME).aliases["champion"]) == str(holder.version)
    mv = client.get_model_version(NAME, result.version)
    assert mv.tags["promoted"] == "false" and mv.tags["gates_passed"] == "true"
    assert "keeps @champion" in mv.tags["promotion_reason"]

    # promote_if=gates ignores the comparison
    gates_only = convert_flow(_params(spec=worse, promote_if="gates", force=True))
    assert gates_only.promoted and "promote_if=gates" in gates_only.reason
    assert str(client.get_registered_model(NAME).aliases["champion"]) == gates_only.version


def test_other_evaluation_falls_back_to_gates(first) -> None:
    result = convert_flow(_params(data={"seed": 1}))
    assert result.promoted and "gates only" in result.reason


def test_events_emitted(first) -> None:
    promoted = _events("quantstage.model.promoted")
    ids = {e.resource.id for e in promoted}
    assert f"mlflow.model.{NAME}.{first.version}" in ids, ids
    event = next(e for e in promoted if e.resource.id == f"mlflow.model.{NAME}.{first.version}")
    assert event.payload["model_uri"] == f"models:/{NAME}/{first.version}" and event.payload["alias"] == "champion"
    registered = _events("quantstage.model.registered")
    assert any(
        e.resource.id.startswith("mlflow.model.digits-cnn.")
        and e.payload["model_uri"].startswith("models:/digits-cnn/")
        for e in registered
    )
