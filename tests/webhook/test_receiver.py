"""``quantstage webhook serve`` as a process in front of a real Prefect API (the session's test
server): MLflow-signed deliveries in, ``quantstage.model.registered`` events out, in Prefect's
event store exactly as the on-registered trigger matches them; everything else refused or
ignored with one line and nothing emitted; a replay refused, also after a restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from quantstage.tasks.events import registered_event_id
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.flow

SECRET = "test-secret-" + "9" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def receiver(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from prefect.settings import PREFECT_API_URL

    port, seen = _free_port(), tmp_path_factory.mktemp("receiver") / "seen"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "QUANTSTAGE_WEBHOOK_SECRET": SECRET}
    env |= {"PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "quantstage.flows.cli", "webhook", "serve", "--port", str(port)]
    argv += ["--seen-file", str(seen)]
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the receiver did not answer /health in 90 s"
            time.sleep(0.3)

    state = {"url": url, "process": start(), "start": start}
    try:
        yield state
    finally:
        state["process"].terminate()
        print(state["process"].communicate(timeout=30)[0])


def _deliver(
    url: str,
    data: dict[str, Any],
    *,
    secret: str = SECRET,
    delivery_id: str | None = None,
    event: str = "model_version.created",
) -> httpx.Response:
    """A delivery as MLflow makes it (mlflow.webhooks.delivery: body, headers, its own signature function)."""
    entity, action = event.rsplit(".", 1)
    sent = datetime.now(timezone.utc).isoformat()
    body = json.dumps({"entity": entity, "action": action, "timestamp": sent, "data": data})
    delivery_id, timestamp = delivery_id or str(uuid.uuid4()), str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, timestamp, body),
    }
    return httpx.post(f"{url}/webhooks/mlflow", content=body.encode(), headers=headers, timeout=30)


def _registered_events(name: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client

    body = {
        "filter": {
            "event": {"name": ["quantstage.model.registered"]},
            "resource": {"id_prefix": [f"mlflow.model.{name}."]},
        }
    }
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events/filter", json=body)
        response.raise_for_status()
        return list(response.json()["events"])


def _wait_events(name: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(events := _registered_events(name)) < count:
        assert time.monotonic() < deadline, f"{len(events)} event(s) for {name}, expected {count}"
        time.sleep(0.5)
    return events


def test_a_registration_becomes_the_event_on_registered_matches(receiver: dict[str, Any]) -> None:
    name = f"trained-{uuid.uuid4().hex[:8]}"
    data = {"name": name, "version": "2", "source": "models:/m-1", "run_id": "run-1", "tags": {}, "description": None}
    answer = _deliver(receiver["url"], data)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "emitted" and answer.json()["model_uri"] == f"models:/{name}/2"
    (event,) = _wait_events(name, 1)
    assert event["id"] == str(registered_event_id(name, "2", "models:/m-1")) == answer.json()["event_id"]
    assert event["resource"]["prefect.resource.id"] == f"mlflow.model.{name}.2"
    assert event["resource"]["mlflow.model.name"] == name and event["resource"]["mlflow.model.version"] == "2"
    assert event["payload"]["model_uri"] == f"models:/{name}/2" and event["payload"]["run_id"] == "run-1"
    sent = datetime.fromisoformat(json.loads(answer.request.content)["timestamp"])
    assert datetime.fromisoformat(event["occurred"].replace("Z", "+00:00")) == sent  # MLflow's time of the event


def test_refused_and_ignored_deliveries_emit_nothing(receiver: dict[str, Any]) -> None:
    url, name = receiver["url"], f"forged-{uuid.uuid4().hex[:8]}"
    data = {"name": name, "version": "1", "run_id": "r", "tags": {}}
    answers = {
        "wrong secret": _deliver(url, data, secret="not-the-receivers-secret"),
        "unsigned": httpx.post(f"{url}/webhooks/mlflow", json={"entity": "model_version"}, timeout=30),
        "oversize": httpx.post(f"{url}/webhooks/mlflow", content=b"{" + b" " * 70_000 + b"}", timeout=30),
        "unknown event": _deliver(url, {"name": name}, event="prompt.created"),
        "own output": _deliver(url, {**data, "name": f"{name}-int8"}),
        "lineage tags": _deliver(url, {**data, "tags": {"idempotency_key": "k", "spec_hash": "h"}}),
    }
    codes = {what: r.status_code for what, r in answers.items()}
    assert codes == {
        "wrong secret": 401,
        "unsigned": 401,
        "oversize": 413,
        "unknown event": 422,
        "own output": 200,
        "lineage tags": 200,
    }
    for what, r in answers.items():
        body = r.json()
        assert body["status"] == ("ignored" if r.status_code == 200 else "refused"), (what, body)
        assert "\n" not in r.text and body["reason"], (what, body)
    # a control delivery afterwards: once its event is stored, none of the above made one
    control = _deliver(url, {**data, "name": f"{name}-control"})
    assert control.status_code == 202
    _wait_events(f"{name}-control", 1)
    assert _registered_events(name) == [] and _registered_events(f"{name}-int8") == []


def test_a_replayed_delivery_is_refused_also_after_a_restart(receiver: dict[str, Any]) -> None:
    url, name, delivery_id = receiver["url"], f"replayed-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    data = {"name": name, "version": "1", "source": "models:/m-2", "run_id": "r", "tags": {}}
    assert _deliver(url, data, delivery_id=delivery_id).status_code == 202
    again = _deliver(url, data, delivery_id=delivery_id)
    assert again.status_code == 409 and "already received" in again.json()["reason"], again.text
    receiver["process"].terminate()
    receiver["process"].wait(timeout=30)
    receiver["process"] = receiver["start"]()
    after_restart = _deliver(url, data, delivery_id=delivery_id)
    assert after_restart.status_code == 409, after_restart.text  # the seen file survived
    # a new delivery of the same version: the same event id, which Prefect's triggers act on once
    redelivered = _deliver(url, data)
    assert redelivered.status_code == 202 and redelivered.json()["event_id"] == str(
        registered_event_id(name, "1", "models:/m-2")
    )
    counts = httpx.get(f"{url}/health", timeout=10).json()["counts"]
    assert counts == {"refused": 1, "emitted": 1}, counts
