"""Large JSON bodies parsed, and large answers written, in worker processes, so
that neither stalls the event loop.

orjson and the conversion of the parsed lists to arrays hold the GIL for the
whole body (a 21 MiB ``:predict`` body takes about 0.7 s on a loaded 2-core
machine), so a thread would stall the event loop as long as parsing in place
does. Bodies of ``threshold_bytes`` and more go to a small process pool instead;
smaller ones are parsed in place, where they cost less than the round trip
(about 30 ms a MiB in place on that machine, hence the 1 MiB default).

Answers are the same: orjson writes an array's JSON with the GIL held (about
0.14 µs an element for one output on that machine, 2 µs for the rows of several
outputs, which become one object each), so an answer of ``answer_threshold_elements``
elements and more is written in a worker: the arrays travel there pickled (a
copy of their buffers) and the JSON comes back as bytes.

The pool is started by :meth:`BodyParsers.start` (the servers call it as they
start, and give no readiness signal before :meth:`BodyParsers.wait_started`, so
the first large body does not wait for the workers' start-up, about 2.6 s on
that machine) or else with the first large body, its processes with
the ``spawn`` method so that none inherits the threads or locks of the running
server. What runs there must be a module-level function whose arguments,
result and errors pickle (:func:`~servekit_protocol.json_codec.parse_predict_request`,
:func:`~servekit_protocol.json_codec.format_predict_response` and their kin do):
its :class:`~servekit_protocol.errors.ProtocolError` comes back as the same
error.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

from servekit_protocol import segments
from servekit_protocol.descriptors import Descriptors
from servekit_protocol.errors import ProtocolError
from servekit_protocol.json_codec import parent_watch

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD_BYTES = 1024 * 1024
"""Body size from which parsing leaves the event loop."""
DEFAULT_WORKERS = 2
"""Worker processes parsing large bodies at the same time."""
DEFAULT_ANSWER_THRESHOLD_ELEMENTS = 16_384
"""Elements of an answer's tensors from which its JSON is written in a worker:
in place, the slowest shape (rows of several outputs) takes about 35 ms at this
size on a loaded 2-core machine, one output about 3 ms."""
DEFAULT_START_TIMEOUT_SECONDS = 60.0
"""How long a server waits for its workers' start before it gives up starting
(they take 1-7 s on a loaded 2-core machine)."""

Result = TypeVar("Result")
_Sent = TypeVar("_Sent", covariant=True)


class ParserUnavailable(ProtocolError):
    """A worker died while parsing a body (killed, out of memory)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class _SentBack(Protocol[_Sent]):
    def received(self) -> _Sent: ...


async def received_from_worker(sent: _SentBack[_Sent], failure: str) -> _Sent:
    """What a worker sent back through a pipe of its own (``received``, which
    blocks, run in a thread).

    Raises:
        ParserUnavailable: ``failure``: the pipe ended early (the worker died).
    """
    try:
        return await asyncio.to_thread(sent.received)
    except OSError as exc:
        raise ParserUnavailable(failure) from exc


class WorkersNotStarted(RuntimeError):
    """The worker processes did not start in time, or died starting."""


class BodyParsers:
    """Runs body parsing in place or in worker processes, by body size.

    Args:
        threshold_bytes: Bodies this large or larger are parsed in a worker.
        workers: Most worker processes.
        answer_threshold_elements: Answers with this many tensor elements or
            more are written in a worker.
        segment_dir: The folder of the shared memory segments through which
            large bodies, messages and answers cross to and from the workers
            (:mod:`servekit_protocol.segments`); by default
            :func:`~servekit_protocol.segments.default_directory`.
    """

    def __init__(
        self,
        threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
        workers: int = DEFAULT_WORKERS,
        answer_threshold_elements: int = DEFAULT_ANSWER_THRESHOLD_ELEMENTS,
        segment_dir: str | None = None,
    ) -> None:
        if threshold_bytes <= 0 or workers <= 0 or answer_threshold_elements <= 0:
            raise ValueError(
                "threshold_bytes, workers and answer_threshold_elements must be "
                "positive"
            )
        self.threshold_bytes = threshold_bytes
        self.workers = workers
        self.answer_threshold_elements = answer_threshold_elements
        self.segment_dir = (
            segments.default_directory() if segment_dir is None else segment_dir
        )
        self._pool: ProcessPoolExecutor | None = None
        self._starting: list[Future[None]] = []
        self.descriptors = Descriptors()
        """The table the workers take their calls' pipe ends from (where
        shared memory has no room); closed with the workers."""

    def start(self, preload: Sequence[str] = ()) -> None:
        """Start the worker processes in the background: this returns once they
        are launched, before they have imported anything. Each imports the
        modules named in ``preload`` (those of the functions it will run, and of
        their arguments), so that the first body does not wait for that either,
        and holds them until :meth:`close` (about 40 MB resident with orjson
        and numpy alone).
        """
        pool = self._running_pool()
        # One task per worker makes the pool launch them all now.
        self._starting = [
            pool.submit(_preload, tuple(preload)) for _ in range(self.workers)
        ]

    @property
    def started(self) -> bool:
        """Whether the pool has answered the tasks :meth:`start` gave it (true
        when it was not started: the first large body starts it)."""
        return all(
            future.done() and not future.cancelled() and future.exception() is None
            for future in self._starting
        )

    async def wait_started(self, timeout: float) -> None:
        """Wait until the pool has answered the tasks :meth:`start` gave it: its
        workers have launched and imported what they run. Logs the wait's start
        and end (``JSON workers starting``, ``JSON workers ready``).

        Raises:
            WorkersNotStarted: Not within ``timeout`` seconds, or a worker died
                while starting.
        """
        if not self._starting:
            return
        began = time.monotonic()
        logger.info("JSON workers starting", extra={"workers": self.workers})
        # asyncio.wait, not wait_for: a timeout must not cancel the start.
        done, pending = await asyncio.wait(
            [asyncio.wrap_future(future) for future in self._starting],
            timeout=timeout,
        )
        if pending:
            raise WorkersNotStarted(
                f"the JSON workers did not start within {timeout:g} s"
            )
        for future in done:
            try:
                future.result()
            except Exception as exc:
                raise WorkersNotStarted(
                    f"a JSON worker failed to start: {exc!r}"
                ) from exc
        logger.info(
            "JSON workers ready",
            extra={
                "workers": self.workers,
                "seconds": round(time.monotonic() - began, 3),
            },
        )

    async def run(
        self, size: int, function: Callable[..., Result], *args: Any
    ) -> Result:
        """``function(*args)``: in place for a body of ``size`` bytes under the
        threshold, in a worker process otherwise.

        Raises:
            ProtocolError: What ``function`` raises; :class:`ParserUnavailable`
                when the worker died.
        """
        if size < self.threshold_bytes:
            return function(*args)
        return await self._in_worker(function, *args)

    async def write_answer(
        self, elements: int, function: Callable[..., Result], *args: Any
    ) -> Result:
        """``function(*args)``, writing an answer of ``elements`` tensor
        elements: in place under the answer threshold, in a worker otherwise.

        Raises:
            ProtocolError: What ``function`` raises; :class:`ParserUnavailable`
                when the worker died.
        """
        if elements < self.answer_threshold_elements:
            return function(*args)
        return await self._in_worker(function, *args)

    async def in_worker(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in a worker process, whatever its size (callers
        with thresholds of their own: gRPC messages).

        Raises:
            ProtocolError: What ``function`` raises; :class:`ParserUnavailable`
                when the worker died.
        """
        return await self._in_worker(function, *args)

    def _running_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_prepare_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def _in_worker(self, function: Callable[..., Result], *args: Any) -> Result:
        pool = self._running_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, function, *args
            )
        except BrokenProcessPool as exc:
            # Every later call would fail the same way: the next one starts
            # a fresh pool.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            logger.error("A body parsing worker died: %s", exc)
            raise ParserUnavailable(
                "The JSON body could not be handled: its worker stopped"
            ) from exc

    def close(self) -> None:
        """Stop the workers (queued parses are cancelled) and close the
        descriptor table (blocks briefly while its thread ends)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.descriptors.close()


def _prepare_worker(server_pid: int) -> None:
    """Leave Ctrl-C to the server: a terminal sends SIGINT to the whole process
    group, and a worker would die of it with a traceback while the server
    drains. The server ends its workers itself (:meth:`BodyParsers.close`);
    when it cannot (killed), the worker ends itself
    (:func:`~servekit_protocol.json_codec.parent_watch.watch_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_watch.watch_parent(server_pid)


def _preload(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in the worker running it."""
    for name in modules:
        importlib.import_module(name)
