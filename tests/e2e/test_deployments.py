"""The deployments end to end on real servers: Prefect server + process worker + MLflow server
on free loopback ports (deploy/stack.sh), `prefect deploy`, event triggers, manual runs,
idempotency, and the registry read back over MLflow's HTTP API.

Deselect with ``-m 'not stack'``; every process started here is stopped in teardown (pass or fail).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

STACK = REPO_ROOT / "deploy" / "stack.sh"
FAST = {"benchmark_iterations": 5, "sensitivity": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    }
    client_env = env | {
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    try:
        started = subprocess.run([str(STACK)], env=env, capture_output=True, text=True, timeout=150, cwd=REPO_ROOT)
        assert started.returncode == 0, f"stack.sh failed:\n{started.stdout}\n{started.stderr}"
        print(started.stdout)
        yield client_env
    finally:
        subprocess.run([str(STACK), "stop"], env=env, capture_output=True, timeout=60)
        _kill_groups(state)


def _prefect(env: dict, path: str, body: dict | None = None):
    url = env["PREFECT_API_URL"] + path
    r = httpx.post(url, json=body or {}, timeout=30) if body is not None else httpx.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


def _mlflow(env: dict, path: str, **params):
    r = httpx.get(env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/" + path, params=params, timeout=30)
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
    triggered = _wait_terminal(env, ["after-training", "on-registered"], 2, timeout=150)
    assert all(r["state_type"] == "COMPLETED" for r in triggered), [(r["name"], r["state_message"]) for r in triggered]
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
    print(f"e2e body: {time.monotonic() - began:.1f}s")
