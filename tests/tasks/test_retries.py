"""Retries are for I/O: a user error fails at once, a transient error is retried."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from prefect import flow, task

from quantstage.quant.errors import SourceError
from quantstage.tasks._common import io_retry_condition, is_transient

pytestmark = pytest.mark.flow


def _flaky(exc: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=io_retry_condition)
    def stage() -> None:
        calls.append(1)
        raise exc

    @flow
    def pipeline() -> None:
        stage()

    return calls, pipeline


def test_user_error_is_not_retried(prefect_harness: None) -> None:
    calls, pipeline = _flaky(SourceError("models:/x@y does not resolve"))
    assert pipeline(return_state=True).is_failed()
    assert len(calls) == 1


def test_io_error_is_retried(prefect_harness: None) -> None:
    calls, pipeline = _flaky(ConnectionError("tracking server unreachable"))
    assert pipeline(return_state=True).is_failed()
    assert len(calls) == 3


def test_a_users_factory_error_is_not_retried(prefect_harness: None) -> None:
    calls, pipeline = _flaky(ValueError("hidden size must be divisible by the number of heads"))
    assert pipeline(return_state=True).is_failed()
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError("[Errno 111] Connection refused"), True),
        (TimeoutError("timed out"), True),
        (
            MlflowException(
                "API request to http://mlflow:5000/api/2.0/x failed with error code 503 != 200",
                error_code=TEMPORARILY_UNAVAILABLE,
            ),
            True,
        ),
        (MlflowException("API request to http://mlflow:5000/api/2.0/x failed with error code 500 != 200"), True),
        (MlflowException("Registered model 'x/y' is invalid", error_code=INVALID_PARAMETER_VALUE), False),
        (MlflowException("RESOURCE_DOES_NOT_EXIST: no such model", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (ValueError("bad kwargs"), False),
        (KeyError("input_ids"), False),
        (SourceError("does not resolve"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("unable to open database file"), False),
    ],
    ids=[
        "refused",
        "timeout",
        "503",
        "500",
        "400",
        "404",
        "value-error",
        "key-error",
        "user-error",
        "locked",
        "sqlite-path",
    ],
)
def test_only_transient_io_counts_as_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_wrapped_connection_error_is_transient() -> None:
    """MLflow wraps a refused connection in an MlflowException whose context holds the original."""
    try:
        try:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        except ConnectionRefusedError as inner:
            raise MlflowException(f"API request to http://127.0.0.1:9/api failed with exception {inner}") from None
    except MlflowException as outer:
        assert outer.__context__ is not None and is_transient(outer)
