"""Shared task settings: which failures are worth a retry, and a logger that works anywhere."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from quantstage.quant.errors import QuantStageError

__all__ = ["IO_RETRIES", "MLFLOW_CLIENT_DEFAULTS", "io_retry_condition", "is_transient", "run_logger"]

# MLflow's HTTP client retries a dead server for minutes by default (7 retries, backoff factor 2,
# 120 s timeout). quantstage gives one call about 30 s (3 tries of at most 10 s, 1 + 2 s apart) and
# lets Prefect's task retries (IO_RETRIES) ride out longer outages; set them to override.
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
for _name, _value in MLFLOW_CLIENT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover - MLflow depends on requests
        pass
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - Prefect depends on httpx
        pass
    return tuple(errors)


_TRANSPORT = _transport_errors()


def _server_error(exc: BaseException) -> bool:
    """An MLflow REST answer with a 5xx status (the server failed, not the request)."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(exc, MlflowException):
        return False
    status: int = exc.get_http_status_code()  # type: ignore[no-untyped-call]  # MLflow leaves it untyped
    return str(exc).startswith("API request to") and status >= 500


def _locked_database(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is I/O that may succeed on a retry: a connection error or timeout (anywhere in
    the exception chain), an MLflow server's 5xx answer, a locked SQLite store. Everything else — a
    user error (QuantStageError), a 4xx answer, a bug — fails the same way again and is not retried."""
    if isinstance(exc, QuantStageError):
        return False
    return any(isinstance(e, _TRANSPORT) or _server_error(e) or _locked_database(e) for e in _chain(exc))


def io_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient I/O failures only (``is_transient``)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


# Task options for stages whose failures may be transient I/O (MLflow, storage): three retries 10, 30
# and 90 s apart survive a 90 s outage of a server (bench/outage.py), and give up with the original
# error within about 3 minutes on one that refuses connections, 4.5 on one that hangs (each try ~33 s).
IO_RETRIES: dict[str, Any] = dict(
    retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=io_retry_condition, cache_policy=NO_CACHE
)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a run, the module logger outside one (``task.fn()`` in tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("quantstage.tasks")
