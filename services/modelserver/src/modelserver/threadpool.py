"""Threads that run model calls off the event loop.

``loop.run_in_executor`` on a ``ThreadPoolExecutor`` hands a call over and back
through a ``concurrent.futures.Future``, its condition variable, a wrapping
asyncio future and two callback layers. For a lone client that cost shows: right
after an 18 ms scikit-learn call (caches cold) the round trip took about 150 µs,
against about 70 µs for what this pool does, one ``SimpleQueue.put`` to hand the
call over and one ``call_soon_threadsafe`` to settle an asyncio future.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

_Job = tuple[Callable[[Any], Any], Any, asyncio.AbstractEventLoop, asyncio.Future[Any]]


class ThreadPool:
    """``threads`` daemon threads fed from one queue, answering on the caller's loop.

    Args:
        threads: How many calls may run at once.
        name: Thread name prefix (shows in py-spy and thread dumps).
    """

    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{index}", daemon=True)
            for index in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    def run(self, function: Callable[[A], T], argument: A) -> asyncio.Future[T]:
        """Run ``function(argument)`` in a pool thread; must be called on a loop.

        Raises:
            RuntimeError: The pool is closed.
        """
        if self._closed:
            raise RuntimeError("The thread pool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, argument, loop, future))
        return future

    async def close(self) -> None:
        """Let queued calls finish, then stop the threads (joined off the loop)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            _run(job)
            # Dropped before blocking again, so a finished call's data is not kept.
            del job


def _run(job: _Job) -> None:
    function, argument, loop, future = job
    try:
        result = function(argument)
    except StopIteration as exc:
        # An asyncio future refuses StopIteration: set_exception raises TypeError
        # in the loop's callback and the caller would wait forever. It becomes a
        # RuntimeError, as PEP 479 does for one leaving a generator.
        error = RuntimeError(f"{_name(function)} raised StopIteration")
        error.__cause__ = exc
        _answer(loop, _set_exception, future, error)
    except BaseException as exc:  # whatever it is, the caller receives it
        _answer(loop, _set_exception, future, exc)
    else:
        _answer(loop, _set_result, future, result)


def _name(function: Callable[[Any], Any]) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


def _answer(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[asyncio.Future[Any], Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    try:
        loop.call_soon_threadsafe(settle, future, value)
    except RuntimeError:
        # The loop closed while the call ran: nobody is waiting any more.
        logger.debug("Dropped an answer: the event loop is closed")


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the caller may have given up (timeout, cancel)
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
