"""Talking to a real stack (deploy/stack.sh) from the tests: its client settings and credentials,
Prefect's API (basic auth + CSRF token), MLflow's REST API, flow runs and registry versions."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import time
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO_ROOT

STACK = REPO_ROOT / "deploy" / "stack.sh"
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_credentials(state: Path) -> dict[str, str]:
    """The client settings stack.sh wrote to <state>/client.env (0600): both URLs and the
    credentials of the authenticated servers (PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    lines = (state / "client.env").read_text().splitlines()
    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines if line.startswith("export ")
    )


def stack_conf(state: Path) -> dict[str, str]:
    """The ports `stack.sh start` chose (<state>/stack.conf)."""
    return dict(line.split("=", 1) for line in (state / "stack.conf").read_text().splitlines() if "=" in line)


def kill_groups(state: Path) -> None:
    """Belt and braces after `stack.sh stop`: kill any process group still named in a pid file."""
    for pid_file in state.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


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


def prefect_request(env: dict, method: str, path: str, body: dict | list | None = None) -> httpx.Response:
    """One API call, retried as Prefect's own client retries it: on 429/502/503 (a busy SQLite
    database answers 503), up to 5 times, 0.5-4 s apart."""
    client = _prefect_http(env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"])
    for delay in (0.5, 1, 2, 4, 0):
        response = client.request(method, path, json=body)
        if response.status_code not in (429, 502, 503) or not delay:
            return response
        time.sleep(delay)
    return response


def prefect(env: dict, path: str, body: dict | None = None) -> Any:
    r = prefect_request(env, "POST" if body is not None else "GET", path, body)
    r.raise_for_status()
    return r.json()


def mlflow_get(env: dict, path: str, **params: Any) -> Any:
    r = httpx.get(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/" + path,
        params=params,
        auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def mlflow_runs(env: dict, experiment_id: str, filter_string: str = "") -> list[dict]:
    found = httpx.post(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id], "filter": filter_string},
        auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
        timeout=30,
    )
    found.raise_for_status()
    return list(found.json().get("runs", []))


def runs_of(env: dict, deployment: str) -> list[dict]:
    dep = prefect(env, f"/deployments/name/convert/{deployment}")
    return prefect(
        env, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "START_TIME_ASC"}
    )


def wait_flow_run(env: dict, flow_run_id: str, states: tuple[str, ...] = TERMINAL, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        flow_run = prefect(env, f"/flow_runs/{flow_run_id}")
        if flow_run["state_type"] in states:
            return flow_run
        assert time.monotonic() < deadline, (
            f"flow run {flow_run['name']} still {flow_run['state_name']} after {timeout}s"
        )
        time.sleep(0.5)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def versions(env: dict, name: str) -> list[dict]:
    return sorted(
        mlflow_get(env, "model-versions/search", filter=f"name='{name}'").get("model_versions", []),
        key=lambda v: int(v["version"]),
    )


def tags(version: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in version.get("tags", [])}


def aliases(env: dict, name: str) -> dict[str, str]:
    registered = mlflow_get(env, "registered-models/get", name=name)["registered_model"]
    return {a["alias"]: a["version"] for a in registered.get("aliases", [])}
