"""The deployments end to end on real servers: Prefect server + process worker + MLflow server
on free loopback ports (deploy/stack.sh, the session's shared stack: tests/e2e/conftest.py),
`prefect deploy`, event triggers, manual runs, idempotency, and the registry read back over
MLflow's HTTP API.

Deselect with ``-m 'not stack'``; every process started here is stopped in teardown (pass or fail).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Stack
from tests.e2e.servers import (
    TERMINAL,
    aliases,
    mlflow_get,
    mlflow_runs,
    prefect,
    runs_of,
    tags,
    ts,
    versions,
    wait_flow_run,
)

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(600),
]  # 3-5 min on 2 busy cores (the stack starts once per session)

FAST = {"benchmark_iterations": 5, "sensitivity": False}


def _wait_terminal(env: dict, deployments: list[str], count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for d in deployments for r in runs_of(env, d)]
        done = [r for r in runs if r["state_type"] in TERMINAL]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, (
            f"waited {timeout}s for {count} run(s) of {deployments}: {[(r['name'], r['state_type']) for r in runs]}"
        )
        time.sleep(0.5)


def test_deployments_end_to_end(stack: Stack) -> None:
    env, began = stack.env, time.monotonic()
    deployments = {d["name"] for d in prefect(env, "/deployments/filter", {})}
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
    trained = prefect(env, "/flow_runs/filter", {"flows": {"name": {"any_": ["train_demo"]}}})
    assert len(trained) == 1 and trained[0]["state_type"] == "COMPLETED"
    triggered = _wait_terminal(env, ["after-training", "on-registered"], 2, timeout=180)
    assert all(r["state_type"] == "COMPLETED" for r in triggered), [
        (r["name"], r["state_name"], r["state"]["message"]) for r in triggered
    ]
    # the trigger queue (concurrency limit 1) runs them one after the other: the second finds the
    # version the first registered and skips; exactly one conversion (one MLflow run) for one training run
    first, second = sorted(triggered, key=lambda r: ts(r["start_time"]))
    assert ts(second["start_time"]) >= ts(first["end_time"]), (first, second)
    conversions = mlflow_get(env, "experiments/get-by-name", experiment_name="quantstage")["experiment"]
    runs = mlflow_runs(env, conversions["experiment_id"])
    assert len(runs) == 1, runs
    print(
        f"triggered runs: first {first['total_run_time']:.1f}s, second (skipped) {second['total_run_time']:.1f}s, "
        f"waited {(ts(second['start_time']) - ts(second['created'])).total_seconds():.1f}s for the first"
    )
    trained_end = ts(trained[0]["end_time"])
    created = min(ts(r["created"]) for r in triggered)
    first_start = min(ts(r["start_time"]) for r in triggered)
    print(
        f"\ntrigger latency: train_demo completed -> triggered run created {(created - trained_end).total_seconds():.1f}s, "
        f"-> running {(first_start - trained_end).total_seconds():.1f}s"
    )
    # both triggers fired for the same source version: the idempotency key lets exactly one register
    int8_versions = versions(env, "digits-cnn-int8")
    assert len(int8_versions) == 1, int8_versions
    lineage = tags(int8_versions[0])
    assert lineage["source_version"] == "1" and lineage["gates_passed"] == "true" and lineage["promoted"] == "true"
    assert len(lineage["idempotency_key"]) == 64 and lineage["flow_run_url"].startswith("http://127.0.0.1:")
    assert lineage["torch_version"].startswith("2.13.0") and lineage["backend"] == "x86"
    # MLflow's webhook announced the same registration with the same event id as train_demo: no third run
    all_triggered = [r for d in ("after-training", "on-registered") for r in runs_of(env, d)]
    assert len(all_triggered) == 2, [(r["name"], r["state_name"], r["parameters"]) for r in all_triggered]
    assert aliases(env, "digits-cnn-int8") == {"champion": "1"}

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
    manual = runs_of(env, "manual")
    assert [r["state_type"] for r in manual] == ["COMPLETED"]
    assert len(versions(env, "digits-manual")) == 1

    # (3) the same conversion again: skipped, nothing new registered
    skipped_started = time.monotonic()
    out = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["state_type"] for r in runs_of(env, "manual")] == ["COMPLETED", "COMPLETED"]
    assert len(versions(env, "digits-manual")) == 1
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
    dep = prefect(env, "/deployments/name/convert/manual")
    flow_run = prefect(env, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": killed_params}})
    experiment = mlflow_get(env, "experiments/get-by-name", experiment_name="quantstage")["experiment"]["experiment_id"]
    mlflow_run = _wait_mlflow_run(env, experiment, flow_run["id"], timeout=180)
    killed_at = time.monotonic()
    _kill_flow_run_process(flow_run["id"])
    crashed = wait_flow_run(env, flow_run["id"], timeout=150)
    print(f"killed conversion: flow run {crashed['state_name']} {time.monotonic() - killed_at:.1f}s after SIGKILL")
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    assert mlflow_get(env, "runs/get", run_id=mlflow_run)["run"]["info"]["status"] != "FINISHED"
    models = mlflow_get(env, "registered-models/search", filter="name='digits-killed'").get("registered_models", [])
    assert all(versions(env, m["name"]) for m in models), "an empty registered model was left behind"
    rerun = [*run[:7], f"params={json.dumps(killed_params)}", *run[8:]]
    out = subprocess.run(rerun, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    orphan = mlflow_get(env, "runs/get", run_id=mlflow_run)["run"]
    assert orphan["info"]["status"] == "FAILED", orphan["info"]
    reason = {t["key"]: t["value"] for t in orphan["data"]["tags"]}["quantstage.error"]
    # closed by the flow's on_crashed hook where the worker runs it, else by the rerun's orphan sweep
    assert reason.startswith((f"orphaned: flow run {flow_run['id']} ended (Crashed)", "crashed: flow run")), reason
    assert len(versions(env, "digits-killed")) == 1
    print(f"e2e body: {time.monotonic() - began:.1f}s")


def _wait_mlflow_run(env: dict, experiment: str, flow_run_id: str, timeout: float) -> str:
    """The id of the MLflow run a flow run opened, once it is RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        found = mlflow_runs(env, experiment, f"tags.`quantstage.flow_run_id` = '{flow_run_id}'")
        running = [r for r in found if r["info"]["status"] == "RUNNING"]
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
