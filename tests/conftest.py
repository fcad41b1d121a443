"""Shared fixtures: one Prefect test harness and one temporary MLflow store per session (per
pytest-xdist worker under ``-n``: each worker is its own session, with its own Prefect home)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``'s unit part runs ``-n 2``), before anything imports torch or
    Prefect: each worker gets a PREFECT_HOME of its own, so the commands the tests start (and an
    ephemeral Prefect API) never share one SQLite database or result store with another worker; and the
    workers share the CPUs instead of each spinning up a thread per core (``OMP_NUM_THREADS``, which the
    commands they start inherit too; a value already set is kept)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    home = tempfile.mkdtemp(prefix=f"quantstage-prefect-{worker}-")
    os.environ["PREFECT_HOME"] = home
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpus // workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The whole architecture matrix (marker ``zoo``) runs only when asked for (``-m zoo``: ``make test-zoo``)."""
    if "zoo" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if "zoo" not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if "zoo" in item.keywords])
        items[:] = kept


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary MLflow tracking store (SQLite + local artifacts); cwd moves there so the
    default artifact root (./mlruns) lands in it too."""
    import mlflow

    workdir = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{workdir}/mlflow.db"
    previous_cwd, previous_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(workdir)
    try:
        yield uri
    finally:
        os.chdir(previous_cwd)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
        mlflow.set_tracking_uri(previous_env or "")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's ephemeral test API, started once for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def digits_source(mlflow_store: str, prefect_harness: None) -> str:
    """The demo's training flow, run once: DigitsCNN registered as digits-cnn@champion."""
    from quantstage.flows.train_demo import train_demo

    return train_demo(epochs=3)
