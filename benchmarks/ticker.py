"""A ticker on the running event loop: how long the loop was held while a
block of the benchmark ran."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

TICK_SECONDS = 0.001
"""The ticker's sleep: a tick that comes later than this was held up."""


@contextlib.asynccontextmanager
async def loop_intervals() -> AsyncIterator[list[float]]:
    """The intervals between the ticks of a ticker that runs on this loop while
    the block does (seconds, each tick's own sleep included); the list fills as
    the ticks come and is complete when the block is left."""
    intervals: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK_SECONDS)
            now = time.perf_counter()
            intervals.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield intervals
    finally:
        done.set()
        await ticker
