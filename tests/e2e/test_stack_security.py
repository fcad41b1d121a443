"""The local stack hardened for operations (deploy/stack.sh, deploy/prefect.yaml): both servers
refuse anonymous requests, the credentials stay off command lines and in owner-only files, a
flow run cannot choose the command its worker starts, a `quantstage.model.registered` event
without the model-name label converts nothing, `status`/`restart` work, a run whose worker node
is lost is marked Crashed by the heartbeat automation, and `stop` leaves no flow-run process.

The session's shared stack (tests/e2e/conftest.py: free loopback ports, a short heartbeat
window); the tests marked ``destructive`` (lost worker, restart, stop) run after every other test
that uses it. Deselect with ``-m 'not stack'``; every process is stopped in teardown, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from prefect import flow, get_run_logger

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import CRASH_AFTER_S, Stack
from tests.e2e.servers import STACK, TERMINAL
from tests.e2e.servers import prefect as _prefect
from tests.e2e.servers import prefect_request as _prefect_request

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

POOL = "quantstage-process"


@flow(name="stack-probe")
def stack_probe(seconds: float = 0.0) -> None:
    """Logs the processes it runs in (self, parent, grandparent: pid, process group, command
    line), then sleeps. Deployed by the fixture below from this file."""
    chain, pid = [], os.getpid()
    for _ in range(3):
        stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        chain.append({"pid": pid, "pgid": int(stat_fields[2]), "cmdline": cmdline})
        pid = int(stat_fields[1])
    get_run_logger().info("stack-probe processes %s", json.dumps(chain))
    time.sleep(seconds)


@pytest.fixture(scope="module")
def sec(stack: Stack) -> dict:
    """The shared stack (short heartbeat/crash windows, short stop grace) and a `stack-probe` deployment."""
    env = stack.env
    flow_id = _prefect(env, "/flows/", {"name": "stack-probe"})["id"]
    deployments = {}
    for name in ("probe", "probe-tampered"):
        deployments[name] = _prefect(
            env,
            "/deployments/",
            {
                "name": name,
                "flow_id": flow_id,
                "entrypoint": "tests/e2e/test_stack_security.py:stack_probe",
                "work_pool_name": POOL,
                "work_queue_name": "default",
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}],
                "enforce_parameter_schema": False,
            },
        )["id"]
    return {"env": env, "stack_env": stack.stack_env, "state": stack.state, "deployments": deployments, "stack": stack}


def _stack(sec: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), *args], env=sec["stack_env"], capture_output=True, text=True, timeout=timeout)


def _run_probe(sec: dict, seconds: float, deployment: str = "probe") -> str:
    run = _prefect(
        sec["env"],
        f"/deployments/{sec['deployments'][deployment]}/create_flow_run",
        {"parameters": {"seconds": seconds}},
    )
    return run["id"]


def _flow_run(sec: dict, run_id: str) -> dict:
    return _prefect(sec["env"], f"/flow_runs/{run_id}")


def _wait_state(sec: dict, run_id: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _flow_run(sec, run_id)
        if run["state_type"] in states:
            return run
        assert time.monotonic() < deadline, f"run {run['name']} still {run['state_name']} after {timeout}s"
        time.sleep(0.5)


def _probe_processes(sec: dict, run_id: str, timeout: float = 60) -> list[dict]:
    """The process chain the probe logged: [flow process, parent, grandparent]."""
    deadline = time.monotonic() + timeout
    while True:
        logs = _prefect(sec["env"], "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
        for log in logs:
            if log["message"].startswith("stack-probe processes "):
                return json.loads(log["message"].removeprefix("stack-probe processes "))
        assert time.monotonic() < deadline, f"the probe logged no process chain in {timeout}s"
        time.sleep(0.5)


def _secrets(state: Path) -> dict[str, str]:
    return {p.name: p.read_text().strip() for p in (state / "secrets").iterdir() if not p.name.endswith(".ini")}


# --------------------------------------------------------------------------- authentication


def test_servers_refuse_anonymous_requests(sec: dict) -> None:
    env = sec["env"]
    api, ui = env["PREFECT_API_URL"], env["PREFECT_UI_URL"]
    # Prefect: basic auth on every route but the health probe; CSRF tokens on writes
    assert httpx.get(f"{api}/deployments/name/convert/manual", timeout=30).status_code == 401
    assert httpx.get(f"{api}/flow_runs/{uuid.uuid4()}", auth=("quantstage", "wrong"), timeout=30).status_code == 401
    anonymous_write = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30)
    assert anonymous_write.status_code in (401, 403), anonymous_write.text  # CSRF answers before auth
    user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
    no_csrf = httpx.post(f"{api}/flow_runs/filter", json={}, auth=(user, password), timeout=30)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text, no_csrf.text
    assert _prefect_request(env, "POST", "/flow_runs/filter", {}).status_code == 200
    assert httpx.get(f"{api}/health", timeout=30).status_code == 200  # liveness probes stay open
    # CORS: only the stack's own UI origin
    preflight = {"Access-Control-Request-Method": "POST"}
    evil = httpx.options(f"{api}/flow_runs/filter", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in evil.headers
    own = httpx.options(f"{api}/flow_runs/filter", headers={"Origin": ui, **preflight})
    assert own.headers.get("access-control-allow-origin") == ui

    # MLflow: the basic-auth app
    search = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    service = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    assert httpx.get(search, timeout=30).status_code == 401
    assert httpx.get(search, auth=(service[0], "wrong"), timeout=30).status_code == 401
    assert httpx.get(search, auth=service, timeout=30).status_code == 200
    # allowed hosts: a request naming another host (DNS rebinding) is refused
    assert httpx.get(search, auth=service, headers={"Host": "evil.example"}, timeout=30).status_code == 403
    # the service user is no admin: it cannot create users
    create_user = httpx.post(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/users/create",
        json={"username": "intruder", "password": "a-long-enough-password-1"},
        auth=service,
        timeout=30,
    )
    assert create_user.status_code == 403, create_user.text


def test_secrets_stay_private(sec: dict) -> None:
    state = sec["state"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    for path in [*(state / "secrets").iterdir(), state / "client.env"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secrets = _secrets(state)
    assert set(secrets) == {
        "prefect-auth",
        "mlflow-password",
        "mlflow-admin-password",
        "mlflow-flask-secret-key",
        "webhook-secret",  # the HMAC secret MLflow signs deliveries with
        "mlflow-webhook-key",  # the key MLflow encrypts stored webhook secrets with
    }
    assert all(len(value) >= 32 for value in secrets.values())
    # no secret on any command line of the machine (every process of the stack included)
    listing = subprocess.run(["ps", "-eo", "pid,args", "--width", "100000"], capture_output=True, text=True).stdout
    assert "mlflow server --app-name basic-auth" in listing and "prefect worker start" in listing
    assert "quantstage webhook serve" in listing
    leaked = [name for name, value in secrets.items() if value in listing]
    assert not leaked, f"secrets on a command line: {leaked}"
    # `stack.sh env` hands them to a shell that asks for them
    exported = _stack(sec, "env", timeout=60)
    assert (
        exported.returncode == 0 and f"PREFECT_API_AUTH_STRING=quantstage:{secrets['prefect-auth']}" in exported.stdout
    )


# --------------------------------------------------------------------------- the flow-run command


def test_flow_run_cannot_choose_its_command(sec: dict, tmp_path: Path) -> None:
    env, marker = sec["env"], tmp_path / "pwned"
    probe = sec["deployments"]["probe"]
    # refused: the pool's variables (deploy/process-pool.json) have no command, env or working_dir
    for job_variables in (
        {"command": f"touch {marker}"},
        {"env": {"LD_PRELOAD": "/tmp/x.so"}},
        {"env.PYTHONPATH": "/tmp"},
        {"working_dir": "/tmp"},
    ):
        refused = _prefect_request(
            env, "POST", f"/deployments/{probe}/create_flow_run", {"job_variables": job_variables}
        )
        assert refused.status_code == 422 and "Additional properties are not allowed" in refused.text, refused.text
    # a deployment created with one is refused too
    refused = _prefect_request(
        env,
        "POST",
        "/deployments/",
        {
            "name": "tampered-at-birth",
            "flow_id": _flow_run_flow_id(env),
            "work_pool_name": POOL,
            "job_variables": {"command": f"touch {marker}"},
        },
    )
    assert refused.status_code in (409, 422), refused.text

    # ignored: Prefect does not validate a deployment PATCH without a pool, nor a flow run posted
    # to /flow_runs/; the worker still runs its own command, because the template has no {{ command }}
    tampered = sec["deployments"]["probe-tampered"]
    _prefect_request(env, "PATCH", f"/deployments/{tampered}", {"job_variables": {"command": f"touch {marker}"}})
    assert _prefect(env, f"/deployments/{tampered}")["job_variables"] == {"command": f"touch {marker}"}
    run = _prefect_request(
        env,
        "POST",
        "/flow_runs/",
        {
            "flow_id": _flow_run_flow_id(env),
            "deployment_id": tampered,
            "work_pool_name": POOL,
            "work_queue_name": "default",
            "parameters": {"seconds": 0},
            "state": {"type": "SCHEDULED"},
            "job_variables": {"command": f"touch {marker}", "env": {"PYTHONPATH": "/nonexistent"}},
        },
    )
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    done = _wait_state(sec, run_id, set(TERMINAL), timeout=120)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert done["job_variables"]["command"] == f"touch {marker}"  # stored, and ...
    chain = _probe_processes(sec, run_id)
    started = next(p for p in chain if p["pid"] == p["pgid"])  # the process the worker started (own session)
    print(f"\nflow-run process the worker started: {started['cmdline']}\nflow process: {chain[0]['cmdline']}")
    assert "prefect.runner._workspace_supervisor" in started["cmdline"] or "prefect.engine" in started["cmdline"]
    assert all("touch" not in p["cmdline"] for p in chain)
    assert not marker.exists()  # ... had no effect


def _flow_run_flow_id(env: dict) -> str:
    return _prefect(env, "/flows/name/stack-probe")["id"]


# --------------------------------------------------------------------------- triggers


def _emit(env: dict, *events: tuple[dict, dict]) -> None:
    """``quantstage.model.registered`` events (resource, payload), in one request: published in this order."""
    body = [
        {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(timezone.utc).isoformat(),
            "event": "quantstage.model.registered",
            "resource": resource,
            "payload": payload,
        }
        for resource, payload in events
    ]
    _prefect_request(env, "POST", "/events", body).raise_for_status()


def test_label_less_registered_event_converts_nothing(sec: dict) -> None:
    env = sec["env"]
    on_registered = _prefect(env, "/deployments/name/convert/on-registered")["id"]
    queue = _prefect(env, f"/work_pools/{POOL}/queues/triggered")
    assert queue["concurrency_limit"] == 1
    before = {
        r["id"] for r in _prefect(env, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [on_registered]}}})
    }

    def new_runs() -> list[dict]:
        found = _prefect(env, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [on_registered]}}})
        return [r for r in found if r["id"] not in before]

    # the triggered queue paused: the control run below is created, never started
    _prefect_request(env, "PATCH", f"/work_pools/{POOL}/queues/triggered", {"is_paused": True}).raise_for_status()
    try:
        # the label-less events first, the control last: the same event with the label starts a
        # conversion of exactly that version. Prefect's trigger and action services take events in
        # the order they were published, so once the control's run exists the others were handled.
        _emit(
            env,
            ({"prefect.resource.id": "mlflow.model.nolabel.1"}, {"model_uri": "models:/nolabel/1"}),
            ({"prefect.resource.id": "mlflow.model.empty.1", "mlflow.model.name": ""}, {"model_uri": "models:/e/1"}),
            (
                {"prefect.resource.id": "mlflow.model.ghost.1", "mlflow.model.name": "ghost"},
                {"model_uri": "models:/ghost/1"},
            ),
        )
        deadline = time.monotonic() + 90
        while not (runs := new_runs()):
            assert time.monotonic() < deadline, "the labelled control event started no run"
            time.sleep(0.5)
        runs = new_runs()
        assert [r["parameters"]["params"] for r in runs] == [
            {"model_uri": "models:/ghost/1", "registered_name": "ghost-int8"}
        ], runs
        for run in runs:
            _prefect_request(env, "DELETE", f"/flow_runs/{run['id']}").raise_for_status()
    finally:
        _prefect_request(env, "PATCH", f"/work_pools/{POOL}/queues/triggered", {"is_paused": False})


def test_trigger_deployments_have_concurrency_limits(sec: dict) -> None:
    env = sec["env"]
    limits = {}
    for name in ("after-training", "on-registered"):
        deployment = _prefect(env, f"/deployments/name/convert/{name}")
        assert deployment["work_queue_name"] == "triggered"
        limits[name] = (deployment["global_concurrency_limit"]["limit"], deployment["concurrency_options"])
    assert limits["after-training"] == (1, {"collision_strategy": "CANCEL_NEW", "grace_period_seconds": None})
    assert limits["on-registered"] == (1, {"collision_strategy": "ENQUEUE", "grace_period_seconds": None})
    # setup is idempotent: run again (as every start does), still one crash automation, same pool
    admin = {"QUANTSTAGE_MLFLOW_ADMIN_USERNAME": "admin"}
    admin["QUANTSTAGE_MLFLOW_ADMIN_PASSWORD"] = (sec["state"] / "secrets" / "mlflow-admin-password").read_text().strip()
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deploy" / "stack_ops.py"), "setup"],
        env=env | admin | {"QUANTSTAGE_CRASH_AFTER_S": str(CRASH_AFTER_S)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    name = "quantstage crash zombie flow runs"
    automations = [a for a in _prefect(env, "/automations/filter", {}) if a["name"] == name]
    assert len(automations) == 1 and automations[0]["trigger"]["within"] == CRASH_AFTER_S
    assert automations[0]["actions"][0]["state"] == "CRASHED"
    pool = _prefect(env, f"/work_pools/{POOL}")
    assert pool["base_job_template"] == json.loads((REPO_ROOT / "deploy" / "process-pool.json").read_text())


# --------------------------------------------------------------------------- operations


def test_status_reports_each_part(sec: dict) -> None:
    # only the state directory: the ports come from <state>/stack.conf
    bare = {k: v for k, v in sec["stack_env"].items() if k not in ("PREFECT_PORT", "MLFLOW_PORT")}
    out = subprocess.run([str(STACK), "status"], env=bare, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {"prefect", "mlflow", "webhook", "worker"}, out.stdout
    assert "healthy" in lines["prefect"] and "(authenticated)" in lines["prefect"]
    assert "healthy" in lines["mlflow"] and "authenticated as quantstage" in lines["mlflow"]
    assert "registered in MLflow, receiving at http://127.0.0.1:" in lines["webhook"], lines["webhook"]
    assert "polling pool quantstage-process" in lines["worker"]
    print("\n" + out.stdout)


@pytest.mark.destructive
def test_lost_worker_node_run_is_marked_crashed(sec: dict) -> None:
    """Worker and flow-run process SIGKILLed (a lost node): the heartbeats stop and the
    automation marks the run Crashed."""
    env, state = sec["env"], sec["state"]
    run_id = _run_probe(sec, seconds=600)
    _wait_state(sec, run_id, {"RUNNING"}, timeout=120)
    chain = _probe_processes(sec, run_id)
    heartbeat = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        }
    }
    deadline = time.monotonic() + 60
    while not _prefect(env, "/events/filter", heartbeat)["events"]:
        assert time.monotonic() < deadline, "no heartbeat from the flow run"
        time.sleep(0.5)
    worker_pid = int((state / "worker.pid").read_text())
    # the flow-run process runs in a session of its own (the worker's child): that group and the
    # worker's, nothing else (never group 0 = ours, nor 1)
    flow_group = chain[0]["pgid"]
    assert flow_group not in (0, 1, os.getpgrp(), worker_pid) and chain[1]["pid"] == worker_pid, chain
    killed_at = time.monotonic()
    os.killpg(worker_pid, signal.SIGKILL)
    os.killpg(flow_group, signal.SIGKILL)
    assert _flow_run(sec, run_id)["state_type"] == "RUNNING"
    crashed = _wait_state(sec, run_id, set(TERMINAL), timeout=CRASH_AFTER_S + 60)
    took = time.monotonic() - killed_at
    print(
        f"\nlost worker: run marked {crashed['state_name']} {took:.1f}s after the kill ({crashed['state']['message']})"
    )
    assert crashed["state_type"] == "CRASHED" and "Heartbeats stopped" in crashed["state"]["message"]
    status = _stack(sec, "status", timeout=60)
    assert status.returncode == 3 and "worker: stopped" in status.stdout, status.stdout


@pytest.mark.destructive
def test_restart_worker(sec: dict) -> None:
    state = sec["state"]
    before = (state / "worker.pid").read_text() if (state / "worker.pid").exists() else ""
    began = time.monotonic()
    out = _stack(sec, "restart", "worker")
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\nrestart worker: {time.monotonic() - began:.1f}s")
    assert (state / "worker.pid").read_text() != before
    status = _stack(sec, "status", timeout=60)
    assert status.returncode == 0, status.stdout
    # the new worker runs flows against the authenticated servers
    run_id = _run_probe(sec, seconds=0)
    assert _wait_state(sec, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=120)["state_type"] == "COMPLETED"
    # logs are appended across restarts, not truncated
    assert (state / "worker.log").read_text().count("stack.sh starts worker") == 2


@pytest.mark.destructive
def test_stop_cancels_in_flight_runs_and_leaves_no_process(sec: dict) -> None:
    """Last of all the shared stack's tests: stops the stack. A run still going after the grace
    period (5 s here) is cancelled through the API before the worker and the servers go."""
    run_id = _run_probe(sec, seconds=600)
    _wait_state(sec, run_id, {"RUNNING"}, timeout=120)
    chain = _probe_processes(sec, run_id)
    began = time.monotonic()
    out = _stack(sec, "stop")
    took = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\nstop with a run in flight: {took:.1f}s\n{out.stderr}")
    assert "cancelling 1 flow run(s)" in out.stderr
    for process in chain[:2]:
        assert not Path(f"/proc/{process['pid']}").exists(), f"left running: {process}"
    assert sec["stack"].flow_run_state(run_id) == "CANCELLED"  # in the database (PostgreSQL or SQLite)
    assert _stack(sec, "status", timeout=60).returncode == 3
