"""The coalescer's async core, driven by a strategy of plain lists.

The strategy below stands for a backend whose calls the test holds open and
releases, so each test decides what is in flight when the next request comes. A
request is a list of numbers (one row each, of ``ROW_BYTES``); the answer doubles
every number; a negative number is a value the backend refuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import pytest
from gateway.clients.backend import Metadata
from gateway.clients.batchkeys import Keyed
from gateway.clients.coalescer import Coalescer
from gateway.clients.strategies import (
    Merged,
    Parts,
    Separately,
    Shared,
    Strategy,
    Unsplittable,
)
from gateway.errors import BackendError, BackendUnavailable, DeadlineExceeded

Rows = tuple[float, ...]
ADDRESSES = ("127.0.0.1:8500",)
NO_METADATA: Metadata = ()
ROW_BYTES = 8
"""A row's tensor bytes (one float64, one element)."""


def refused(values: Sequence[float]) -> BackendError:
    return BackendError(
        f"negative value in {list(values)}", grpc.StatusCode.INVALID_ARGUMENT
    )


@dataclass
class ListStrategy:
    """Lists of numbers, merged by concatenation, answered doubled."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    """Calls wait for it: the test holds the backend busy until it sets it."""
    singles: list[Rows] = field(default_factory=list)
    merged: list[list[Rows]] = field(default_factory=list)
    calls: list[tuple[tuple[str, ...], float, Metadata]] = field(default_factory=list)
    """Every call's addresses, deadline and metadata, merged or not."""
    merged_kept_from: list[int | None] = field(default_factory=list)
    """Each merged call's ``keep_from``."""
    max_merged_rows: int | None = None
    """Above this the backend refuses a merged call as too big."""
    unsplittable: bool = False
    shared_status: int | None = None
    down: bool = False

    def key(self, request: Rows) -> Keyed | None:
        if not request:
            return None
        return Keyed(("lists",), len(request), ROW_BYTES * len(request), len(request))

    async def call(
        self,
        addresses: Sequence[str],
        request: Rows,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,  # noqa: ARG002 (rows are never kept)
    ) -> Rows:
        self.singles.append(request)
        self.calls.append((tuple(addresses), deadline, metadata))
        await self.open.wait()
        if any(value < 0 for value in request):
            raise refused(request)
        return tuple(2 * value for value in request)

    async def call_merged(
        self,
        addresses: Sequence[str],
        requests: Sequence[Rows],
        rows: Sequence[int],
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Merged[Rows]:
        self.merged.append(list(requests))
        self.merged_kept_from.append(keep_from)
        self.calls.append((tuple(addresses), deadline, metadata))
        await self.open.wait()
        if self.down:
            raise BackendUnavailable("backend is down")
        if self.shared_status is not None:
            return Shared((float(self.shared_status),))
        values = [value for request in requests for value in request]
        if any(value < 0 for value in values):
            return Separately(refused(values).message, blame_merge=True)
        if self.max_merged_rows is not None and sum(rows) > self.max_merged_rows:
            return Separately("batch too big", blame_merge=True)
        if self.unsplittable:
            return Unsplittable("lists")
        return Parts([tuple(2 * value for value in request) for request in requests])

    def succeeded(self, response: Rows) -> bool:
        return all(value >= 0 for value in response)


@dataclass
class Core:
    coalescer: Coalescer
    strategy: ListStrategy
    callers: list[int]

    def submit(
        self,
        request: Rows,
        *,
        strategy: Strategy[Rows, Rows] | None = None,
        addresses: Sequence[str] = ADDRESSES,
        timeout: float = 5.0,
        request_id: str = "",
        keep_from: int | None = None,
    ) -> asyncio.Task[Rows]:
        metadata = (("x-request-id", request_id),) if request_id else NO_METADATA

        async def run() -> Rows:
            answer: Rows = await self.coalescer.submit(
                strategy or self.strategy,
                addresses,
                request,
                time.monotonic() + timeout,
                metadata,
                keep_from,
            )
            return answer

        return asyncio.create_task(run())


def core(
    max_rows: int = 64,
    max_in_flight: int = 1,
    max_bytes: int = 1 << 20,
    max_elements: int = 1 << 20,
) -> Core:
    strategy = ListStrategy()
    callers: list[int] = []
    coalescer = Coalescer(
        {tuple: strategy},
        callers.append,
        max_rows=max_rows,
        max_elements=max_elements,
        max_bytes=max_bytes,
        max_in_flight=max_in_flight,
    )
    return Core(coalescer, strategy, callers)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def quiet(started: float) -> None:
    """Wait until the callers answered so far are no longer expected back: the
    core expects them for one recent call's duration, never more than the time
    since `started`."""
    await asyncio.sleep(time.monotonic() - started)


async def busy_then_queue(
    tested: Core, *queued: Rows
) -> tuple[asyncio.Task[Rows], list[asyncio.Task[Rows]]]:
    """One request in flight (held), then `queued` arriving behind it."""
    first = tested.submit((0.5,))
    await settle()
    waiting = [tested.submit(request) for request in queued]
    await settle()
    return first, waiting


async def test_a_lone_request_is_sent_at_once_and_alone() -> None:
    tested = core()
    tested.strategy.open.set()
    assert await tested.submit((1.0, 2.0)) == (2.0, 4.0)
    assert tested.strategy.singles == [(1.0, 2.0)]
    assert tested.strategy.merged == []


async def test_requests_behind_a_call_in_flight_go_as_one_merged_call() -> None:
    tested = core()
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0, 3.0), (4.0,))
    # Nothing more goes out while the first call holds the key's only slot.
    assert tested.strategy.singles == [(0.5,)]
    assert tested.strategy.merged == []
    tested.strategy.open.set()
    assert await first == (1.0,)
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0, 6.0), (8.0,)]
    assert tested.strategy.merged == [[(1.0,), (2.0, 3.0), (4.0,)]]
    assert tested.callers == [3]


async def test_queued_requests_wait_for_the_answered_caller_to_send_again() -> None:
    tested = core()
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    # The call lasts 0.5 s, so the answered caller is expected back for about as
    # long; it sends again after a few loop turns, far inside that even on a
    # loaded machine (no I/O in between).
    await asyncio.sleep(0.5)
    tested.strategy.open.set()
    assert await first == (1.0,)
    await settle()
    assert tested.strategy.merged == []
    again = tested.submit((3.0,))
    assert await asyncio.gather(*waiting, again) == [(2.0,), (4.0,), (6.0,)]
    # One call for all three: sending the queue at once would have left the
    # answered caller to a call of its own.
    assert tested.strategy.merged == [[(1.0,), (2.0,), (3.0,)]]
    assert tested.callers == [3]


async def test_merged_calls_hold_at_most_the_byte_budget() -> None:
    tested = core(max_bytes=3 * ROW_BYTES)
    queued = [(1.0,), (2.0, 3.0), (4.0,), (5.0,), (6.0, 7.0, 8.0)]
    first, waiting = await busy_then_queue(tested, *queued)
    tested.strategy.open.set()
    await first
    answers = await asyncio.gather(*waiting)
    assert answers == [tuple(2 * value for value in rows) for rows in queued]
    # The callers that fit merge; the first that would pass the budget starts
    # the next call, in their order (the rows alone would have made one call).
    assert tested.strategy.merged == [[(1.0,), (2.0, 3.0)], [(4.0,), (5.0,)]]
    assert tested.strategy.singles == [(0.5,), (6.0, 7.0, 8.0)]
    assert tested.callers == [2, 2, 1]


async def test_merged_calls_hold_at_most_the_element_budget() -> None:
    # Bytes and rows to spare: only the elements bound the merge.
    tested = core(max_elements=3)
    queued = [(1.0,), (2.0, 3.0), (4.0,), (5.0,), (6.0, 7.0, 8.0)]
    first, waiting = await busy_then_queue(tested, *queued)
    tested.strategy.open.set()
    await first
    answers = await asyncio.gather(*waiting)
    assert answers == [tuple(2 * value for value in rows) for rows in queued]
    assert tested.strategy.merged == [[(1.0,), (2.0, 3.0)], [(4.0,), (5.0,)]]
    assert tested.strategy.singles == [(0.5,), (6.0, 7.0, 8.0)]
    assert tested.callers == [2, 2, 1]


async def test_queued_requests_that_fill_the_element_budget_go_without_waiting() -> (
    None
):
    tested = core(max_elements=2)
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    # As in the test below of the byte budget: the queue fills a call, so the
    # answered caller, expected back for about 0.5 s, is not waited for.
    await asyncio.sleep(0.5)
    tested.strategy.open.set()
    assert await first == (1.0,)
    await settle()
    assert tested.strategy.merged == [[(1.0,), (2.0,)]]
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0,)]


async def test_queued_requests_that_fill_the_byte_budget_go_without_waiting() -> None:
    tested = core(max_bytes=2 * ROW_BYTES)
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    # As in the test above of waiting for the answered caller, it would be
    # expected back for about 0.5 s; the queue fills a call, so none is waited.
    await asyncio.sleep(0.5)
    tested.strategy.open.set()
    assert await first == (1.0,)
    await settle()
    assert tested.strategy.merged == [[(1.0,), (2.0,)]]
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0,)]


async def test_a_request_over_the_byte_budget_alone_is_still_sent() -> None:
    tested = core(max_bytes=ROW_BYTES)
    first, waiting = await busy_then_queue(tested, (1.0, 2.0), (3.0,))
    tested.strategy.open.set()
    await first
    assert await asyncio.gather(*waiting) == [(2.0, 4.0), (6.0,)]
    assert tested.strategy.merged == []
    assert tested.strategy.singles == [(0.5,), (1.0, 2.0), (3.0,)]


async def test_a_merged_call_carries_every_request_id_and_the_latest_deadline() -> None:
    tested = core()
    first = tested.submit((0.5,), request_id="first")
    await settle()
    waiting = [
        tested.submit((1.0,), request_id="a", timeout=20.0),
        tested.submit((2.0,), request_id="b", timeout=10.0),
    ]
    await settle()
    tested.strategy.open.set()
    await asyncio.gather(first, *waiting)
    addresses, deadline, metadata = tested.strategy.calls[-1]
    assert tested.strategy.merged == [[(1.0,), (2.0,)]]
    assert addresses == ADDRESSES
    assert metadata == (("x-request-id", "a,b"),)
    assert deadline > time.monotonic() + 15.0


async def test_a_caller_whose_deadline_passes_while_waiting_gets_504_alone() -> None:
    tested = core()
    first = tested.submit((0.5,))
    await settle()
    hasty = tested.submit((1.0,), timeout=0.05)
    patient = tested.submit((2.0,))
    with pytest.raises(DeadlineExceeded):
        await hasty
    tested.strategy.open.set()
    assert await first == (1.0,)
    assert await patient == (4.0,)
    # The expired caller was dropped from the batch before it went out.
    assert tested.strategy.singles == [(0.5,), (2.0,)]


async def test_a_refused_merge_serves_each_caller_with_its_own_answer() -> None:
    started = time.monotonic()
    tested = core()
    first, waiting = await busy_then_queue(tested, (1.0,), (-1.0,), (3.0,))
    tested.strategy.open.set()
    await first
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[0] == (2.0,)
    assert isinstance(results[1], BackendError)
    assert results[1].grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    assert results[2] == (6.0,)
    # One caller's bad value is not the merge's fault: merging goes on as before.
    assert tested.strategy.singles[1:] == [(1.0,), (-1.0,), (3.0,)]
    await quiet(started)
    tested.strategy.open.clear()
    first, again = await busy_then_queue(tested, (1.0,), (2.0,), (3.0,))
    tested.strategy.open.set()
    await asyncio.gather(first, *again)
    assert tested.strategy.merged[-1] == [(1.0,), (2.0,), (3.0,)]


async def test_a_merge_refused_as_too_big_halves_the_keys_row_limit() -> None:
    started = time.monotonic()
    tested = core()
    tested.strategy.max_merged_rows = 2
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,), (3.0,), (4.0,))
    tested.strategy.open.set()
    await first
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0,), (6.0,), (8.0,)]
    # Every caller succeeded alone, so the merge of 4 rows was at fault: at most 2.
    tested.strategy.merged.clear()
    await quiet(started)
    tested.strategy.open.clear()
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,), (3.0,), (4.0,))
    tested.strategy.open.set()
    await asyncio.gather(first, *waiting)
    assert [len(batch) for batch in tested.strategy.merged] == [2, 2]


async def test_an_answer_without_the_batch_dimension_stops_merging_the_key() -> None:
    started = time.monotonic()
    tested = core()
    tested.strategy.unsplittable = True
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    tested.strategy.open.set()
    await first
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0,)]
    assert len(tested.strategy.merged) == 1
    await quiet(started)
    tested.strategy.open.clear()
    first, waiting = await busy_then_queue(tested, (3.0,), (4.0,))
    tested.strategy.open.set()
    assert await asyncio.gather(first, *waiting) == [(1.0,), (6.0,), (8.0,)]
    assert len(tested.strategy.merged) == 1
    assert tested.strategy.singles[-3:] == [(0.5,), (3.0,), (4.0,)]


async def test_an_error_of_the_backend_itself_reaches_every_caller() -> None:
    tested = core()
    tested.strategy.down = True
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    tested.strategy.open.set()
    await first
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, BackendUnavailable) for result in results)
    assert tested.strategy.singles == [(0.5,)]


async def test_a_shared_answer_is_handed_to_every_caller() -> None:
    tested = core()
    tested.strategy.shared_status = 404
    first, waiting = await busy_then_queue(tested, (1.0,), (2.0,))
    tested.strategy.open.set()
    await first
    assert await asyncio.gather(*waiting) == [(404.0,), (404.0,)]


async def test_other_addresses_or_strategies_never_share_a_call() -> None:
    tested = core()
    other = ListStrategy(open=tested.strategy.open)
    first = tested.submit((0.5,))
    await settle()
    elsewhere = tested.submit((1.0,), addresses=("127.0.0.1:9500",))
    other_kind = tested.submit((2.0,), strategy=other)
    await settle()
    # Both went out at once on their own keys, not behind the busy one.
    assert tested.strategy.singles == [(0.5,), (1.0,)]
    assert other.singles == [(2.0,)]
    tested.strategy.open.set()
    assert await asyncio.gather(first, elsewhere, other_kind) == [
        (1.0,),
        (2.0,),
        (4.0,),
    ]


async def test_calls_in_flight_per_key_are_bounded_by_max_in_flight() -> None:
    tested = core(max_in_flight=2)
    first = tested.submit((0.5,))
    second = tested.submit((0.25,))
    await settle()
    third = tested.submit((1.0,))
    await settle()
    assert tested.strategy.singles == [(0.5,), (0.25,)]
    tested.strategy.open.set()
    assert await asyncio.gather(first, second, third) == [(1.0,), (0.5,), (2.0,)]


async def test_requests_that_fill_a_call_or_cannot_merge_go_alone() -> None:
    tested = core(max_rows=4)
    first = tested.submit((0.5,))
    await settle()
    full = tested.submit((1.0, 1.0, 1.0, 1.0))
    unkeyed = tested.submit(())
    await settle()
    assert tested.strategy.singles == [(0.5,), (1.0, 1.0, 1.0, 1.0), ()]
    tested.strategy.open.set()
    await asyncio.gather(first, full, unkeyed)
    assert tested.strategy.merged == []


async def test_a_coalescer_with_merging_off_calls_straight_through() -> None:
    tested = core(max_rows=1)
    assert not tested.coalescer.merges
    first = tested.submit((0.5,))
    second = tested.submit((1.0,))
    await settle()
    assert tested.strategy.singles == [(0.5,), (1.0,)]
    tested.strategy.open.set()
    await asyncio.gather(first, second)


@pytest.mark.parametrize(
    ("kept_from", "merged_from"),
    [((4096, 1024), 1024), ((4096, None), None), ((None, None), None)],
)
async def test_a_merged_answer_is_kept_as_bytes_only_when_every_caller_takes_it(
    kept_from: tuple[int | None, int | None], merged_from: int | None
) -> None:
    """A merged call's answer may come back as bytes (its shares too) only when
    every caller's would, from the smallest of their sizes."""
    tested = core()
    first = tested.submit((0.5,))
    await settle()
    waiting = [
        tested.submit((float(index),), keep_from=keep)
        for index, keep in enumerate(kept_from, start=1)
    ]
    await settle()
    tested.strategy.open.set()
    await first
    assert await asyncio.gather(*waiting) == [(2.0,), (4.0,)]
    assert tested.strategy.merged_kept_from == [merged_from]
