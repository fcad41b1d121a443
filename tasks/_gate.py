"""What units of work running as threads of one process must not do at the same time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["GATE", "NO_GATE", "ProcessGate"]


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


class _NoGate:
    """The gate of a unit of work that runs alone (a single conversion): holds nothing."""

    @contextlib.contextmanager
    def _none(self) -> Iterator[None]:
        yield

    def shared(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._none()

    def exclusive(self, engine: str) -> contextlib.AbstractContextManager[None]:
        return self._none()


GATE = ProcessGate()
NO_GATE = _NoGate()
