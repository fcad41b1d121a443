"""Operations deploy/stack.sh runs against its own servers (Python: Prefect's client, MLflow's REST API).

    stack_ops.py setup             # MLflow service user, hardened work pool, trigger queue, crash automation,
                                   # and (QUANTSTAGE_WEBHOOK_URL set) MLflow's registry webhook
    stack_ops.py webhook           # MLflow's registry webhook -> the receiver, checked with MLflow's test delivery
    stack_ops.py drain [GRACE_S]   # pause the pool, wait for in-flight flow runs, then cancel them
    stack_ops.py resume            # un-pause the pool (after a drain)

Everything comes from the environment stack.sh sets (never from the command line, which `ps`
shows to every user): PREFECT_API_URL + PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI +
MLFLOW_TRACKING_USERNAME/PASSWORD (the service user the worker and clients use), and for
`setup` and `webhook` only QUANTSTAGE_MLFLOW_ADMIN_USERNAME/PASSWORD (MLflow's basic-auth admin: users
and webhooks are admin-only), QUANTSTAGE_WEBHOOK_URL and QUANTSTAGE_WEBHOOK_SECRET.
Every step is idempotent: run twice, the second run changes nothing and creates no duplicate.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
POOL = os.environ.get("QUANTSTAGE_POOL", "quantstage-process")
TRIGGER_QUEUE = "triggered"  # deploy/prefect.yaml: the trigger-driven deployments run here, one at a time
POOL_TEMPLATE = HERE / "process-pool.json"
CRASH_AUTOMATION = HERE / "automations" / "crash-zombie-flow-runs.yaml"
IN_FLIGHT = ("RUNNING", "PENDING", "CANCELLING")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def say(message: str) -> None:
    print(f"stack_ops: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- MLflow


def ensure_mlflow_user() -> None:
    """The service user (MLFLOW_TRACKING_USERNAME) exists with the password stack.sh generated."""
    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow"
    admin = (os.environ["QUANTSTAGE_MLFLOW_ADMIN_USERNAME"], os.environ["QUANTSTAGE_MLFLOW_ADMIN_PASSWORD"])
    user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    with httpx.Client(auth=admin, timeout=30) as http:
        found = http.get(f"{base}/users/get", params={"username": user})
        if found.status_code == 200:
            # a reused auth database (PostgreSQL) with a fresh state dir: the files win
            http.patch(
                f"{base}/users/update-password", json={"username": user, "password": password}
            ).raise_for_status()
        else:
            if found.status_code not in (400, 404):
                found.raise_for_status()
            http.post(f"{base}/users/create", json={"username": user, "password": password}).raise_for_status()
            say(f"created MLflow user {user!r}")
        # MLflow puts a model logged to a run that is not the active one (MlflowClient / run_id=)
        # into the *default* experiment "0" (mlflow.tracking.fluent._create_logged_model), not
        # the run's; the service user creates and so manages every other experiment it uses
        grant = http.post(
            base.replace("/api/2.0/", "/api/3.0/") + "/users/permissions/grant",
            json={"username": user, "resource_type": "experiment", "resource_id": "0", "permission": "EDIT"},
        )
        if grant.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in grant.text:
            grant.raise_for_status()
    check = httpx.get(f"{base}/experiments/search", params={"max_results": 1}, auth=(user, password), timeout=30)
    check.raise_for_status()


def ensure_webhook(wait_s: float = 120) -> None:
    """MLflow's registry webhook posts to the receiver (QUANTSTAGE_WEBHOOK_URL) signed with its secret:
    created once, then updated by name (tasks/webhooks.py); MLflow's own test delivery must get a 2xx."""
    from quantstage.tasks.webhooks import ensure_webhook as ensure
    from quantstage.tasks.webhooks import probe_webhook

    url = os.environ["QUANTSTAGE_WEBHOOK_URL"]
    events = [e.strip() for e in os.environ.get("QUANTSTAGE_WEBHOOK_EVENTS", "model_version.created").split(",")]
    health, deadline = url.split("/webhooks/")[0] + "/health", time.monotonic() + wait_s
    while True:  # the receiver starts beside the servers: wait for it
        try:
            if httpx.get(health, timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"stack_ops: the webhook receiver did not answer at {health} in {wait_s:.0f}s")
        time.sleep(0.5)
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ["QUANTSTAGE_MLFLOW_ADMIN_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = os.environ["QUANTSTAGE_MLFLOW_ADMIN_PASSWORD"]
    hook_id, action = ensure(url, [e for e in events if e], os.environ["QUANTSTAGE_WEBHOOK_SECRET"])
    ok, answer = probe_webhook(hook_id)
    if not ok:
        raise SystemExit(f"stack_ops: MLflow's test delivery to {url} failed: {answer}")
    say(f"{action} MLflow webhook {hook_id} -> {url} (test delivery: {answer[:120]})")


# --------------------------------------------------------------------------- Prefect


def crash_automation() -> Any:
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load(CRASH_AUTOMATION.read_text())
    if within := os.environ.get("QUANTSTAGE_CRASH_AFTER_S"):
        data["trigger"]["within"] = float(within)
    return AutomationCore.model_validate(data)


async def ensure_prefect() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = json.loads(POOL_TEMPLATE.read_text())
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(POOL)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))
            say(f"created work pool {POOL} from {POOL_TEMPLATE.name}")
        else:
            if pool.type != "process":
                raise SystemExit(f"stack_ops: work pool {POOL} exists with type {pool.type!r}, not 'process'")
            if pool.base_job_template != template or pool.is_paused:
                await client.update_work_pool(POOL, WorkPoolUpdate(base_job_template=template, is_paused=False))
                say(f"work pool {POOL}: base job template from {POOL_TEMPLATE.name}, not paused")

        try:
            queue = await client.read_work_queue_by_name(TRIGGER_QUEUE, work_pool_name=POOL)
        except ObjectNotFound:
            await client.create_work_queue(TRIGGER_QUEUE, work_pool_name=POOL, concurrency_limit=1)
        else:
            if queue.concurrency_limit != 1 or queue.is_paused:
                await client.update_work_queue(queue.id, concurrency_limit=1, is_paused=False)

        automation = crash_automation()
        existing = await client.read_automations_by_name(automation.name)
        if not existing:
            await client.create_automation(automation)
            say(f"created automation {automation.name!r} (within {automation.trigger.within})")
        else:
            await client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                await client.delete_automation(duplicate.id)


async def set_pool_paused(paused: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    async with get_client() as client:
        await client.update_work_pool(POOL, WorkPoolUpdate(is_paused=paused))


async def in_flight(client: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in IN_FLIGHT]))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])),
    )


def _kill_local(infrastructure_pid: str | None) -> bool:
    """SIGKILL the flow-run process group named by ``host:pid`` when it runs on this host."""
    host, _, pid = (infrastructure_pid or "").rpartition(":")
    if not pid.isdigit() or host not in ("", socket.gethostname()):
        return False
    try:
        os.killpg(int(pid), signal.SIGKILL)  # the worker starts each flow run in a session of its own
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
    return True


async def drain(grace_s: float, cancel_wait_s: float) -> None:
    """No flow run of the pool is left running: pause the pool (the worker takes no new run),
    wait up to ``grace_s`` for the in-flight ones, cancel the rest through the API (the worker
    kills their processes and reports Cancelled), and after ``cancel_wait_s`` kill what is still
    alive here and force the state to Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.states import Cancelled, Cancelling

    began = time.monotonic()
    async with get_client() as client:
        await client.update_work_pool(POOL, WorkPoolUpdate(is_paused=True))
        runs = await in_flight(client)
        if not runs:
            say("no flow run in flight")
            return
        say(f"waiting up to {grace_s:.0f}s for {len(runs)} flow run(s): {', '.join(r.name for r in runs)}")
        while runs and time.monotonic() - began < grace_s:
            await asyncio.sleep(2)
            runs = await in_flight(client)
        if not runs:
            say(f"in-flight flow runs finished in {time.monotonic() - began:.0f}s")
            return
        for run in runs:
            if run.state_type is not None and run.state_type.value != "CANCELLING":
                await client.set_flow_run_state(
                    run.id, Cancelling(message="deploy/stack.sh is stopping the stack"), force=True
                )
        say(f"cancelling {len(runs)} flow run(s): {', '.join(r.name for r in runs)}")
        deadline = time.monotonic() + cancel_wait_s
        while runs and time.monotonic() < deadline:
            await asyncio.sleep(2)
            runs = await in_flight(client)
        for run in runs:  # the worker did not get to it (or is gone): do it here
            killed = _kill_local(run.infrastructure_pid)
            await client.set_flow_run_state(
                run.id,
                Cancelled(message="deploy/stack.sh stopped the stack" + (" (process killed)" if killed else "")),
                force=True,
            )
            say(f"flow run {run.name}: forced to Cancelled" + (f", killed {run.infrastructure_pid}" if killed else ""))
        say(f"drained in {time.monotonic() - began:.0f}s")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "setup":
        ensure_mlflow_user()
        asyncio.run(ensure_prefect())
        if os.environ.get("QUANTSTAGE_WEBHOOK_URL"):
            ensure_webhook()
    elif command == "webhook":
        ensure_webhook()
    elif command == "drain":
        grace = float(argv[2]) if len(argv) > 2 else 60.0
        asyncio.run(drain(grace, float(os.environ.get("QUANTSTAGE_CANCEL_WAIT_S", "30"))))
    elif command == "resume":
        asyncio.run(set_pool_paused(False))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
