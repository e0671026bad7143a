"""The inference thread pool: answers, errors, callers that give up, closing."""

from __future__ import annotations

import asyncio
import threading

import pytest
from modelserver.threadpool import ThreadPool


def test_runs_off_the_loop_thread_and_answers() -> None:
    async def scenario() -> None:
        pool = ThreadPool(2, "test")
        loop_thread = threading.get_ident()
        try:
            ident = await pool.run(lambda _: threading.get_ident(), None)
            assert ident != loop_thread
            assert await pool.run(lambda x: x * 2, 21) == 42
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_an_exception_reaches_the_caller() -> None:
    def fail(message: str) -> None:
        raise ValueError(message)

    async def scenario() -> None:
        pool = ThreadPool(1, "test")
        try:
            with pytest.raises(ValueError, match="refused"):
                await pool.run(fail, "refused")
            # The thread survives the error.
            assert await pool.run(str, 7) == "7"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_stop_iteration_reaches_the_caller_as_a_runtime_error() -> None:
    # asyncio futures refuse StopIteration (set_exception raises TypeError in
    # the loop's callback), which used to leave the caller waiting forever. The
    # runtimes wrap a model's own errors, but the pool runs whatever it is given.
    def exhausted(items: list[int]) -> int:
        return next(iter(items))

    async def scenario() -> None:
        pool = ThreadPool(1, "test")
        try:
            # The bound only turns the old hang into a failure: the answer takes
            # one thread hop, so 10 s is far beyond any loaded machine's delay.
            async with asyncio.timeout(10):
                with pytest.raises(RuntimeError, match="StopIteration") as caught:
                    await pool.run(exhausted, [])
            assert isinstance(caught.value.__cause__, StopIteration)
            assert await pool.run(exhausted, [3]) == 3
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_does_not_break_the_pool() -> None:
    release = threading.Event()

    async def scenario() -> None:
        pool = ThreadPool(1, "test")
        try:
            slow = pool.run(lambda _: release.wait(5), None)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await slow
            release.set()
            assert slow.cancelled()
            assert await pool.run(lambda x: x + 1, 1) == 2
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_calls_run_concurrently_up_to_the_thread_count() -> None:
    barrier = threading.Barrier(3, timeout=5)

    async def scenario() -> None:
        pool = ThreadPool(3, "test")
        try:
            # Three calls that each wait for the others only finish if all run at once.
            answers = await asyncio.gather(
                *(pool.run(lambda _: barrier.wait(), None) for _ in range(3))
            )
            assert sorted(answers) == [0, 1, 2]
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_close_finishes_queued_calls_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        pool = ThreadPool(1, "test")
        gate = threading.Event()
        first = pool.run(lambda _: gate.wait(5), None)
        second = pool.run(lambda x: x, "queued")
        closing = asyncio.create_task(pool.close())
        await asyncio.sleep(0.01)
        assert not closing.done()
        gate.set()
        await closing
        assert await first is True
        assert await second == "queued"
        with pytest.raises(RuntimeError, match="closed"):
            pool.run(lambda x: x, 1)

    asyncio.run(scenario())
