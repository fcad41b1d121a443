"""Delivery ids already received, remembered as long as their timestamps would pass: a replayed
delivery (a captured request sent again within the timestamp window) is refused.

In memory (bounded: the oldest ids go first once ``limit`` is reached) and, optionally, appended
to a file (``seen_file``, 0600) that a restarted receiver reads back, so a restart does not open
the window again. Entries older than the window are dropped on load; the file is rewritten then.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

__all__ = ["SeenDeliveries"]


class SeenDeliveries:
    """``claim(id, now)`` is None the first time an id is seen within twice ``window_s``; ``release`` forgets it."""

    def __init__(self, window_s: float, limit: int = 100_000, path: Path | None = None, now: float = 0.0) -> None:
        self.window_s, self.limit, self.path = window_s, limit, path
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._appended = 0
        if path is not None:
            self._load(path, now)

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, delivery_id: str, now: float) -> float | None:
        """None when ``delivery_id`` is new (it is remembered from now on), else when it was first seen."""
        with self._lock:
            self._expire(now)
            if (first := self._seen.get(delivery_id)) is not None:
                return first
            self._seen[delivery_id] = now
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
            self._append(f"{now:.3f} {delivery_id}\n")
            return None

    def release(self, delivery_id: str) -> None:
        """Forget ``delivery_id`` (its delivery failed here: MLflow's retry of it must get through)."""
        with self._lock:
            if self._seen.pop(delivery_id, None) is not None:
                self._append(f"- {delivery_id}\n")

    def _expire(self, now: float) -> None:
        # ids stay twice the window: a delivery timestamped up to window_s ahead is still refused
        while self._seen and next(iter(self._seen.values())) < now - 2 * self.window_s:
            self._seen.popitem(last=False)

    def _append(self, line: str) -> None:
        if self.path is None:
            return
        self._appended += 1
        if self._appended > max(1000, 2 * len(self._seen)):  # mostly expired lines: rewrite
            self._rewrite(self.path)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(line)

    def _rewrite(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{first:.3f} {delivery_id}\n" for delivery_id, first in self._seen.items())
        os.replace(tmp, path)
        self._appended = 0

    def _load(self, path: Path, now: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                first, _, delivery_id = line.partition(" ")
                if first == "-":
                    self._seen.pop(delivery_id, None)
                    continue
                with contextlib.suppress(ValueError):
                    if float(first) >= now - 2 * self.window_s and delivery_id:
                        self._seen[delivery_id] = float(first)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        self._rewrite(path)
