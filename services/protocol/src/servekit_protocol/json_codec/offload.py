"""Large JSON bodies parsed in worker processes, so that one never stalls the
event loop.

orjson and the conversion of the parsed lists to arrays hold the GIL for the
whole body (a 21 MiB ``:predict`` body takes about 0.7 s on a loaded 2-core
machine), so a thread would stall the event loop as long as parsing in place
does. Bodies of ``threshold_bytes`` and more go to a small process pool instead;
smaller ones are parsed in place, where they cost less than the round trip
(about 30 ms a MiB in place on that machine, hence the 1 MiB default).

The pool starts with the first large body, its processes with the ``spawn``
method so that none inherits the threads or locks of the running server. What
runs there must be a module-level function whose arguments, result and errors
pickle (:func:`~servekit_protocol.json_codec.parse_predict_request` and its
kin do): its :class:`~servekit_protocol.errors.ProtocolError` comes back as the
same error.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from http import HTTPStatus
from typing import Any, TypeVar

from servekit_protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD_BYTES = 1024 * 1024
"""Body size from which parsing leaves the event loop."""
DEFAULT_WORKERS = 2
"""Worker processes parsing large bodies at the same time."""

Result = TypeVar("Result")


class ParserUnavailable(ProtocolError):
    """A worker died while parsing a body (killed, out of memory)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class BodyParsers:
    """Runs body parsing in place or in worker processes, by body size.

    Args:
        threshold_bytes: Bodies this large or larger are parsed in a worker.
        workers: Most worker processes.
    """

    def __init__(
        self,
        threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if threshold_bytes <= 0 or workers <= 0:
            raise ValueError("threshold_bytes and workers must be positive")
        self.threshold_bytes = threshold_bytes
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

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
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        pool = self._pool
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
                "The request body could not be parsed: its worker stopped"
            ) from exc

    def close(self) -> None:
        """Stop the workers (queued parses are cancelled)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
