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
come back (or the rows fill a call, or one recent call's duration passes).
Without it the callers split into two halves whose calls alternate for ever,
each half the size it could be.

Requests come as protos (gRPC callers), as arrays (REST callers whose JSON the
gateway typed, see `clients.arrays`) or as REST bodies for the backend's REST API
(see `clients.restbatch`); each kind merges only with its own kind and gets its
own kind back.

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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast, overload

import grpc
import numpy as np
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import element_field, from_ndarray, to_ndarray

from gateway.clients.arrays import (
    ArrayRequest,
    ArrayResponse,
    array_layout,
    merge_arrays,
    split_arrays,
)
from gateway.clients.backend import BackendClient, Metadata
from gateway.clients.http import HttpAnswer
from gateway.clients.restbatch import RestPredict, merge_rest, split_rest
from gateway.errors import BackendError, DeadlineExceeded, GatewayError, InvalidInput
from gateway.observability.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"

# Errors that may belong to one caller's values or to the merge itself.
_SEPARABLE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# HTTP statuses of a merged REST call that may belong to one caller's values.
_SEPARABLE_STATUSES = frozenset({400, 413})

Key = tuple[object, ...]
Request = messages.PredictRequest | ArrayRequest
"""A Predict for the backend's gRPC API."""
Response = messages.PredictResponse | ArrayResponse
AnyRequest = Request | RestPredict
AnyResponse = Response | HttpAnswer

_SWEEP_AT = 64
"""Groups kept before idle ones are looked for and dropped."""


@dataclass(slots=True)
class _Waiter:
    request: AnyRequest
    rows: int
    deadline: float
    metadata: Metadata
    future: asyncio.Future[AnyResponse]


@dataclass(slots=True)
class _Group:
    """The calls of one key: how many are in flight, who waits, how many rows.

    Kept while busy, while callers it answered may come back, or while it
    remembers a lowered row limit, so keys seen once do not accumulate."""

    key: Key
    addresses: tuple[str, ...]
    max_rows: int
    in_flight: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)
    waiting_rows: int = 0
    returning: int = 0
    """Callers answered by recent calls that have not sent again."""
    returning_until: float = 0.0
    """When to stop expecting them (monotonic seconds)."""
    call_seconds: float = 0.0
    """Recent wall time of one backend call (exponential average)."""
    hold: asyncio.TimerHandle | None = None

    def arrived(self, now: float) -> None:
        """A request came: one answered caller fewer to expect."""
        if now >= self.returning_until:
            self.returning = 0
        elif self.returning:
            self.returning -= 1

    def answered(self, callers: int, started: float) -> None:
        """A call that served `callers` ended."""
        now = time.monotonic()
        elapsed = now - started
        self.call_seconds = (
            elapsed
            if not self.call_seconds
            else 0.8 * self.call_seconds + 0.2 * elapsed
        )
        self.returning += callers
        self.returning_until = now + self.call_seconds

    def idle(self, now: float) -> bool:
        return (
            self.in_flight == 0
            and not self.waiting
            and (not self.returning or now >= self.returning_until)
        )


def batch_key(addresses: Sequence[str], request: AnyRequest) -> tuple[Key, int] | None:
    """What a request must share with others to merge, and its row count.

    None when it cannot merge: no inputs, a scalar input, an unknown rank, or
    inputs whose leading dimensions differ.
    """
    if isinstance(request, RestPredict):
        return (
            tuple(addresses),
            request.path,
            request.signature_name,
            "rest",
            request.columnar,
            request.layout,
        ), request.rows
    if isinstance(request, ArrayRequest):
        layout_rows = array_layout(request.inputs)
        if layout_rows is None:
            return None
        arrays_layout, rows = layout_rows
        return _spec_key(addresses, request.model_spec, request.output_filter) + (
            "arrays",
            arrays_layout,
        ), rows
    rows = -1
    layout: list[object] = []
    inputs = request.inputs
    for name in sorted(inputs):
        tensor = inputs[name]
        shape = tensor.tensor_shape
        dims = shape.dim
        if shape.unknown_rank or not dims:
            return None
        leading = dims[0].size
        if rows == -1:
            rows = leading
        if leading != rows or rows < 1:
            return None
        trailing = tuple(dim.size for dim in dims[1:]) if len(dims) > 1 else ()
        layout.append((name, tensor.dtype, trailing))
    if rows == -1:
        return None
    key = _spec_key(addresses, request.model_spec, request.output_filter) + (
        "protos",
        tuple(layout),
    )
    return key, rows


def _spec_key(
    addresses: Sequence[str], spec: messages.ModelSpec, output_filter: Sequence[str]
) -> Key:
    version = spec.version.value if spec.HasField("version") else None
    return (
        tuple(addresses),
        spec.name,
        version,
        spec.version_label,
        spec.signature_name,
        tuple(output_filter),
    )


def _row_size(tensor: messages.TensorProto) -> int:
    size = 1
    for dim in tensor.tensor_shape.dim[1:]:
        size *= dim.size
    return size


def _concatenate(
    tensors: Sequence[messages.TensorProto],
    rows: Sequence[int],
    into: messages.TensorProto,
) -> None:
    """`into` = the tensors joined along axis 0.

    Packed bytes and complete typed value lists are joined as they are (no
    decoding); anything else (e.g. one value standing for a whole tensor) goes
    through numpy.

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    first = tensors[0]
    into.dtype = first.dtype
    into.tensor_shape.CopyFrom(first.tensor_shape)
    into.tensor_shape.dim[0].size = sum(rows)
    if all(tensor.tensor_content for tensor in tensors):
        into.tensor_content = b"".join(tensor.tensor_content for tensor in tensors)
        return
    field_name = element_field(first.dtype)
    per_row = _row_size(first)
    if field_name is not None and all(
        not tensor.tensor_content
        and len(getattr(tensor, field_name)) == count * per_row
        for tensor, count in zip(tensors, rows, strict=True)
    ):
        values = getattr(into, field_name)
        for tensor in tensors:
            values.extend(getattr(tensor, field_name))
        return
    arrays = [to_ndarray(tensor) for tensor in tensors]
    from_ndarray(np.concatenate(arrays), first.dtype, into=into, packed=True)


def merge_requests(
    requests: Sequence[messages.PredictRequest], rows: Sequence[int]
) -> messages.PredictRequest:
    """One request whose inputs are the given ones concatenated along axis 0.

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    first = requests[0]
    merged = messages.PredictRequest()
    merged.model_spec.CopyFrom(first.model_spec)
    merged.output_filter.extend(first.output_filter)
    for name in first.inputs:
        _concatenate(
            [request.inputs[name] for request in requests], rows, merged.inputs[name]
        )
    return merged


def _split_tensor(
    tensor: messages.TensorProto, rows: Sequence[int]
) -> list[messages.TensorProto] | None:
    """The tensor cut into consecutive row ranges; None without a batch axis of
    `sum(rows)`."""
    dims = tensor.tensor_shape.dim
    total = sum(rows)
    if not dims or dims[0].size != total:
        return None
    per_row = _row_size(tensor)
    content = tensor.tensor_content
    field_name = element_field(tensor.dtype)
    values: Sequence[object] | None = None
    if content:
        if len(content) % max(1, total * per_row):
            return None
        step = len(content) // total if total else 0
    elif field_name is not None:
        values = getattr(tensor, field_name)
        if len(values) != total * per_row:
            values = None
    if not content and values is None:
        array = to_ndarray(tensor)
        parts: list[messages.TensorProto] = []
        start = 0
        for count in rows:
            parts.append(from_ndarray(array[start : start + count], tensor.dtype))
            start += count
        return parts
    parts = []
    start = 0
    for count in rows:
        part = messages.TensorProto()
        part.dtype = tensor.dtype
        part.tensor_shape.CopyFrom(tensor.tensor_shape)
        part.tensor_shape.dim[0].size = count
        if content:
            part.tensor_content = content[start * step : (start + count) * step]
        else:
            assert field_name is not None and values is not None
            getattr(part, field_name).extend(
                values[start * per_row : (start + count) * per_row]
            )
        parts.append(part)
        start += count
    return parts


def split_response(
    response: messages.PredictResponse, rows: Sequence[int]
) -> list[messages.PredictResponse] | None:
    """Each caller's rows of a merged answer; None when an output has no batch
    dimension of the merged size.

    Raises:
        ProtocolError: an output cannot be decoded.
    """
    pieces: dict[str, list[messages.TensorProto]] = {}
    for name in response.outputs:
        split = _split_tensor(response.outputs[name], rows)
        if split is None:
            return None
        pieces[name] = split
    answers: list[messages.PredictResponse] = []
    for index in range(len(rows)):
        answer = messages.PredictResponse()
        answer.model_spec.CopyFrom(response.model_spec)
        for name, split in pieces.items():
            answer.outputs[name].CopyFrom(split[index])
        answers.append(answer)
    return answers


class Coalescer:
    """Predict calls through `client`, merged per key while one is in flight.

    Args:
        client: makes the backend calls (retries, breaker, deadlines).
        metrics: `coalesced_requests` records how many callers each call served.
        max_rows: most rows in one merged call (0 or 1: never merge).
        max_in_flight: calls of one key at once before further ones wait.
    """

    def __init__(
        self,
        client: BackendClient,
        metrics: GatewayMetrics,
        *,
        max_rows: int,
        max_in_flight: int,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._max_rows = max_rows
        self._max_in_flight = max(1, max_in_flight)
        self._groups: dict[Key, _Group] = {}
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
    ) -> messages.PredictResponse: ...

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
    ) -> Response: ...

    @overload
    async def predict(
        self,
        addresses: Sequence[str],
        request: AnyRequest,
        deadline: float,
        metadata: Metadata,
    ) -> AnyResponse: ...

    async def predict(
        self,
        addresses: Sequence[str],
        request: AnyRequest,
        deadline: float,
        metadata: Metadata,
    ) -> AnyResponse:
        """The backend's answer to `request`, possibly from a merged call; of the
        request's kind (an `ArrayResponse` for an `ArrayRequest`, an `HttpAnswer`
        of any status for a `RestPredict`).

        Raises:
            GatewayError: as `BackendClient.predict`; DeadlineExceeded when the
                deadline passes while waiting; InvalidInput when arrays cannot
                be encoded.
            ProtocolError: the backend's answer cannot be decoded into arrays.
        """
        keyed = batch_key(addresses, request) if self.merges else None
        if keyed is None:
            return await self._call(addresses, request, deadline, metadata)
        key, rows = keyed
        group = self._groups.get(key)
        limit = self._max_rows if group is None else group.max_rows
        if limit <= 1 or rows >= limit:
            return await self._call(addresses, request, deadline, metadata)
        now = time.monotonic()
        if group is None:
            if len(self._groups) >= _SWEEP_AT:
                self._forget_idle(now)
            group = _Group(key, tuple(addresses), self._max_rows)
            self._groups[key] = group
        group.arrived(now)
        if (
            group.in_flight < self._max_in_flight
            and not group.waiting
            and not group.returning
        ):
            group.in_flight += 1
            try:
                return await self._call(addresses, request, deadline, metadata)
            finally:
                group.answered(1, now)
                self._release(group)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AnyResponse] = loop.create_future()
        group.waiting.append(_Waiter(request, rows, deadline, metadata, future))
        group.waiting_rows += rows
        self._dispatch(group)
        # A timer on the future itself: asyncio.wait_for wraps it in more
        # futures and callbacks, a visible cost on every merged request.
        timer = loop.call_later(deadline - now, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _dispatch(self, group: _Group) -> None:
        """Send what waits, as merged calls, while the key has room in flight
        and no answered caller is still expected."""
        while group.in_flight < self._max_in_flight and group.waiting:
            if group.returning and group.waiting_rows < group.max_rows:
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
            batch: list[_Waiter] = []
            rows = 0
            while group.waiting:
                waiter = group.waiting[0]
                if waiter.future.done():  # gave up (deadline or disconnect)
                    group.waiting.popleft()
                    group.waiting_rows -= waiter.rows
                    continue
                if batch and rows + waiter.rows > group.max_rows:
                    break
                group.waiting.popleft()
                group.waiting_rows -= waiter.rows
                batch.append(waiter)
                rows += waiter.rows
            if not batch:
                return
            group.in_flight += 1
            task = asyncio.create_task(self._serve(group, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _end_hold(self, group: _Group) -> None:
        group.hold = None
        group.returning = 0
        self._dispatch(group)

    def _forget_idle(self, now: float) -> None:
        for key, group in list(self._groups.items()):
            if self._forgettable(group, now):
                del self._groups[key]

    def _forgettable(self, group: _Group, now: float) -> bool:
        """Idle, and with nothing to remember (its row limit is the default)."""
        return group.idle(now) and group.max_rows == self._max_rows

    async def _serve(self, group: _Group, batch: list[_Waiter]) -> None:
        started = time.monotonic()
        try:
            self._metrics.coalesced_requests.observe(len(batch))
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

    def _release(self, group: _Group) -> None:
        """One call of the group ended: send what waits, forget an idle group."""
        group.in_flight -= 1
        self._dispatch(group)
        if self._forgettable(group, time.monotonic()):
            self._groups.pop(group.key, None)

    async def _call(
        self,
        addresses: Sequence[str],
        request: AnyRequest,
        deadline: float,
        metadata: Metadata,
    ) -> AnyResponse:
        """One backend call for one request, answered in the request's kind."""
        if isinstance(request, RestPredict):
            return await self._client.forward_rest(
                addresses, request.path, request.body, deadline, metadata
            )
        if not isinstance(request, ArrayRequest):
            return await self._client.predict(addresses, request, deadline, metadata)
        response = await self._client.predict(
            addresses, _encoded(request), deadline, metadata
        )
        return ArrayResponse.from_proto(response)

    async def _one(self, group: _Group, waiter: _Waiter) -> bool:
        """Serve one caller on its own; True when it got a successful answer."""
        try:
            response = await self._call(
                group.addresses, waiter.request, waiter.deadline, waiter.metadata
            )
        except (GatewayError, ProtocolError) as exc:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            return False
        if not waiter.future.done():
            waiter.future.set_result(response)
        return not isinstance(response, HttpAnswer) or response.status == 200

    async def _one_by_one(self, group: _Group, batch: list[_Waiter]) -> bool:
        results = await asyncio.gather(*(self._one(group, w) for w in batch))
        return all(results)

    async def _merged(self, group: _Group, batch: list[_Waiter]) -> None:
        if isinstance(batch[0].request, RestPredict):
            await self._merged_rest(group, batch)
            return
        requests = cast("list[Request]", [waiter.request for waiter in batch])
        rows = [waiter.rows for waiter in batch]
        try:
            merged = _merge(requests, rows)
        except ProtocolError:
            await self._one_by_one(group, batch)
            return
        try:
            response = await self._client.predict(
                group.addresses, merged, *_merged_call(batch)
            )
        except BackendError as exc:
            if exc.code not in _SEPARABLE_CODES:
                self._fail(batch, exc)
                return
            await self._separate(group, batch, exc.message)
            return
        except GatewayError as exc:
            self._fail(batch, exc)
            return
        try:
            parts = _split(response, rows, arrays=isinstance(requests[0], ArrayRequest))
        except ProtocolError:
            parts = None
        if parts is None:
            await self._never_merge(group, batch, merged.model_spec.name)
            return
        for waiter, part in zip(batch, parts, strict=True):
            if not waiter.future.done():
                waiter.future.set_result(part)

    async def _merged_rest(self, group: _Group, batch: list[_Waiter]) -> None:
        requests = cast("list[RestPredict]", [waiter.request for waiter in batch])
        first = requests[0]
        try:
            answer = await self._client.forward_rest(
                group.addresses, first.path, merge_rest(requests), *_merged_call(batch)
            )
        except GatewayError as exc:
            self._fail(batch, exc)
            return
        if answer.status in _SEPARABLE_STATUSES:
            await self._separate(group, batch, f"HTTP {answer.status}")
            return
        if answer.status != 200:
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_result(answer)
            return
        parts = split_rest(answer.body, first, [waiter.rows for waiter in batch])
        if parts is None:
            await self._never_merge(group, batch, first.path)
            return
        for waiter, part in zip(batch, parts, strict=True):
            if not waiter.future.done():
                waiter.future.set_result(HttpAnswer(200, part, answer.headers))

    async def _separate(self, group: _Group, batch: list[_Waiter], reason: str) -> None:
        """Serve a refused merge's callers one by one; if they all succeed, the
        merge was at fault: halve the key's row limit."""
        if await self._one_by_one(group, batch):
            group.max_rows = max(1, sum(w.rows for w in batch) // 2)
            logger.info(
                "merged predict of %d rows refused (%s); merging at most %d",
                sum(w.rows for w in batch),
                reason,
                group.max_rows,
            )

    async def _never_merge(
        self, group: _Group, batch: list[_Waiter], what: str
    ) -> None:
        """An answer without the merged batch dimension: serve the callers one by
        one and stop merging the key."""
        group.max_rows = 1
        logger.info("%s answers without a batch dimension; not merging it again", what)
        await self._one_by_one(group, batch)

    @staticmethod
    def _fail(batch: list[_Waiter], exc: GatewayError) -> None:
        for waiter in batch:
            if not waiter.future.done():
                waiter.future.set_exception(exc)


def _merged_call(batch: Sequence[_Waiter]) -> tuple[float, Metadata]:
    """Deadline and metadata of a merged call: the latest deadline, and every
    caller's request id."""
    ids = ",".join(
        value
        for waiter in batch
        for key, value in waiter.metadata
        if key == REQUEST_ID_METADATA
    )
    return max(waiter.deadline for waiter in batch), ((REQUEST_ID_METADATA, ids),)


def _expire(future: asyncio.Future[AnyResponse]) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceeded("deadline exceeded waiting for a backend call")
        )


def _encoded(request: ArrayRequest) -> messages.PredictRequest:
    try:
        return request.to_proto()
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def _merge(requests: Sequence[Request], rows: Sequence[int]) -> messages.PredictRequest:
    """The backend request of a batch of protos or arrays (its key says which).

    Raises:
        ProtocolError: a tensor cannot be decoded or encoded.
    """
    if isinstance(requests[0], ArrayRequest):
        return merge_arrays(cast("Sequence[ArrayRequest]", requests)).to_proto()
    return merge_requests(cast("Sequence[messages.PredictRequest]", requests), rows)


def _split(
    response: messages.PredictResponse, rows: Sequence[int], *, arrays: bool
) -> Sequence[Response] | None:
    """Each caller's share of a merged answer, in the callers' kind.

    Raises:
        ProtocolError: an output cannot be decoded.
    """
    if arrays:
        return split_arrays(ArrayResponse.from_proto(response), rows)
    return split_response(response, rows)
