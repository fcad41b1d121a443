"""Preflight: check the MLflow tracking/registry store answers before anything is loaded or converted.

A closed port, a server that hangs, a SQLite file in a folder that does not exist or cannot be written:
each fails here in seconds with one line naming the URI and the fix, instead of after minutes of
client retries, or (missing folder) silently starting an empty store where the model "does not resolve".
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from quantstage.quant.errors import QuantStageError
from quantstage.tasks._common import run_logger

__all__ = ["StoreError", "check_store", "check_tracking_store"]

_TIMEOUT_S = 5.0


class StoreError(QuantStageError):
    """The MLflow tracking or registry store cannot be used."""


def _writable_folder(folder: Path, uri: str, what: str) -> None:
    if not folder.is_dir():
        raise StoreError(
            f"MLflow store {uri!r}: the folder {str(folder)!r} for its {what} does not exist, so a new empty store "
            f"would start there; fix: create the folder, or point MLFLOW_TRACKING_URI at the store that has your models"
        )
    # open a file there: os.access says yes to root on read-only mounts and on /proc
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreError(
            f"MLflow store {uri!r}: the folder {str(folder)!r} for its {what} is not writable ({exc.strerror}); "
            f"fix: point MLFLOW_TRACKING_URI at a writable location, or fix the folder's permissions or mount"
        ) from None


def _check_sqlite(uri: str) -> None:
    path = Path(unquote(uri[len("sqlite:///") :]))
    if str(path) in ("", ":memory:"):
        return
    _writable_folder(path.parent, uri, "database")
    if path.exists():
        try:
            with path.open("r+b"):
                pass
        except OSError as exc:
            raise StoreError(
                f"MLflow store {uri!r}: the database file is not writable ({exc.strerror}); fix: point "
                f"MLFLOW_TRACKING_URI at a writable copy, or fix the file's permissions or mount"
            ) from None


def _check_server(uri: str) -> None:
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        answer = requests.get(url, timeout=_TIMEOUT_S)
    except requests.exceptions.RequestException as exc:
        reason = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "connection refused or unreachable"
        raise StoreError(
            f"MLflow tracking server {uri!r} does not answer ({reason} within {_TIMEOUT_S:.0f} s); fix: start it, or "
            f"point MLFLOW_TRACKING_URI at a server that runs (unset: a local store in this folder)"
        ) from None
    if answer.status_code in (401, 403):
        raise StoreError(
            f"MLflow tracking server {uri!r} refused the request (HTTP {answer.status_code}); fix: set "
            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    if answer.status_code >= 500:
        raise StoreError(
            f"MLflow tracking server {uri!r} answers HTTP {answer.status_code} on /health; fix: check its log"
        )


def _check_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        folder = Path(unquote(urlparse(uri).path) if scheme == "file" else uri)
        _writable_folder(folder if folder.exists() else folder.parent, uri, "runs")


def check_store() -> str:
    """The tracking URI in use, once it (and a separate registry URI) is known to answer (servers)
    or to be writable (local stores); a one-line StoreError otherwise, within seconds.

    The CLI calls it before starting Prefect; flows run it as the first task (deployments)."""
    uri = str(mlflow.get_tracking_uri())
    _check_uri(uri)
    registry = str(mlflow.get_registry_uri())
    if registry != uri:
        _check_uri(registry)
    return uri


@task(name="check_tracking_store", cache_policy=NO_CACHE)
def check_tracking_store() -> str:
    """``check_store`` as the flow's first task."""
    uri = check_store()
    run_logger().info("MLflow store %s answers", uri)
    return uri
