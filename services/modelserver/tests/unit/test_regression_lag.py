"""A large regression answer's values, from the model's output to the arrays
the answer's segment carries, beside a ticker on the event loop that sleeps
1 ms at a time.

As lists, the values were made from the output (``tolist()``) and back into
an array in 65,536-value steps that each held the GIL about 1 ms: the loop got
the GIL back only when the interpreter's switch interval (5 ms) ran out, so
nearly every tick came over 4 ms late (8 Mi values: 115-136 such ticks a
call at load 8, 71-116 at load 12). As the runtime's float32 array, the only
work is numpy's cast, with the GIL released: 3-6 late ticks at load 12, as
many as an idle loop gets in 300 ms there (5-7).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from modelserver.protocol import answerarrays
from modelserver.runtimes.base import regression_results

VALUES = 8 << 20
"""Regression values of the answer: 8 Mi, about the most the default request
limits let through (one float feature an example)."""
TICK = 0.001
LATE = 0.004
"""A tick this late (its own 1 ms sleep included) waited for the GIL through
a switch interval (or for a core)."""
LATE_TICKS = 20
"""Late ticks allowed: a loaded machine deschedules the loop now and then
while the cast runs (35-120 ms at load 12; a process's first cast of this
size takes fresh pages and ran up to 340 ms, hence a first call before the
measured one); the lists made 71 or more however loaded the machine, and on a
quiet one every tick would wait for a switch interval."""


async def _late_ticks(work: Any) -> tuple[int, Any]:
    """How many ticks of a 1 ms ticker came :data:`LATE` while ``work``
    (a coroutine) ran, and its result."""
    late = 0
    done = False

    async def tick() -> None:
        nonlocal late
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            late += now - last > LATE
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker starts before the work
    try:
        result = await work
    finally:
        done = True
        await ticker
    return late, result


async def test_regression_values_reach_the_answer_s_arrays_without_holding_the_loop() -> (
    None
):
    output = np.random.default_rng(3).normal(size=(VALUES, 1))

    async def to_arrays() -> dict[str, Any]:
        # As the dataplane and the answer writers do it for a large answer.
        values = await asyncio.to_thread(regression_results, output, VALUES)
        return answerarrays.regression_arrays(values)

    await to_arrays()
    late, arrays = await _late_ticks(to_arrays())
    values = answerarrays.regression_values(arrays)
    assert values.dtype == np.float32
    assert np.array_equal(values, output.reshape(-1).astype(np.float32))
    assert late <= LATE_TICKS, (
        f"{late} ticks of 1 ms came over {LATE * 1e3:.0f} ms late"
    )
