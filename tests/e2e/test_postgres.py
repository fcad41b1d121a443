"""Production backing stores end to end: a loopback PostgreSQL (deploy/postgres.sh) behind both
the MLflow tracking server (``--backend-store-uri postgresql+psycopg2://…``, proxied artifacts)
and the Prefect server (``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://…``), started
by deploy/stack.sh on free loopback ports. The demo training flow and the convert flow run
against the servers; the rows are read back from PostgreSQL, the alias over MLflow's HTTP API,
and the promoted int8 model is loaded through the server in a fresh process.

PostgreSQL is installed from the OS packages (apt-get) when absent; the test is skipped when it
is absent and cannot be installed. Deselect with ``-m 'not stack'``; PostgreSQL and every server
process are stopped in teardown, pass or fail.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.test_deployments import (
    STACK,
    _client_credentials,
    _free_port,
    _kill_groups,
    _mlflow,
    _prefect,
    _prefect_request,
    _tags,
    _versions,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]  # ~100 s; more when apt-get installs PostgreSQL

POSTGRES = REPO_ROOT / "deploy" / "postgres.sh"


def _installed() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _why_no_postgres() -> str | None:
    """None when PostgreSQL is installed or deploy/postgres.sh can install it, else why not."""
    if _installed():
        return None
    if not shutil.which("apt-get"):
        return "PostgreSQL is not installed (no initdb) and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "PostgreSQL is not installed (no initdb) and installing it with apt-get needs root"
    return None


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PG"))}


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1:<free port>; yields the connection settings and URLs."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 (extra 'postgres') is needed for MLflow on PostgreSQL")
    if why := _why_no_postgres():
        pytest.skip(why)
    installed_before = _installed()
    # not pytest's tmp_path: that lives under a root-private directory (0700) the unprivileged
    # PostgreSQL user could not enter when the tests run as root
    pg_dir = Path(tempfile.mkdtemp(prefix="quantstage-pg-"))
    port = _free_port()
    env = _clean_env() | {"QUANTSTAGE_PG_DIR": str(pg_dir), "PGPORT": str(port)}
    try:
        started = subprocess.run([str(POSTGRES), "start"], env=env, capture_output=True, text=True, timeout=360)
        if started.returncode != 0:
            if not installed_before:
                pytest.skip(f"PostgreSQL is absent and could not be installed:\n{started.stderr[-2000:]}")
            pytest.fail(f"postgres.sh start failed:\n{started.stdout}\n{started.stderr}")
        print(started.stderr, end="")
        urls = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        assert set(urls) == {"MLFLOW_BACKEND_STORE_URI", "PREFECT_API_DATABASE_CONNECTION_URL"}, started.stdout

        def query(db: str, sql: str) -> list[tuple]:
            with psycopg2.connect(host="127.0.0.1", port=port, user=db, dbname=db, connect_timeout=10) as conn:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return cur.fetchall()

        yield {"env": env, "urls": urls, "query": query, "port": port}
    finally:
        subprocess.run([str(POSTGRES), "stop"], env=env, capture_output=True, timeout=90)
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_stack(postgres: dict, tmp_path_factory: pytest.TempPathFactory):
    """deploy/stack.sh with both servers on the PostgreSQL above; yields the client environment."""
    state = tmp_path_factory.mktemp("pgstack")
    prefect_port, mlflow_port = _free_port(), _free_port()
    env = (
        _clean_env()
        | postgres["urls"]
        | {
            "QUANTSTAGE_STACK_DIR": str(state),
            "PREFECT_PORT": str(prefect_port),
            "MLFLOW_PORT": str(mlflow_port),
            "QUANTSTAGE_BIN": str(Path(sys.executable).parent),
        }
    )
    client_env = _clean_env() | {
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_HOME": str(state / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    try:
        began = time.monotonic()
        started = subprocess.run([str(STACK)], env=env, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
        assert started.returncode == 0, f"stack.sh failed:\n{started.stdout}\n{started.stderr}"
        print(started.stdout + f"stack up in {time.monotonic() - began:.1f}s")
        yield client_env | _client_credentials(state) | {"QUANTSTAGE_STACK_DIR": str(state)}
    finally:
        subprocess.run([str(STACK), "stop"], env=env, capture_output=True, timeout=120)
        _kill_groups(state)


def _disable_automations(env: dict) -> int:
    """Switch off the deployments' triggers (after-training, on-registered) so that the only
    conversion is the one this test runs itself; test_deployments.py covers the triggers."""
    automations = _prefect(env, "/automations/filter", {})
    for automation in automations:
        _prefect_request(env, "PATCH", f"/automations/{automation['id']}", {"enabled": False}).raise_for_status()
    return len(automations)


def test_convert_on_postgres_backed_servers(postgres: dict, pg_stack: dict) -> None:
    env, query, began = pg_stack, postgres["query"], time.monotonic()
    _disable_automations(env)

    # (1) train, register and alias the float model, then convert it: both flows against the servers
    script = textwrap.dedent(
        """
        import json
        from quantstage.flows.convert import ConvertParams, convert_flow
        from quantstage.flows.train_demo import train_demo
        source = train_demo(epochs=2)
        result = convert_flow(ConvertParams(model_uri="models:/digits-cnn@champion", benchmark_iterations=5, sensitivity=False))
        print(json.dumps({"source": source, "run_id": result.run_id, "version": result.version,
                          "promoted": result.promoted, "skipped": result.skipped, "reason": result.reason}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["source"] == "models:/digits-cnn/1" and result["version"] == "1", result
    assert result["promoted"] and not result["skipped"], result
    flows_done = time.monotonic()

    # (2) the Prefect server's state is in PostgreSQL: the two flow runs, completed
    runs = query(
        "prefect", "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id ORDER BY r.created"
    )
    assert [(name, str(state)) for name, state in runs] == [("train_demo", "COMPLETED"), ("convert", "COMPLETED")], runs
    assert not list(Path(env["QUANTSTAGE_STACK_DIR"]).rglob("*.db")), "a SQLite database was created"
    assert sorted(r["id"] for r in _prefect(env, "/flow_runs/filter", {})) == sorted(
        str(i) for (i,) in query("prefect", "SELECT id FROM flow_run")
    )

    # (3) MLflow's registry is in PostgreSQL: both models, the versions, the alias
    assert {n for (n,) in query("mlflow", "SELECT name FROM registered_models")} == {"digits-cnn", "digits-cnn-int8"}
    assert sorted(query("mlflow", "SELECT name, version FROM model_versions")) == [
        ("digits-cnn", 1),
        ("digits-cnn-int8", 1),
    ]
    assert sorted(query("mlflow", "SELECT name, alias, version FROM registered_model_aliases")) == [
        ("digits-cnn", "champion", 1),
        ("digits-cnn-int8", "champion", 1),
    ]
    assert query("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{result['run_id']}'") == [("FINISHED",)]

    # (4) … and the same over MLflow's HTTP API; the artifacts are proxied by the server
    registered = _mlflow(env, "registered-models/get", name="digits-cnn-int8")["registered_model"]
    assert {a["alias"]: a["version"] for a in registered.get("aliases", [])} == {"champion": "1"}
    tags = _tags(_versions(env, "digits-cnn-int8")[0])
    assert tags["gates_passed"] == "true" and tags["promoted"] == "true" and tags["source_version"] == "1"
    run = _mlflow(env, "runs/get", run_id=result["run_id"])["run"]
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), run["info"]["artifact_uri"]

    # (5) a fresh process that knows only the tracking server loads the champion through it and scores it
    load = textwrap.dedent(
        """
        import json, mlflow, torch
        from quantstage.quant.data.sources import digits_split
        _, _, x, y = digits_split()
        q = mlflow.pytorch.load_model("models:/digits-cnn-int8@champion")
        with torch.no_grad():
            print(json.dumps({"type": type(q).__name__, "acc": (q(x).argmax(-1) == y).float().mean().item()}))
        """
    )
    bare = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    # the server and its credentials
    tracking = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    bare |= {k: env[k] for k in tracking} | {"PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", load], env=bare, cwd=cwd, capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 0, out.stderr[-4000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["type"] == "RecursiveScriptModule" and loaded["acc"] >= 0.9, loaded
    print(
        f"flows {flows_done - began:.1f}s, checks + load {time.monotonic() - flows_done:.1f}s, accuracy {loaded['acc']:.4f}"
    )
