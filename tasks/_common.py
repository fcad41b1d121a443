"""Shared task settings: which failures are worth a retry, and a logger that works anywhere."""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from quant.errors import QuantStageError

__all__ = ["io_retry_condition", "run_logger"]


def io_retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures (MLflow, storage), never a user error that would fail again."""
    try:
        state.result()
    except QuantStageError:
        return False
    except Exception:
        return True
    return False


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run, the module logger outside one (``task.fn()`` in tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("quantstage.tasks")
