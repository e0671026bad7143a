"""Unbatched calls proven short run on the event loop; every other call in the pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from modelserver.dataplane import DataPlane
from modelserver.inline import (
    PROVEN_CALLS,
    InlinePolicy,
    ThreadUsage,
    counted_seconds,
    thread_usage,
)
from modelserver.runtimes.base import PreparedCall
from modelserver.types import ModelSpec, PredictRequest

from tests.support.models import linear_inputs

StartDataPlane = Callable[..., Awaitable[DataPlane]]


class _Runtime:
    """Stands for a runtime as a key (the policy only keys records by it)."""


RUNTIME = _Runtime()


def _call(rows: int | None, signature: str = "serving_default") -> PreparedCall:
    return PreparedCall(signature, {}, ("predictions",), rows)


def _short_calls(policy: InlinePolicy, rows: int, count: int = PROVEN_CALLS) -> None:
    for _ in range(count):
        policy.observe(RUNTIME, "serving_default", rows, 0.0001)


def test_inline_after_enough_short_calls_and_only_up_to_their_rows() -> None:
    policy = InlinePolicy(0.0005)
    _short_calls(policy, rows=4, count=PROVEN_CALLS - 1)
    assert not policy.inline(RUNTIME, _call(1), None)  # type: ignore[arg-type]
    _short_calls(policy, rows=4, count=1)
    assert policy.inline(RUNTIME, _call(4), None)  # type: ignore[arg-type]
    assert policy.inline(RUNTIME, _call(1), 5.0)  # type: ignore[arg-type]
    # More rows than any proven call, another signature, no row count, a
    # deadline already passed: the pool.
    assert not policy.inline(RUNTIME, _call(5), None)  # type: ignore[arg-type]
    assert not policy.inline(RUNTIME, _call(1, "other"), None)  # type: ignore[arg-type]
    assert not policy.inline(RUNTIME, _call(None), None)  # type: ignore[arg-type]
    assert not policy.inline(RUNTIME, _call(1), 0.0)  # type: ignore[arg-type]


def test_one_slow_call_sends_the_next_calls_back_to_the_pool() -> None:
    policy = InlinePolicy(0.0005)
    _short_calls(policy, rows=2)
    assert policy.inline(RUNTIME, _call(2), None)  # type: ignore[arg-type]
    policy.observe(RUNTIME, "serving_default", 1, 0.002)
    assert not policy.inline(RUNTIME, _call(1), None)  # type: ignore[arg-type]
    _short_calls(policy, rows=1)
    assert policy.inline(RUNTIME, _call(1), None)  # type: ignore[arg-type]
    assert not policy.inline(RUNTIME, _call(2), None)  # type: ignore[arg-type]


def test_a_zero_limit_never_runs_inline() -> None:
    policy = InlinePolicy(0.0)
    _short_calls(policy, rows=1, count=100)
    assert not policy.inline(RUNTIME, _call(1), None)  # type: ignore[arg-type]


def _spy_on_threads(dataplane: DataPlane) -> list[int]:
    """Record the thread of every run of ``linear``'s runtime."""
    runtime: Any = dataplane._resolve(ModelSpec("linear")).runtime
    threads: list[int] = []
    real_run = runtime.run

    def run(call: PreparedCall) -> Any:
        threads.append(threading.get_ident())
        return real_run(call)

    runtime.run = run
    return threads


async def _predict_many(dataplane: DataPlane, count: int) -> list[list[float]]:
    answers = []
    for _ in range(count):
        response = await dataplane.predict(
            PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0), (0.0, 2.0)))
        )
        answers.append(response.outputs["predictions"].tolist())
    return answers


async def test_a_proven_model_runs_on_the_loop_with_the_same_answers(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    # A limit no scikit-learn call on a loaded machine comes near: the test is
    # about where calls run, not about how fast they are.
    dataplane = await start_dataplane(two_models, inline_inference_micros=10_000_000)
    threads = _spy_on_threads(dataplane)
    answers = await _predict_many(dataplane, PROVEN_CALLS + 4)
    loop_thread = threading.get_ident()
    assert loop_thread not in threads[:PROVEN_CALLS]
    assert threads[PROVEN_CALLS:] == [loop_thread] * 4
    assert all(answer == answers[0] for answer in answers)


async def test_calls_over_the_limit_stay_in_the_pool(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    # No scikit-learn pipeline call takes a microsecond: none is proven short.
    dataplane = await start_dataplane(two_models, inline_inference_micros=1)
    threads = _spy_on_threads(dataplane)
    await _predict_many(dataplane, PROVEN_CALLS + 4)
    assert threading.get_ident() not in threads


def test_a_preempted_call_counts_its_cpu_time_and_a_waiting_one_its_wall_time() -> None:
    before = ThreadUsage(cpu_seconds=1.0, waits=7)
    # 3 ms on the clock, 0.1 ms of CPU, no wait: other processes had the core.
    assert counted_seconds(0.003, before, ThreadUsage(1.0001, 7)) == pytest.approx(
        0.0001
    )
    # The same call with one wait (I/O, a lock, a sleep): its wall time.
    assert counted_seconds(0.003, before, ThreadUsage(1.0001, 8)) == 0.003
    # Never more than the wall time, and wall time where usage is unknown.
    assert counted_seconds(0.002, before, ThreadUsage(1.5, 7)) == 0.002
    assert counted_seconds(0.003, None, None) == 0.003


def test_a_call_that_sleeps_is_never_proven_short() -> None:
    policy = InlinePolicy(0.0005)

    class Sleeper:
        def run(self, call: PreparedCall) -> dict[str, Any]:  # noqa: ARG002
            time.sleep(0.002)  # waits: little CPU, a voluntary switch
            return {}

    runtime: Any = Sleeper()
    call = _call(1)
    for _ in range(PROVEN_CALLS + 1):
        policy.timed_run(runtime, call)(call)
    assert not policy.inline(runtime, call, None)


def test_thread_usage_counts_this_threads_cpu() -> None:
    before = thread_usage()
    if before is None:
        pytest.skip("no per-thread usage on this system")
    deadline = time.thread_time() + 0.02
    while time.thread_time() < deadline:
        pass
    after = thread_usage()
    assert after is not None
    assert after.cpu_seconds - before.cpu_seconds >= 0.015


def test_a_call_shorter_than_a_scheduler_tick_counts_its_cpu() -> None:
    # A model call computes without asking the kernel anything. getrusage's
    # per-thread CPU times then read no CPU at all for some 14% of 200 µs calls
    # (measured), so 200 of them would all but surely show one; the spin
    # watches the wall clock, which never updates the thread's accounting.
    if thread_usage() is None:
        pytest.skip("no per-thread usage on this system")
    for _ in range(200):
        before = thread_usage()
        deadline = time.perf_counter() + 0.0002
        while time.perf_counter() < deadline:
            pass
        after = thread_usage()
        assert before is not None and after is not None
        # Preemption may take most of the 200 µs, never all of the spin's CPU.
        assert after.cpu_seconds > before.cpu_seconds
