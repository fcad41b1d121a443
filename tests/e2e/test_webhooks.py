"""MLflow registry webhooks end to end on the real stack: a training job that knows only MLflow
(a plain Python process: MLFLOW_TRACKING_URI and its credentials, no Prefect) registers a float
model; MLflow's webhook → ``quantstage webhook serve`` → ``quantstage.model.registered`` → the
``convert/on-registered`` deployment converts it and promotes ``<name>-int8@champion``. The same
registration delivered again converts nothing more; a replayed delivery is refused (409); a
delivery with a wrong signature is refused (401) and converts nothing; the int8 version's own
``model_version.created`` is ignored. Prints the latency from create_model_version to the alias.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from quantstage.tasks.events import registered_event_id
from tests.e2e.conftest import Stack
from tests.e2e.servers import (
    aliases,
    mlflow_get,
    mlflow_runs,
    prefect,
    runs_of,
    stack_conf,
    tags,
    ts,
    versions,
    wait_flow_run,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

# the whole training job: only mlflow, torch and the model's class (quantstage.demo is plain torch)
TRAIN_AND_REGISTER = textwrap.dedent(
    """
    import json, sys
    import mlflow, torch
    from quantstage.demo import DigitsCNN, train_classifier
    from quantstage.quant.data.sources import digits_split

    name = sys.argv[1]
    x, y, x_test, _ = digits_split(seed=0)
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), x, y, epochs=2, seed=0)
    mlflow.set_experiment("team-training")
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", input_example=x_test[:2].numpy())
    version = mlflow.register_model(info.model_uri, name)  # create_registered_model + create_model_version
    print(json.dumps({"version": version.version, "run_id": run.info.run_id, "created_ms": version.creation_timestamp,
                      "source": info.model_uri,
                      "prefect_imported": any(m.split(".")[0] == "prefect" for m in sys.modules)}))
    """
)


def _deliver(stack: Stack, data: dict[str, Any], *, secret: str, delivery_id: str | None = None) -> httpx.Response:
    """A model_version.created delivery made as MLflow makes it (its body shape, headers and signature function)."""
    body = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "data": data,
        }
    )
    delivery_id, timestamp = delivery_id or str(uuid.uuid4()), str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, timestamp, body),
    }
    url = f"http://127.0.0.1:{stack_conf(stack.state)['WEBHOOK_PORT']}/webhooks/mlflow"
    return httpx.post(url, content=body.encode(), headers=headers, timeout=30)


def _registered_events(stack: Stack, resource_id: str) -> list[dict]:
    found = prefect(
        stack.env,
        "/events/filter",
        {"filter": {"event": {"name": ["quantstage.model.registered"]}, "resource": {"id": [resource_id]}}},
    )
    return list(found["events"])


def test_an_mlflow_registration_is_converted_and_promoted(stack: Stack) -> None:
    env, name = stack.env, f"team-model-{uuid.uuid4().hex[:6]}"
    secret = (stack.state / "secrets" / "webhook-secret").read_text().strip()
    # (1) the training job: a process that knows only MLflow
    bare = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    bare |= {k: env[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", TRAIN_AND_REGISTER, name],
            env=bare,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert out.returncode == 0, out.stderr[-4000:]
    job = json.loads(out.stdout.strip().splitlines()[-1])
    assert job["version"] == "1" and not job["prefect_imported"], job
    source = f"mlflow.model.{name}.1"

    # (2) MLflow's delivery became the event, with the id every announcement of this registration has
    deadline = time.monotonic() + 60
    while not (events := _registered_events(stack, source)):
        assert time.monotonic() < deadline, "no quantstage.model.registered event 60 s after create_model_version"
        time.sleep(0.5)
    (event,) = events
    assert event["id"] == str(registered_event_id(name, "1", event["payload"]["source"]))
    assert event["payload"]["source"] == job["source"]
    assert event["payload"]["model_uri"] == f"models:/{name}/1"

    # (3) while it converts: the same registration delivered again (a new delivery id: the same
    # event id, which the trigger has seen), the same delivery replayed, a forged one
    data = {"name": name, "version": "1", "source": event["payload"]["source"], "run_id": None, "tags": {}}
    again_id = str(uuid.uuid4())
    again = _deliver(stack, data, secret=secret, delivery_id=again_id)
    assert again.status_code == 202 and again.json()["event_id"] == event["id"], again.text
    replayed = _deliver(stack, data, secret=secret, delivery_id=again_id)
    assert replayed.status_code == 409 and "already received" in replayed.json()["reason"], replayed.text
    forged_name = f"{name}-forged"
    forged = _deliver(stack, {**data, "name": forged_name}, secret="an attacker's guess at the secret")
    assert forged.status_code == 401 and forged.json()["status"] == "refused", forged.text
    assert "signature does not match" in forged.json()["reason"] and "\n" not in forged.text
    print(
        f"\nwrong signature: {forged.status_code} {forged.json()['reason']}\nreplay: {replayed.status_code} {replayed.json()['reason']}"
    )

    # (4) the int8 model is promoted: latency from create_model_version to the alias
    deadline = time.monotonic() + 300
    while True:
        try:
            if aliases(env, f"{name}-int8").get("champion") == "1":
                promoted_at = time.time()
                break
        except httpx.HTTPStatusError:
            pass  # not registered yet
        assert time.monotonic() < deadline, f"models:/{name}-int8@champion not set 300 s after registration"
        time.sleep(0.5)
    latency = promoted_at - job["created_ms"] / 1000

    # (5) one conversion: one on-registered run for this version, one int8 version, one MLflow run
    runs = [r for r in runs_of(env, "on-registered") if r["parameters"]["params"]["model_uri"] == f"models:/{name}/1"]
    runs = [wait_flow_run(env, r["id"], timeout=120) for r in runs]  # it reports and closes its MLflow run
    assert [r["state_type"] for r in runs] == ["COMPLETED"], [(r["name"], r["state_name"]) for r in runs]
    (int8,) = versions(env, f"{name}-int8")
    lineage = tags(int8)
    assert lineage["source_uri"] == f"models:/{name}/1" and lineage["promoted"] == "true", lineage
    experiment = mlflow_get(env, "experiments/get-by-name", experiment_name="quantstage")["experiment"]["experiment_id"]
    assert len(mlflow_runs(env, experiment, f"tags.`quantstage.source_uri` = 'models:/{name}/1'")) == 1
    # nothing for the forged delivery, and the int8 version's own registration was ignored
    assert _registered_events(stack, f"mlflow.model.{forged_name}.1") == []
    assert _registered_events(stack, f"mlflow.model.{name}-int8.1") == []
    assert not [r for r in runs_of(env, "on-registered") if forged_name in r["parameters"]["params"]["model_uri"]]
    run = runs[0]
    created = job["created_ms"] / 1000
    print(
        f"create_model_version -> event occurred {ts(event['occurred']).timestamp() - created:.1f}s, "
        f"-> flow run created {ts(run['created']).timestamp() - created:.1f}s, "
        f"-> running {ts(run['start_time']).timestamp() - created:.1f}s, "
        f"-> completed {ts(run['end_time']).timestamp() - created:.1f}s, "
        f"-> @champion seen {latency:.1f}s (conversion {run['total_run_time']:.1f}s)"
    )
    assert latency < 300


def test_restart_webhook_keeps_one_mlflow_webhook(stack: Stack) -> None:
    """`stack.sh restart webhook`: a new receiver, MLflow's webhook updated by name (still one, with
    MLflow's test delivery answered); `status` reports it; the service user cannot touch webhooks."""
    admin = ("admin", (stack.state / "secrets" / "mlflow-admin-password").read_text().strip())
    hooks_url = stack.env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/webhooks"
    before = httpx.get(hooks_url, auth=admin, timeout=30).json()["webhooks"]
    pid = (stack.state / "webhook.pid").read_text()
    began = time.monotonic()
    out = stack.run("restart", "webhook")
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\nrestart webhook: {time.monotonic() - began:.1f}s\n{out.stderr.strip()}")
    assert "updated MLflow webhook" in out.stderr and "MLflow's test payload" in out.stderr
    assert (stack.state / "webhook.pid").read_text() != pid
    after = httpx.get(hooks_url, auth=admin, timeout=30).json()["webhooks"]
    assert [(h["name"], h["webhook_id"], h["url"]) for h in after] == [
        (h["name"], h["webhook_id"], h["url"]) for h in before
    ] and len(after) == 1, after
    assert after[0]["name"] == "quantstage-registered" and after[0]["events"] == [
        {"entity": "MODEL_VERSION", "action": "CREATED"}
    ], after
    status = stack.run("status", timeout=60)
    webhook = next(line for line in status.stdout.splitlines() if line.startswith("webhook: "))
    assert status.returncode == 0 and "registered in MLflow" in webhook, status.stdout
    # the service user (no admin) may not see or change webhooks
    service = (stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"])
    assert httpx.get(hooks_url, auth=service, timeout=30).status_code == 403


def test_register_command_needs_the_admin_and_updates_in_place(stack: Stack) -> None:
    """`quantstage webhook register URL` (what production runs once): the service user is refused in
    one line naming the fix; the admin updates the same webhook and MLflow's test delivery gets 200."""
    secret = (stack.state / "secrets" / "webhook-secret").read_text().strip()
    url = f"http://127.0.0.1:{stack_conf(stack.state)['WEBHOOK_PORT']}/webhooks/mlflow"
    env = stack.env | {"QUANTSTAGE_WEBHOOK_SECRET": secret}
    command = [sys.executable, "-m", "quantstage.flows.cli", "webhook", "register", url]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("quantstage: error:") and "webhooks need an MLflow admin" in line, refused.stderr
    admin = {"MLFLOW_TRACKING_USERNAME": "admin"}
    admin["MLFLOW_TRACKING_PASSWORD"] = (stack.state / "secrets" / "mlflow-admin-password").read_text().strip()
    done = subprocess.run(command, env=env | admin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("updated MLflow webhook 'quantstage-registered'"), done.stdout
    assert "test delivery: 200" in done.stdout and "MLflow's test payload" in done.stdout, done.stdout
