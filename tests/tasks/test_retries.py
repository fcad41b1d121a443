"""Retries are for I/O: a user error fails at once, a transient error is retried."""

from __future__ import annotations

import pytest
from prefect import flow, task

from quant.errors import SourceError
from tasks._common import io_retry_condition

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
