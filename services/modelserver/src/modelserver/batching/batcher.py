"""Asyncio batch queues: group concurrent requests, run each batch in a thread.

One :class:`BatchQueue` per (model, version, signature, outputs[, input shapes]);
all queues share ``num_batch_threads`` batch threads, as TF Serving's shared
batch scheduler does. A queue forms a batch as soon as a thread is free and
either ``max_batch_size`` rows wait or the oldest request has waited
``batch_timeout_micros``; with a timeout of 0 batches form naturally from the
requests that arrived while the previous batch ran. One departure from TF
Serving: while a model version has seen no concurrent requests for a second
(a lone client), nobody is likely to join a batch, so it runs at once instead
of waiting out the timeout; as soon as requests overlap, TF Serving's rules
apply again. A second departure, with ``batch_timeout_micros`` 0: the callers of
a batch that just finished usually send their next request at once (closed-loop
clients), so while fewer of them have come back than were answered, a free batch
thread waits for them, up to one recent batch's duration. Without this, clients
split into two halves whose batches alternate forever, and a model whose cost is
mostly per call (a scikit-learn pipeline) runs twice as many calls as needed.

The queue is bounded: when ``max_enqueued_batches * max_batch_size`` rows are
already waiting, a request is refused at once with :class:`Overloaded`
(UNAVAILABLE / 503) instead of waiting without end. A request with a deadline
is also refused at once when the batches ahead of it, at the recent pace, would
not finish before it (the latency budget is already lost; answering 503 now lets
the client retry elsewhere). Callers that give up are dropped from the queue
before their batch forms.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Gauge, Histogram

from modelserver.batching.merge import ShapeKey, merge_inputs, shape_key, split_outputs
from modelserver.errors import InternalError, InvalidInput, Overloaded, ServingError
from modelserver.observability.metrics import Metrics
from modelserver.runtimes.base import PreparedCall, Runtime
from modelserver.settings import BatchingSettings
from modelserver.threadpool import ThreadPool
from modelserver.types import Tensor

logger = logging.getLogger(__name__)

Outputs = dict[str, Tensor]
LONE_CLIENT_SECONDS = 1.0
QueueKey = tuple[str, str, str, tuple[str, ...], ShapeKey | None]


class InFlight(Protocol):
    """What the queue learns from the model version: requests under way on it."""

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered, queued ones included."""
        ...


@dataclass(slots=True)
class _Waiting:
    call: PreparedCall
    rows: int
    future: asyncio.Future[Outputs]
    enqueued_at: float


class BatchQueue:
    """Requests of one kind waiting to run together."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        version: InFlight,
        settings: BatchingSettings,
        threads: ThreadPool,
        batch_threads: asyncio.Semaphore,
        batch_size: Histogram,
        queue_depth: Gauge,
    ) -> None:
        self._runtime = runtime
        self._version = version
        self._settings = settings
        self._pool = threads
        self._batch_threads = batch_threads
        self._batch_size = batch_size
        self._queue_depth = queue_depth
        self._max_rows = settings.max_batch_size
        self._capacity_rows = settings.max_enqueued_batches * settings.max_batch_size
        self._timeout_seconds = settings.batch_timeout_micros / 1_000_000
        self._waiting: deque[_Waiting] = deque()
        self._waiting_rows = 0
        self._arrived = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._threads = settings.num_batch_threads
        # Until this loop time requests have recently overlapped on the version.
        self._concurrent_until = -math.inf
        # Recent wall time of one batch (exponential average), for shedding.
        self._batch_seconds: float | None = None
        # Callers answered since the last dispatch that have not sent again. Callers,
        # not rows: a front end that merges requests sends one call back whatever
        # its row count.
        self._returning = 0

    @property
    def waiting_rows(self) -> int:
        """Rows queued and not yet in a running batch."""
        return self._waiting_rows

    async def submit(
        self, call: PreparedCall, deadline: float | None = None
    ) -> Outputs:
        """Queue a call and wait for its share of the batch's outputs.

        ``deadline`` is in ``loop.time()`` seconds.

        Raises:
            InvalidInput: The call alone exceeds ``max_batch_size``.
            Overloaded: The queue is full, or the call would miss its deadline.
        """
        rows = call.batch_size or 0
        if rows > self._max_rows:
            raise InvalidInput(
                f"Task size {rows} is larger than maximum input batch size "
                f"{self._max_rows}"
            )
        if self._waiting_rows + rows > self._capacity_rows:
            raise Overloaded(
                "The batch scheduling queue to which this task was submitted is full"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and self._batch_seconds is not None:
            batches_ahead = math.ceil((self._waiting_rows + rows) / self._max_rows)
            rounds = math.ceil((batches_ahead + self._running) / self._threads)
            if now + rounds * self._batch_seconds > deadline:
                raise Overloaded(
                    "The batch queue is too long for this request's deadline: "
                    f"about {rounds * self._batch_seconds:.3f} s of batches are ahead"
                )
        future: asyncio.Future[Outputs] = loop.create_future()
        self._waiting.append(_Waiting(call, rows, future, now))
        self._waiting_rows += rows
        self._queue_depth.inc(rows)
        self._arrived.set()
        self._returning = max(0, self._returning - 1)
        if self._version.in_flight > 1:
            self._concurrent_until = now + LONE_CLIENT_SECONDS
        if self._scheduler is None:
            if not self._batch_threads.locked() and (
                self._waiting_rows >= self._max_rows
                or (self._timeout_seconds <= 0 and not self._returning)
            ):
                # A free thread and nothing to wait for: dispatch right here,
                # without a scheduler task (acquire() cannot suspend now).
                await self._batch_threads.acquire()
                batch = self._take_batch()
                if batch:
                    self._dispatch(batch)
                else:
                    self._batch_threads.release()
            if self._waiting and self._scheduler is None:
                self._scheduler = asyncio.create_task(self._schedule())
        return await future

    def _may_start_now(self) -> bool:
        return (
            self._timeout_seconds <= 0
            or self._waiting_rows >= self._max_rows
            or asyncio.get_running_loop().time() > self._concurrent_until
        )

    async def _schedule(self) -> None:
        try:
            while self._waiting:
                await self._batch_threads.acquire()
                try:
                    await self._wait_for_batch()
                    batch = self._take_batch()
                except BaseException:
                    self._batch_threads.release()
                    raise
                if not batch:
                    self._batch_threads.release()
                    continue
                self._dispatch(batch)
        finally:
            self._scheduler = None

    async def _wait_for_batch(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timeout_seconds <= 0:
            deadline = loop.time() + (self._batch_seconds or 0.0)
            while self._returning and self._waiting_rows < self._max_rows:
                if not await self._wait_for_arrival(deadline - loop.time()):
                    return
            return
        while self._waiting and not self._may_start_now():
            remaining = (
                self._waiting[0].enqueued_at + self._timeout_seconds - loop.time()
            )
            if not await self._wait_for_arrival(remaining):
                return

    async def _wait_for_arrival(self, seconds: float) -> bool:
        """Whether a request arrived within ``seconds``."""
        if seconds <= 0:
            return False
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _take_batch(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        batch_rows = 0
        while self._waiting:
            head = self._waiting[0]
            if head.future.done():  # the caller gave up
                self._dequeue()
                continue
            if batch and batch_rows + head.rows > self._max_rows:
                break
            self._dequeue()
            batch.append(head)
            batch_rows += head.rows
        return batch

    def _dequeue(self) -> None:
        item = self._waiting.popleft()
        self._waiting_rows -= item.rows
        self._queue_depth.dec(item.rows)

    def _dispatch(self, batch: list[_Waiting]) -> None:
        # A done-callback instead of an awaiting task: no task per batch.
        started = asyncio.get_running_loop().time()
        self._returning = 0
        self._running += 1
        self._idle.clear()
        finished = self._pool.run(self._run_batch, [item.call for item in batch])
        finished.add_done_callback(lambda done: self._finish(batch, done, started))

    def _finish(
        self,
        batch: list[_Waiting],
        done: asyncio.Future[list[Outputs]],
        started: float,
    ) -> None:
        self._running -= 1
        if not self._running:
            self._idle.set()
        self._batch_threads.release()
        try:
            parts = done.result()
        except ServingError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            logger.exception("Batch failed")
            self._fail(batch, InternalError(f"{type(exc).__name__}: {exc}"))
            return
        elapsed = asyncio.get_running_loop().time() - started
        self._batch_seconds = (
            elapsed
            if self._batch_seconds is None
            else 0.8 * self._batch_seconds + 0.2 * elapsed
        )
        for item, outputs in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(outputs)
                self._returning += 1

    @staticmethod
    def _fail(batch: list[_Waiting], error: ServingError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _run_batch(self, calls: list[PreparedCall]) -> list[Outputs]:
        # Runs in a batch thread: merging, the model and splitting are one hop.
        first = calls[0]
        merged, total = merge_inputs(
            [call.inputs for call in calls],
            allowed_batch_sizes=self._settings.allowed_batch_sizes,
            pad_variable_length=self._settings.pad_variable_length_inputs,
        )
        self._batch_size.observe(total)
        outputs = self._runtime.run(
            PreparedCall(first.signature_name, merged, first.output_keys, total)
        )
        return split_outputs(outputs, [call.batch_size or 0 for call in calls], total)

    async def close(self) -> None:
        """Fail whatever still waits and stop scheduling."""
        while self._waiting:
            item = self._waiting[0]
            self._dequeue()
            if not item.future.done():
                item.future.set_exception(Overloaded("The batch queue was closed"))
        if self._scheduler is not None:
            self._scheduler.cancel()
        await self._idle.wait()


class Batcher:
    """Every batch queue of the server and their shared batch threads."""

    def __init__(self, settings: BatchingSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._pool = ThreadPool(settings.num_batch_threads, settings.thread_pool_name)
        self._batch_threads = asyncio.Semaphore(settings.num_batch_threads)
        self._queues: dict[QueueKey, BatchQueue] = {}

    async def submit(
        self,
        name: str,
        version: str,
        runtime: Runtime,
        call: PreparedCall,
        in_flight: InFlight,
        deadline: float | None = None,
    ) -> Outputs:
        """Queue a call with others of its kind (``deadline`` in loop time).

        Raises:
            InvalidInput: The call alone exceeds ``max_batch_size``.
            Overloaded: Its queue is full or the call would miss its deadline.
        """
        key: QueueKey = (
            name,
            version,
            call.signature_name,
            call.output_keys,
            None
            if self._settings.pad_variable_length_inputs
            else shape_key(call.inputs),
        )
        queue = self._queues.get(key)
        if queue is None:
            queue = BatchQueue(
                runtime=runtime,
                version=in_flight,
                settings=self._settings,
                threads=self._pool,
                batch_threads=self._batch_threads,
                batch_size=self._metrics.batch_size.labels(
                    name, version, call.signature_name
                ),
                queue_depth=self._metrics.queue_depth.labels(
                    name, version, call.signature_name
                ),
            )
            self._queues[key] = queue
        return await queue.submit(call, deadline)

    async def close_version(self, name: str, version: str) -> None:
        """Drop the queues of a version that is being unloaded."""
        for key in [key for key in self._queues if key[:2] == (name, version)]:
            await self._queues.pop(key).close()

    async def close(self) -> None:
        """Close every queue and the batch threads."""
        for queue in list(self._queues.values()):
            await queue.close()
        self._queues.clear()
        await self._pool.close()
