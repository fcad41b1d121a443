"""The deployments end to end on real servers: Prefect server + process worker + MLflow server
on free loopback ports (deploy/stack.sh), `prefect deploy`, event triggers, manual runs,
idempotency, and the registry read back over MLflow's HTTP API.

Deselect with ``-m 'not stack'``; every process started here is stopped in teardown (pass or fail).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]  # 4-7 min on 2 busy cores, 80-100 s of it starting the stack

STACK = REPO_ROOT / "deploy" / "stack.sh"
FAST = {"benchmark_iterations": 5, "sensitivity": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_credentials(state: Path) -> dict[str, str]:
    """The client settings stack.sh wrote to <state>/client.env (0600): both URLs and the
    credentials of the authenticated servers (PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    lines = (state / "client.env").read_text().splitlines()
    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines if line.startswith("export ")
    )


def _kill_groups(state: Path) -> None:
    """Belt and braces after `stack.sh stop`: kill any process group still named in a pid file."""
    for pid_file in state.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("stack")
    prefect_port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "QUANTSTAGE_STACK_DIR": str(state),
        "PREFECT_PORT": str(prefect_port),
        "MLFLOW_PORT": str(mlflow_port),
        "QUANTSTAGE_BIN": str(Path(sys.executable).parent),
        "QUANTSTAGE_CRASH_AFTER_S": "40",  # a run silent for 40 s is Crashed (30 s heartbeats)
    }
    client_env = env | {
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    try:
        started = subprocess.run([str(STACK)], env=env, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
        assert started.returncode == 0, f"stack.sh failed:\n{started.stdout}\n{started.stderr}"
        print(started.stdout)
        yield client_env | _client_credentials(state)
    finally:
        subprocess.run([str(STACK), "stop"], env=env, capture_output=True, timeout=120)
        _kill_groups(state)


@cache
def _prefect_http(api_url: str, auth_string: str) -> httpx.Client:
    """An httpx client of the stack's Prefect API: basic auth and a CSRF token (the server has
    CSRF protection on, so every POST/PATCH/DELETE carries one)."""
    user, _, password = auth_string.partition(":")
    client = httpx.Client(base_url=api_url, auth=(user, password), timeout=30)
    csrf_client = str(uuid.uuid4())
    token = client.get("/csrf-token", params={"client": csrf_client})
    token.raise_for_status()
    client.headers.update({"Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": csrf_client})
    return client


def _prefect_request(env: dict, method: str, path: str, body: dict | list | None = None) -> httpx.Response:
    return _prefect_http(env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"]).request(method, path, json=body)


def _prefect(env: dict, path: str, body: dict | None = None):
    r = _prefect_request(env, "POST" if body is not None else "GET", path, body)
    r.raise_for_status()
    return r.json()


def _mlflow(env: dict, path: str, **params):
    r = httpx.get(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/" + path,
        params=params,
        auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def _runs_of(env: dict, deployment: str) -> list[dict]:
    dep = _prefect(env, f"/deployments/name/convert/{deployment}")
    return _prefect(
        env, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "START_TIME_ASC"}
    )


def _wait_terminal(env: dict, deployments: list[str], count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for d in deployments for r in _runs_of(env, d)]
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, (
            f"waited {timeout}s for {count} run(s) of {deployments}: {[(r['name'], r['state_type']) for r in runs]}"
        )
        time.sleep(1)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _versions(env: dict, name: str) -> list[dict]:
    return sorted(
        _mlflow(env, "model-versions/search", filter=f"name='{name}'").get("model_versions", []),
        key=lambda v: int(v["version"]),
    )


def _tags(version: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in version.get("tags", [])}


def test_deployments_end_to_end(stack: dict) -> None:
    env, began = stack, time.monotonic()
    deployments = {d["name"] for d in _prefect(env, "/deployments/filter", {})}
    assert {"manual", "nightly", "after-training", "on-registered"} <= deployments

    # (1) training against the server: the triggers start conversions by themselves
    subprocess.run(
        [sys.executable, "-c", "from quantstage.flows.train_demo import train_demo; train_demo(epochs=2)"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    trained = _prefect(env, "/flow_runs/filter", {"flows": {"name": {"any_": ["train_demo"]}}})
    assert len(trained) == 1 and trained[0]["state_type"] == "COMPLETED"
    triggered = _wait_terminal(env, ["after-training", "on-registered"], 2, timeout=180)
    assert all(r["state_type"] == "COMPLETED" for r in triggered), [
        (r["name"], r["state_name"], r["state"]["message"]) for r in triggered
    ]
    # the trigger queue (concurrency limit 1) runs them one after the other: the second finds the
    # version the first registered and skips; exactly one conversion (one MLflow run) for one training run
    first, second = sorted(triggered, key=lambda r: _ts(r["start_time"]))
    assert _ts(second["start_time"]) >= _ts(first["end_time"]), (first, second)
    conversions = _mlflow(env, "experiments/get-by-name", experiment_name="quantstage")["experiment"]
    runs = httpx.post(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [conversions["experiment_id"]]},
        auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
        timeout=30,
    ).json()
    assert len(runs.get("runs", [])) == 1, runs
    print(
        f"triggered runs: first {first['total_run_time']:.1f}s, second (skipped) {second['total_run_time']:.1f}s, "
        f"waited {(_ts(second['start_time']) - _ts(second['created'])).total_seconds():.1f}s for the first"
    )
    trained_end = _ts(trained[0]["end_time"])
    created = min(_ts(r["created"]) for r in triggered)
    first_start = min(_ts(r["start_time"]) for r in triggered)
    print(
        f"\ntrigger latency: train_demo completed -> triggered run created {(created - trained_end).total_seconds():.1f}s, "
        f"-> running {(first_start - trained_end).total_seconds():.1f}s"
    )
    # both triggers fired for the same source version: the idempotency key lets exactly one register
    versions = _versions(env, "digits-cnn-int8")
    assert len(versions) == 1, versions
    tags = _tags(versions[0])
    assert tags["source_version"] == "1" and tags["gates_passed"] == "true" and tags["promoted"] == "true"
    assert len(tags["idempotency_key"]) == 64 and tags["flow_run_url"].startswith("http://127.0.0.1:")
    assert tags["torch_version"].startswith("2.13.0") and tags["backend"] == "x86"
    aliases = {
        a["alias"]: a["version"]
        for a in _mlflow(env, "registered-models/get", name="digits-cnn-int8")["registered_model"].get("aliases", [])
    }
    assert aliases == {"champion": "1"}

    # (2) a manual deployment run through the CLI, waited on
    params = json.dumps({"model_uri": "models:/digits-cnn@champion", "registered_name": "digits-manual", **FAST})
    run = [
        sys.executable,
        "-m",
        "prefect",
        "deployment",
        "run",
        "convert/manual",
        "--param",
        f"params={params}",
        "--watch",
        "--watch-timeout",
        "150",
    ]
    out = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    manual = _runs_of(env, "manual")
    assert [r["state_type"] for r in manual] == ["COMPLETED"]
    assert len(_versions(env, "digits-manual")) == 1

    # (3) the same conversion again: skipped, nothing new registered
    skipped_started = time.monotonic()
    out = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["state_type"] for r in _runs_of(env, "manual")] == ["COMPLETED", "COMPLETED"]
    assert len(_versions(env, "digits-manual")) == 1
    print(f"skipped re-run: {time.monotonic() - skipped_started:.1f}s (CLI submit to Completed)")

    # (4) the champion loads from the MLflow server in a fresh process and predicts
    script = textwrap.dedent(
        """
        import json, mlflow, torch
        from quantstage.quant.data.sources import digits_split
        _, _, x, y = digits_split()
        q = mlflow.pytorch.load_model("models:/digits-cnn-int8@champion")
        with torch.no_grad():
            print(json.dumps({"type": type(q).__name__, "acc": (q(x).argmax(-1) == y).float().mean().item()}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["type"] == "RecursiveScriptModule" and loaded["acc"] > 0.8, loaded

    # (5) a conversion SIGKILLed mid-way (its process group, as a lost node would): Crashed by the
    # heartbeat automation; no empty registered model; the rerun marks the orphaned MLflow run
    # FAILED (never FINISHED) and registers exactly one version
    killed_params = {"model_uri": "models:/digits-cnn@champion", "registered_name": "digits-killed", **FAST}
    dep = _prefect(env, "/deployments/name/convert/manual")
    flow_run = _prefect(env, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": killed_params}})
    experiment = _mlflow(env, "experiments/get-by-name", experiment_name="quantstage")["experiment"]["experiment_id"]
    mlflow_run = _wait_mlflow_run(env, experiment, flow_run["id"], timeout=180)
    killed_at = time.monotonic()
    _kill_flow_run_process(flow_run["id"])
    crashed = _wait_state(env, flow_run["id"], timeout=150)
    print(f"killed conversion: flow run {crashed['state_name']} {time.monotonic() - killed_at:.1f}s after SIGKILL")
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    assert _mlflow(env, "runs/get", run_id=mlflow_run)["run"]["info"]["status"] != "FINISHED"
    models = _mlflow(env, "registered-models/search", filter="name='digits-killed'").get("registered_models", [])
    assert all(_versions(env, m["name"]) for m in models), "an empty registered model was left behind"
    rerun = [*run[:7], f"params={json.dumps(killed_params)}", *run[8:]]
    out = subprocess.run(rerun, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    orphan = _mlflow(env, "runs/get", run_id=mlflow_run)["run"]
    assert orphan["info"]["status"] == "FAILED", orphan["info"]
    reason = {t["key"]: t["value"] for t in orphan["data"]["tags"]}["quantstage.error"]
    # closed by the flow's on_crashed hook where the worker runs it, else by the rerun's orphan sweep
    assert reason.startswith((f"orphaned: flow run {flow_run['id']} ended (Crashed)", "crashed: flow run")), reason
    assert len(_versions(env, "digits-killed")) == 1
    print(f"e2e body: {time.monotonic() - began:.1f}s")


def _wait_mlflow_run(env: dict, experiment: str, flow_run_id: str, timeout: float) -> str:
    """The id of the MLflow run a flow run opened, once it is RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.post(
            env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment], "filter": f"tags.`quantstage.flow_run_id` = '{flow_run_id}'"},
            auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
            timeout=30,
        ).json()
        running = [r for r in found.get("runs", []) if r["info"]["status"] == "RUNNING"]
        if running:
            return str(running[0]["info"]["run_id"])
        assert time.monotonic() < deadline, f"flow run {flow_run_id} opened no MLflow run in {timeout}s"
        time.sleep(0.5)


def _kill_flow_run_process(flow_run_id: str) -> None:
    """SIGKILL the process group of the process the worker started for ``flow_run_id`` (found by
    the PREFECT__FLOW_RUN_ID in its environment); never our own group."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ:
            group = os.getpgid(int(proc.name))
            assert group not in (0, 1, os.getpgrp()), group
            os.killpg(group, signal.SIGKILL)
            return
    raise AssertionError(f"no process runs flow run {flow_run_id}")


def _wait_state(env: dict, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        flow_run = _prefect(env, f"/flow_runs/{flow_run_id}")
        if flow_run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        assert time.monotonic() < deadline, f"flow run still {flow_run['state_name']} after {timeout}s"
        time.sleep(1)
