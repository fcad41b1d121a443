"""Delivery ids are accepted once within the window, also across a restart with a seen file."""

from __future__ import annotations

import stat
from pathlib import Path

from quantstage.webhook.replay import SeenDeliveries


def test_an_id_is_claimed_once_until_released() -> None:
    seen = SeenDeliveries(window_s=300)
    assert seen.claim("a", now=1000) is None
    assert seen.claim("a", now=1010) == 1000  # a replay: when it was first seen
    seen.release("a")  # its delivery failed here: MLflow's retry must get through
    assert seen.claim("a", now=1020) is None


def test_ids_expire_after_twice_the_window_and_memory_is_bounded() -> None:
    seen = SeenDeliveries(window_s=300, limit=3)
    for i in range(5):
        seen.claim(f"id{i}", now=float(i))
    assert len(seen) == 3 and seen.claim("id0", now=5) is None  # the oldest went first
    assert seen.claim("id4", now=4 + 601) is None  # expired


def test_a_restarted_receiver_remembers(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    first = SeenDeliveries(window_s=300, path=path, now=1000)
    first.claim("kept", now=1000)
    first.claim("released", now=1000)
    first.release("released")
    first.claim("old", now=1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = SeenDeliveries(window_s=300, path=path, now=1100)
    assert restarted.claim("kept", now=1100) == 1000
    assert restarted.claim("released", now=1100) is None
    later = SeenDeliveries(window_s=300, path=path, now=1000 + 700)  # the first entries have expired
    assert later.claim("old", now=1700) is None
