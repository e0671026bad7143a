"""Coalescing of concurrent Predict calls into one backend call.

Each backend call costs both sides a fixed share of CPU (gRPC framing, the
servicer, the dataplane) whatever its size, and a model server batches what
reaches it anyway. So while a Predict for one model, version, signature and input
layout is in flight, further ones for the same key wait; when it returns, the
waiting requests go out as one call whose inputs are theirs concatenated along
the batch dimension, and each caller gets its own rows of the answer. A lone
request is sent at once. One wait is added on purpose: callers usually send
their next request as soon as they are answered, so when a call returns, the
requests that queued meanwhile are held until the callers just answered have
come back (or the rows or bytes fill a call, or one recent call's duration
passes).
Without it the callers split into two halves whose calls alternate for ever,
each half the size it could be.

This module is the async core: groups, waiting, dispatch, deadlines. What a
kind of request shares to merge and how it is merged, called and cut back is its
strategy's (`clients.strategies`: protos from gRPC callers, arrays from REST
callers whose JSON the gateway typed, REST bodies for the backend's REST API);
each kind merges only with its own kind and gets its own kind back.

A merged call holds at most ``max_rows`` rows, and no more tensor elements and
bytes than the backend accepts in one request (`clients.mergequeue`): waiting
callers join the next call in their order while every budget holds, and the
first that would pass one starts the call after it.

Correctness comes first:
- only requests whose inputs all share one leading (batch) dimension merge, and
  only with requests of the same model spec, output filter, dtypes and trailing
  dimensions;
- an answer whose outputs do not all lead with the merged batch size cannot be
  split: the callers are served one by one and the key is not merged again;
- if the merged call is refused as bad input (one caller's values, or a batch
  over the backend's limit: INVALID_ARGUMENT and kin, or HTTP 400 and 413),
  every caller is served on its own, so each gets its own answer or error; if
  they all succeed the merge was at fault and the key's row limit is halved;
- errors of the backend itself (unavailable, unknown model, deadline, or any
  other HTTP error status) are the same for everyone and are handed to every
  caller;
- each caller keeps its own deadline while waiting (504 when it passes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, overload

from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.logs import REQUEST_ID_HEADER

from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import ArrayRequest, ArrayResponse
from gateway.clients.backend import Metadata
from gateway.clients.batchkeys import Key
from gateway.clients.forwarded import ForwardedPredict
from gateway.clients.http import HttpAnswer
from gateway.clients.mergequeue import Budget, Group, Waiter
from gateway.clients.restbatch import RestPredict
from gateway.clients.strategies import (
    Parts,
    Separately,
    Shared,
    Strategy,
    Unsplittable,
    merged_keep_from,
)
from gateway.errors import DeadlineExceeded, GatewayError

logger = logging.getLogger(__name__)

Request = messages.PredictRequest | ArrayRequest | ForwardedPredict
"""A Predict for the backend's gRPC API."""
Response = messages.PredictResponse | ArrayResponse | ReceivedAnswer
AnyRequest = Request | RestPredict
AnyResponse = Response | HttpAnswer

_SWEEP_AT = 64
"""Groups kept before idle ones are looked for and dropped."""


class Coalescer:
    """Predict calls merged per key while one is in flight.

    Args:
        strategies: which strategy serves each request type.
        observe_callers: told how many callers each backend call served.
        max_rows: most rows in one merged call (0 or 1: never merge).
        max_elements: most tensor elements in one merged call (the backend's
            request limit; a lone call is the caller's own, checked against it
            before).
        max_bytes: most tensor bytes in one merged call, likewise.
        max_in_flight: calls of one key at once before further ones wait.
    """

    def __init__(
        self,
        strategies: dict[type, Strategy[Any, Any]],
        observe_callers: Callable[[int], None],
        *,
        max_rows: int,
        max_elements: int,
        max_bytes: int,
        max_in_flight: int,
    ) -> None:
        self._strategies = strategies
        self._observe_callers = observe_callers
        self._max_rows = max_rows
        self._budget = Budget(max_elements, max_bytes)
        self._max_in_flight = max(1, max_in_flight)
        self._groups: dict[Key, Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def merges(self) -> bool:
        """Whether requests may be merged at all (callers skip preparing them
        when not)."""
        return self._max_rows > 1

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest,
        deadline: float,
        metadata: Metadata,
        keep_from: None = None,
    ) -> messages.PredictResponse: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest | ForwardedPredict,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.PredictResponse | ReceivedAnswer: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: ArrayRequest,
        deadline: float,
        metadata: Metadata,
    ) -> ArrayResponse: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: RestPredict,
        deadline: float,
        metadata: Metadata,
    ) -> HttpAnswer: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: Request,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Response: ...

    async def predict(
        self,
        addresses: Sequence[str],
        request: AnyRequest,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> AnyResponse:
        """The backend's answer to `request`, possibly from a merged call; of the
        request's kind (an `ArrayResponse` for an `ArrayRequest`, an `HttpAnswer`
        of any status for a `RestPredict`). A `PredictRequest`'s answer of
        ``keep_from`` bytes or more comes back as its bytes (a `ReceivedAnswer`),
        and so does its share of a merged answer that large (cut off the loop).

        Raises:
            GatewayError: as `BackendClient.predict`; DeadlineExceeded when the
                deadline passes while waiting; InvalidInput when arrays cannot
                be encoded.
            ProtocolError: the backend's answer cannot be decoded into arrays.
        """
        strategy = self._strategies[type(request)]
        answer: AnyResponse = await self.submit(
            strategy, addresses, request, deadline, metadata, keep_from
        )
        return answer

    async def submit(
        self,
        strategy: Strategy[Any, Any],
        addresses: Sequence[str],
        request: Any,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Any:
        """`predict` with the strategy named: the async core.

        Raises:
            GatewayError, ProtocolError: as the strategy's calls raise them;
                DeadlineExceeded when the deadline passes while waiting.
        """
        keyed = strategy.key(request) if self.merges else None
        if keyed is None:
            return await strategy.call(
                addresses, request, deadline, metadata, keep_from
            )
        strategy_key, rows, nbytes, elements = keyed
        key = (id(strategy), tuple(addresses), *strategy_key)
        group = self._groups.get(key)
        limit = self._max_rows if group is None else group.max_rows
        if limit <= 1 or rows >= limit:
            return await strategy.call(
                addresses, request, deadline, metadata, keep_from
            )
        now = time.monotonic()
        if group is None:
            if len(self._groups) >= _SWEEP_AT:
                self._forget_idle(now)
            group = Group(key, strategy, tuple(addresses), self._max_rows)
            self._groups[key] = group
        group.arrived(now)
        if (
            group.in_flight < self._max_in_flight
            and not group.waiting
            and not group.returning
        ):
            group.in_flight += 1
            try:
                return await strategy.call(
                    addresses, request, deadline, metadata, keep_from
                )
            finally:
                group.answered(1, now)
                self._release(group)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        group.append(
            Waiter(
                request, rows, nbytes, elements, deadline, metadata, future, keep_from
            )
        )
        self._dispatch(group)
        # A timer on the future itself: asyncio.wait_for wraps it in more
        # futures and callbacks, a visible cost on every merged request.
        timer = loop.call_later(deadline - now, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _dispatch(self, group: Group) -> None:
        """Send what waits, as merged calls, while the key has room in flight
        and no answered caller is still expected."""
        while group.in_flight < self._max_in_flight and group.waiting:
            if group.returning and not group.fills_a_call(self._budget):
                wait = group.returning_until - time.monotonic()
                if wait > 0:
                    if group.hold is None:
                        group.hold = asyncio.get_running_loop().call_later(
                            wait, self._end_hold, group
                        )
                    return
            if group.hold is not None:
                group.hold.cancel()
                group.hold = None
            group.returning = 0
            batch = group.next_call(self._budget)
            if not batch:
                return
            group.in_flight += 1
            task = asyncio.create_task(self._serve(group, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _end_hold(self, group: Group) -> None:
        group.hold = None
        group.returning = 0
        self._dispatch(group)

    def _forget_idle(self, now: float) -> None:
        for key, group in list(self._groups.items()):
            if self._forgettable(group, now):
                del self._groups[key]

    def _forgettable(self, group: Group, now: float) -> bool:
        """Idle, and with nothing to remember (its row limit is the default)."""
        return group.idle(now) and group.max_rows == self._max_rows

    async def _serve(self, group: Group, batch: list[Waiter]) -> None:
        started = time.monotonic()
        try:
            self._observe_callers(len(batch))
            if len(batch) == 1:
                await self._one(group, batch[0])
            else:
                await self._merged(group, batch)
        except Exception:  # a bug here must not strand the waiters
            logger.exception("coalesced predict failed")
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_exception(
                        GatewayError("internal error while merging requests")
                    )
        finally:
            group.answered(len(batch), started)
            self._release(group)

    def _release(self, group: Group) -> None:
        """One call of the group ended: send what waits, forget an idle group."""
        group.in_flight -= 1
        self._dispatch(group)
        if self._forgettable(group, time.monotonic()):
            self._groups.pop(group.key, None)

    async def _one(self, group: Group, waiter: Waiter) -> bool:
        """Serve one caller on its own; True when it got a successful answer."""
        try:
            response = await group.strategy.call(
                group.addresses,
                waiter.request,
                waiter.deadline,
                waiter.metadata,
                waiter.keep_from,
            )
        except (GatewayError, ProtocolError) as exc:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            return False
        if not waiter.future.done():
            waiter.future.set_result(response)
        return group.strategy.succeeded(response)

    async def _one_by_one(self, group: Group, batch: list[Waiter]) -> bool:
        results = await asyncio.gather(*(self._one(group, w) for w in batch))
        return all(results)

    async def _merged(self, group: Group, batch: list[Waiter]) -> None:
        rows = [waiter.rows for waiter in batch]
        try:
            outcome = await group.strategy.call_merged(
                group.addresses,
                [waiter.request for waiter in batch],
                rows,
                *_merged_call(batch),
                merged_keep_from([waiter.keep_from for waiter in batch]),
            )
        except GatewayError as exc:
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            return
        if isinstance(outcome, Parts):
            for waiter, part in zip(batch, outcome.answers, strict=True):
                if not waiter.future.done():
                    waiter.future.set_result(part)
        elif isinstance(outcome, Shared):
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_result(outcome.answer)
        elif isinstance(outcome, Unsplittable):
            group.max_rows = 1
            logger.info(
                "%s answers without a batch dimension; not merging it again",
                outcome.what,
            )
            await self._one_by_one(group, batch)
        elif isinstance(outcome, Separately):
            await self._separate(group, batch, outcome)

    async def _separate(
        self, group: Group, batch: list[Waiter], outcome: Separately
    ) -> None:
        """Serve a refused merge's callers one by one; if they all succeed and the
        merge is to blame, halve the key's row limit."""
        if await self._one_by_one(group, batch) and outcome.blame_merge:
            group.max_rows = max(1, sum(w.rows for w in batch) // 2)
            logger.info(
                "merged predict of %d rows refused (%s); merging at most %d",
                sum(w.rows for w in batch),
                outcome.reason,
                group.max_rows,
            )


def _merged_call(batch: Sequence[Waiter]) -> tuple[float, Metadata]:
    """Deadline and metadata of a merged call: the latest deadline, and every
    caller's request id."""
    ids = ",".join(
        value
        for waiter in batch
        for key, value in waiter.metadata
        if key == REQUEST_ID_HEADER
    )
    return max(waiter.deadline for waiter in batch), ((REQUEST_ID_HEADER, ids),)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceeded("deadline exceeded waiting for a backend call")
        )
