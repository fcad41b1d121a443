"""Production backing stores end to end: the session's shared stack (tests/e2e/conftest.py) runs
both servers on a throwaway PostgreSQL (deploy/postgres.sh) — the MLflow tracking server with
``--backend-store-uri postgresql+psycopg2://…`` and proxied artifacts, the Prefect server with
``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://…``. The demo training flow and its
conversion ran against those servers (test_deployments.py runs them first; alone, this test runs
them); their rows are read back from PostgreSQL, the alias over MLflow's HTTP API, and the
promoted int8 model is loaded through the server by a fresh process that knows only the server.

PostgreSQL is installed from the OS packages (apt-get) when absent; the test is skipped when the
stack runs on SQLite (PostgreSQL absent and not installable, or ``QUANTSTAGE_TEST_STACK_DB=sqlite``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Stack
from tests.e2e.servers import aliases, mlflow_get, prefect, tags, versions

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]


def _champion(env: dict) -> str | None:
    try:
        return aliases(env, "digits-cnn-int8").get("champion")
    except httpx.HTTPStatusError:
        return None


def test_convert_on_postgres_backed_servers(stack: Stack) -> None:
    if stack.postgres is None:
        pytest.skip(stack.no_postgres)
    env, query, began = stack.env, stack.postgres.query, time.monotonic()

    # (1) a training flow and its conversion against the servers (already there after test_deployments.py)
    if _champion(env) is None:
        subprocess.run(
            [sys.executable, "-c", "from quantstage.flows.train_demo import train_demo; train_demo(epochs=2)"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=180,
        )
        deadline = time.monotonic() + 300
        while _champion(env) is None:
            assert time.monotonic() < deadline, "the triggered conversion set no digits-cnn-int8@champion in 300 s"
            time.sleep(1)
    (int8,) = versions(env, "digits-cnn-int8")
    lineage = tags(int8)
    assert lineage["gates_passed"] == "true" and lineage["promoted"] == "true" and lineage["source_version"] == "1"

    # (2) the Prefect server's state is in PostgreSQL: the training run and the conversion, completed
    trained = query(
        "prefect",
        "SELECT r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "WHERE f.name = 'train_demo' AND r.parameters->>'registered_name' = 'digits-cnn'",
    )
    assert [str(s).rpartition(".")[2] for (s,) in trained] == ["COMPLETED"], trained
    converted = query("prefect", f"SELECT state_type FROM flow_run WHERE id = '{lineage['flow_run_id']}'")
    assert [str(s).rpartition(".")[2] for (s,) in converted] == ["COMPLETED"], converted
    assert not list(stack.state.rglob("*.db")), "a SQLite database was created"
    assert sorted(r["id"] for r in prefect(env, "/flow_runs/filter", {"limit": 200})) == sorted(
        str(i) for (i,) in query("prefect", "SELECT id FROM flow_run")
    )

    # (3) MLflow's registry is in PostgreSQL: both models, the versions, the aliases, the run
    names = "('digits-cnn', 'digits-cnn-int8')"
    assert {n for (n,) in query("mlflow", f"SELECT name FROM registered_models WHERE name IN {names}")} == {
        "digits-cnn",
        "digits-cnn-int8",
    }
    assert sorted(query("mlflow", f"SELECT name, version FROM model_versions WHERE name IN {names}")) == [
        ("digits-cnn", 1),
        ("digits-cnn-int8", 1),
    ]
    assert sorted(
        query("mlflow", f"SELECT name, alias, version FROM registered_model_aliases WHERE name IN {names}")
    ) == [
        ("digits-cnn", "champion", 1),
        ("digits-cnn-int8", "champion", 1),
    ]
    run_id = lineage["mlflow_run_id"]
    assert query("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == [("FINISHED",)]

    # (4) … and the same over MLflow's HTTP API; the artifacts are proxied by the server
    assert aliases(env, "digits-cnn-int8") == {"champion": "1"}
    run = mlflow_get(env, "runs/get", run_id=run_id)["run"]
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
    print(f"checks + load {time.monotonic() - began:.1f}s, accuracy {loaded['acc']:.4f}")
