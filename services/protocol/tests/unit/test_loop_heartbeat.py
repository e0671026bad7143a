"""The event loop's heartbeat: a callback that burns CPU shows as a busy
stretch at least as long; one that sleeps shows as lag, not as busy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from servekit_protocol.loop_heartbeat import LoopHeartbeat

INTERVAL = 0.005
HOLD = 0.08
"""How long the test callbacks hold the loop."""


def _burn(seconds: float) -> None:
    """Hold the loop for ``seconds`` of this thread's CPU time (the clock
    measured, so the figure does not depend on the machine's load)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


async def _stretches(hold: Callable[[], object]) -> list[tuple[float, float]]:
    seen: list[tuple[float, float]] = []
    heartbeat = LoopHeartbeat(INTERVAL, lambda busy, lag: seen.append((busy, lag)))
    heartbeat.start()
    await asyncio.sleep(0.03)
    asyncio.get_running_loop().call_soon(hold)
    await asyncio.sleep(0.05)
    heartbeat.stop()
    count = len(seen)
    await asyncio.sleep(0.02)
    assert len(seen) == count, "beats after stop()"
    return seen


async def test_a_callback_that_burns_cpu_is_a_busy_stretch() -> None:
    seen = await _stretches(lambda: _burn(HOLD))
    busy = max(busy for busy, _ in seen)
    assert HOLD <= busy < HOLD + 0.05, seen
    # Whatever the load, the beat came at least the hold late.
    assert max(lag for _, lag in seen) >= HOLD - INTERVAL, seen


async def test_a_callback_that_sleeps_is_lag_not_busy() -> None:
    seen = await _stretches(lambda: time.sleep(HOLD))
    assert max(lag for _, lag in seen) >= HOLD - INTERVAL, seen
    # Sleeping costs no CPU: the stretches are the beats' own few microseconds
    # and the test's sleeps, far under the hold.
    assert max(busy for busy, _ in seen) < HOLD / 2, seen


async def test_an_idle_loop_is_not_busy() -> None:
    seen = await _stretches(lambda: None)
    assert len(seen) >= 3
    assert max(busy for busy, _ in seen) < HOLD / 2, seen


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopHeartbeat(0, lambda *_: None)
