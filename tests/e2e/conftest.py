"""One real stack for the real-stack tests: deploy/stack.sh started once per session on free
loopback ports (Prefect server, process worker, MLflow server, webhook receiver, deployments),
both servers on a throwaway PostgreSQL (deploy/postgres.sh) when one can be had, else on SQLite
(``QUANTSTAGE_TEST_STACK_DB=sqlite`` asks for SQLite). Shared by test_deployments.py,
test_postgres.py, test_stack_security.py and test_webhooks.py; stopped by the last of them
(``stack.sh stop`` with a run in flight) or in teardown, pass or fail, PostgreSQL after it.

Order: every real-stack test after all the others; among them, file order, then the ones marked
``destructive`` (they kill the worker, restart it, stop the stack). The settings are the
operations tests' short windows: 30 s heartbeats, Crashed after 40 s of silence, 5 s stop grace,
a worker polling every 2 s.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e import postgres as pg
from tests.e2e.servers import STACK, client_credentials, free_port, kill_groups

HEARTBEAT_S, CRASH_AFTER_S = 30, 40  # Prefect's shortest heartbeat; a run silent for 40 s is Crashed


@dataclass
class Stack:
    """A started stack: ``env`` for clients (URLs + credentials), ``stack_env`` for stack.sh, its
    ``state`` folder, and ``postgres`` when both servers keep their state there (else ``no_postgres``: why not)."""

    env: dict[str, str]
    stack_env: dict[str, str]
    state: Path
    postgres: pg.Postgres | None = None
    no_postgres: str = ""

    def flow_run_state(self, flow_run_id: str) -> str:
        """A flow run's state type as the Prefect server's database holds it."""
        if self.postgres is not None:
            rows = self.postgres.query("prefect", f"SELECT state_type FROM flow_run WHERE id = '{flow_run_id}'")
        else:
            with sqlite3.connect(self.state / "prefect" / "prefect.db") as db:
                rows = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (flow_run_id,)).fetchall()
        return str(rows[0][0]).rpartition(".")[2]

    def run(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``stack.sh ARGS`` against this stack."""
        return subprocess.run(
            [str(STACK), *args], env=env or self.stack_env, capture_output=True, text=True, timeout=timeout
        )


def _stack_order(item: pytest.Item) -> int:
    if "stack" not in item.keywords:
        return 0
    return 2 if "destructive" in item.keywords else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_stack_order)  # stable: file order within each group


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres | str]:
    """The session's PostgreSQL, or why there is none."""
    started = pg.start()
    try:
        yield started
    finally:
        if isinstance(started, pg.Postgres):
            started.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres: pg.Postgres | str) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    stack_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PG"))}
    if isinstance(postgres, pg.Postgres):
        stack_env |= postgres.urls
    stack_env |= {
        "QUANTSTAGE_STACK_DIR": str(state),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "WEBHOOK_PORT": str(free_port()),
        "QUANTSTAGE_BIN": str(Path(sys.executable).parent),
        "QUANTSTAGE_HEARTBEAT_S": str(HEARTBEAT_S),
        "QUANTSTAGE_CRASH_AFTER_S": str(CRASH_AFTER_S),
        "QUANTSTAGE_STOP_GRACE_S": "5",
        "QUANTSTAGE_CANCEL_WAIT_S": "30",
        "QUANTSTAGE_WORKER_POLL_S": "2",
    }
    try:
        began = time.monotonic()
        started = subprocess.run(
            [str(STACK)], env=stack_env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
        )
        assert started.returncode == 0, f"stack.sh failed:\n{started.stdout}\n{started.stderr}"
        print(f"{started.stdout}stack up in {time.monotonic() - began:.1f}s")
        env = stack_env | client_credentials(state)
        env |= {"PREFECT_HOME": str(state / "prefect-client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env |= {"PYTHONPATH": str(REPO_ROOT)}
        if isinstance(postgres, pg.Postgres):
            yield Stack(env=env, stack_env=stack_env, state=state, postgres=postgres)
        else:
            yield Stack(env=env, stack_env=stack_env, state=state, no_postgres=postgres)
    finally:
        subprocess.run([str(STACK), "stop"], env=stack_env, capture_output=True, timeout=180)
        kill_groups(state)
