"""What units of work running as threads of one process must not do at the same time, declared by
the tasks themselves.

A stage task says what it needs with ``@gated("exclusive")`` (it traces: prepare, the numeric
suite, the fallback's trials) or ``@gated("shared")`` (it runs the model); a conversion unit only
says whether it runs beside others (``in_parallel``). Outside ``in_parallel`` — a single conversion,
a unit alone in a Dask worker's one thread — the decorators hold nothing.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Literal, ParamSpec, TypeVar

import torch

__all__ = ["DECLARED", "GATE", "GateMode", "ProcessGate", "gated", "in_parallel"]

P = ParamSpec("P")
R = TypeVar("R")
GateMode = Literal["shared", "exclusive"]


class ProcessGate:
    """What the units of work running as threads of one process must not do at the same time.

    ``torch.backends.quantized.engine`` and ``torch.set_num_threads`` are process-wide, and FX
    symbolic tracing (prepare, the numeric suite) patches ``torch.nn.Module.__call__`` for the
    whole process while it runs, so a module called from another thread meanwhile is traced
    into the wrong graph. ``shared(engine)`` lets units of work with the same engine overlap;
    ``exclusive(engine)`` (tracing) waits until no other unit holds the gate and keeps it alone.
    A waiting exclusive holder goes first. The first holder sets one intra-op thread, the last
    one restores the previous count. Dask workers with one thread each never wait.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._engine: str | None = None
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._threads_before = 0

    def _blocked(self, engine: str, exclusive: bool) -> bool:
        if self._exclusive:
            return True
        if exclusive:
            return self._shared > 0
        return self._waiting > 0 or (self._shared > 0 and self._engine != engine)

    @contextlib.contextmanager
    def _hold(self, engine: str, exclusive: bool) -> Iterator[None]:
        with self._cond:
            self._waiting += exclusive
            while self._blocked(engine, exclusive):
                self._cond.wait()
            self._waiting -= exclusive
            if not (self._shared or self._exclusive):
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(1)
            torch.backends.quantized.engine = engine
            self._engine = engine
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                if not (self._shared or self._exclusive):
                    torch.set_num_threads(self._threads_before)
                    self._engine = None
                self._cond.notify_all()

    def shared(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._hold(engine, exclusive=False)

    def exclusive(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._hold(engine, exclusive=True)


GATE = ProcessGate()

# the quantized engine of the unit running in this thread beside others (None: it runs alone)
_PARALLEL_ENGINE: ContextVar[str | None] = ContextVar("quantstage_parallel_engine", default=None)
DECLARED: dict[str, GateMode] = {}  # "module.function" -> what it declared (the tests read it)
_HOLDING: ContextVar[bool] = ContextVar("quantstage_holding_gate", default=False)  # a task inside a gated task


@contextlib.contextmanager
def in_parallel(engine: str, parallel: bool = True) -> Iterator[None]:
    """Within this block, ``@gated`` tasks hold the process gate for ``engine`` (``parallel``: the unit
    runs beside other units in this process); with ``parallel=False`` they hold nothing."""
    token = _PARALLEL_ENGINE.set(engine if parallel else None)
    try:
        yield
    finally:
        _PARALLEL_ENGINE.reset(token)


def gated(mode: GateMode) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Declare what a task needs of the process gate: ``exclusive`` (it traces, patching
    ``Module.__call__`` process-wide) or ``shared`` (it runs models, other same-engine units may too).
    Put it under ``@task``; it holds the gate only inside ``in_parallel``."""
    if mode not in ("shared", "exclusive"):
        raise ValueError(
            f"gate mode {mode!r} is not one of 'shared', 'exclusive'; fix: @gated('shared') or @gated('exclusive')"
        )

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        DECLARED[f"{fn.__module__}.{fn.__qualname__}"] = mode

        @functools.wraps(fn)
        def held(*args: P.args, **kwargs: P.kwargs) -> R:
            engine = _PARALLEL_ENGINE.get()
            if engine is None or _HOLDING.get():
                return fn(*args, **kwargs)
            with getattr(GATE, mode)(engine):
                token = _HOLDING.set(True)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _HOLDING.reset(token)

        return held

    return decorate
