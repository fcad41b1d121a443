"""A throwaway PostgreSQL for the real-stack tests (deploy/postgres.sh on a free loopback port).

``start`` returns its URLs and a query function, or the reason there is none: PostgreSQL is
installed from the OS packages (apt-get) when absent and possible (root); without it the shared
stack runs on SQLite and the PostgreSQL checks are skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.e2e.servers import free_port

POSTGRES = REPO_ROOT / "deploy" / "postgres.sh"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PG"))}


def installed() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def why_not() -> str | None:
    """None when PostgreSQL is installed or deploy/postgres.sh can install it, else why not."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 (extra 'postgres') is needed for MLflow on PostgreSQL"
    if os.environ.get("QUANTSTAGE_TEST_STACK_DB", "postgres") == "sqlite":
        return "QUANTSTAGE_TEST_STACK_DB=sqlite: the shared stack runs on SQLite"
    if installed():
        return None
    if not shutil.which("apt-get"):
        return "PostgreSQL is not installed (no initdb) and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "PostgreSQL is not installed (no initdb) and installing it with apt-get needs root"
    return None


@dataclass
class Postgres:
    """A running cluster: the two URLs stack.sh takes, ``query(db, sql)``, and how to stop it."""

    urls: dict[str, str]
    port: int
    env: dict[str, str]
    folder: Path
    log: str = ""
    query: Callable[[str, str], list[tuple]] = field(init=False)

    def __post_init__(self) -> None:
        import psycopg2

        def query(db: str, sql: str) -> list[tuple]:
            with psycopg2.connect(host="127.0.0.1", port=self.port, user=db, dbname=db, connect_timeout=10) as conn:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return list(cur.fetchall())

        self.query = query

    def stop(self) -> None:
        subprocess.run([str(POSTGRES), "stop"], env=self.env, capture_output=True, timeout=90)
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Postgres | str:
    """A started PostgreSQL, or why there is none."""
    if why := why_not():
        return why
    installed_before = installed()
    # not pytest's tmp_path: that lives under a root-private directory (0700) the unprivileged
    # PostgreSQL user could not enter when the tests run as root
    folder = Path(tempfile.mkdtemp(prefix="quantstage-pg-"))
    port = free_port()
    env = clean_env() | {"QUANTSTAGE_PG_DIR": str(folder), "PGPORT": str(port)}
    started = subprocess.run([str(POSTGRES), "start"], env=env, capture_output=True, text=True, timeout=360)
    if started.returncode != 0:
        subprocess.run([str(POSTGRES), "stop"], env=env, capture_output=True, timeout=90)
        shutil.rmtree(folder, ignore_errors=True)
        if not installed_before:
            return f"PostgreSQL is absent and could not be installed: {started.stderr[-2000:]}"
        raise RuntimeError(f"postgres.sh start failed:\n{started.stdout}\n{started.stderr}")
    urls = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    assert set(urls) == {"MLFLOW_BACKEND_STORE_URI", "PREFECT_API_DATABASE_CONNECTION_URL"}, started.stdout
    return Postgres(urls=urls, port=port, env=env, folder=folder, log=started.stderr)
