"""The kinds of Predict the coalescer merges, one strategy each.

A strategy knows, for its kind of request, what must be shared to merge (its
key), how to make one call alone, and how to make one merged call and cut its
answer back. The coalescer's async core (`clients.coalescer`) knows nothing of
tensors or JSON; it groups by key, waits, and acts on the `Merged` outcome a
strategy reports:

- `Parts`: the merged call succeeded; each caller gets its share;
- `Separately`: the merge was refused in a way that may be one caller's fault
  (bad input, a batch over the backend's limit), or could not be built: serve
  each caller alone; `blame_merge` says whether all of them succeeding means the
  merge itself was at fault;
- `Unsplittable`: the answer has no batch dimension of the merged size: serve
  each caller alone and never merge the key again;
- `Shared`: an answer that is the same for everyone (a REST error status);
- a raised `GatewayError`: an error of the backend itself, handed to every caller.

Three kinds merge: gRPC callers' protos (`ProtoStrategy`), REST callers' typed
arrays (`ArrayStrategy`, see `clients.arrays`) and untranslated REST bodies for
the backend's REST API (`RestStrategy`, see `clients.restbatch`); each merges
only with its own kind and answers in its own kind. Large gRPC messages
forwarded unparsed (`ForwardedStrategy`, see `clients.forwarded`) go alone.

A merged answer of gRPC callers that all take answers as bytes from
``keep_from`` up is received as its bytes when it is that large, and parsed,
cut and each share serialized again in a worker thread: on the event loop a
16 MiB answer cut for eight callers held it about 150 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.json_codec import BodyParsers

from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import (
    ArrayRequest,
    ArrayResponse,
    merge_arrays,
    split_arrays,
)
from gateway.clients.backend import BackendClient, Metadata
from gateway.clients.batchkeys import Keyed, array_key, proto_key, rest_key
from gateway.clients.forwarded import ForwardedPredict, WrittenPredict
from gateway.clients.http import HttpAnswer
from gateway.clients.protobatch import merged_request, split_answer, split_response
from gateway.clients.restbatch import RestPredict, merge_rest, split_rest
from gateway.errors import BackendError, InvalidInput, unreadable_answer

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
RequestT_contra = TypeVar("RequestT_contra", contravariant=True)

SEPARABLE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""gRPC codes of a merged call that may belong to one caller's values."""

SEPARABLE_STATUSES = frozenset({400, 413})
"""HTTP statuses of a merged REST call that may belong to one caller's values."""


@dataclass(frozen=True, slots=True)
class Parts(Generic[ResponseT]):
    """Each caller's share of a merged answer, in the callers' order."""

    answers: Sequence[ResponseT]


@dataclass(frozen=True, slots=True)
class Separately:
    """Serve the callers one by one."""

    reason: str
    blame_merge: bool
    """If every caller then succeeds, the merge was at fault (the key's row limit
    is lowered)."""


@dataclass(frozen=True, slots=True)
class Unsplittable:
    """The answer cannot be cut by caller: serve one by one, never merge again."""

    what: str


@dataclass(frozen=True, slots=True)
class Shared(Generic[ResponseT]):
    """One answer for every caller."""

    answer: ResponseT


Merged = Parts[ResponseT] | Separately | Unsplittable | Shared[ResponseT]


class Strategy(Protocol[RequestT_contra, ResponseT]):
    """How one kind of request is keyed, called alone, and called merged."""

    def key(self, request: RequestT_contra) -> Keyed | None:
        """What requests must share to merge, and this one's rows and bytes;
        None when it cannot merge."""
        ...

    async def call(
        self,
        addresses: Sequence[str],
        request: RequestT_contra,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> ResponseT:
        """One backend call for one request; a gRPC caller's answer of
        ``keep_from`` bytes or more may come back as its bytes
        (`clients.answers`), where the kind of request allows it.

        Raises:
            GatewayError: the backend's or the transport's error.
        """
        ...

    async def call_merged(
        self,
        addresses: Sequence[str],
        requests: Sequence[RequestT_contra],
        rows: Sequence[int],
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Merged[ResponseT]:
        """One backend call for several requests; ``keep_from``: as `call`'s,
        for the merged answer (its shares are then bytes too).

        Raises:
            GatewayError: an error of the backend that holds for every caller.
        """
        ...

    def succeeded(self, response: ResponseT) -> bool:
        """Whether an answer is a success (REST answers carry any status)."""
        ...


def merged_keep_from(sizes: Sequence[int | None]) -> int | None:
    """From what size a merged answer is kept as bytes: only when every caller
    takes its answer as bytes from some size up (``sizes``, their
    ``keep_from``), and then from the smallest of those sizes."""
    if any(size is None for size in sizes):
        return None
    return min(size for size in sizes if size is not None)


class _TensorStrategy(Generic[RequestT, ResponseT]):
    """What protos and arrays share: a merged gRPC Predict, refused or cut."""

    def __init__(self, client: BackendClient) -> None:
        self._client = client

    async def _merge(
        self, requests: Sequence[RequestT], rows: Sequence[int], keep_from: int | None
    ) -> messages.PredictRequest | ForwardedPredict:
        raise NotImplementedError

    def _split(
        self, response: messages.PredictResponse, rows: Sequence[int]
    ) -> Sequence[ResponseT] | None:
        raise NotImplementedError

    def _split_kept(
        self, answer: ReceivedAnswer, rows: Sequence[int]
    ) -> Sequence[ResponseT] | None:
        """`_split` of an answer kept as its bytes; run in a worker thread.

        Raises:
            DecodeError: the answer does not parse.
            ProtocolError: an output cannot be decoded.
        """
        return self._split(messages.PredictResponse.FromString(answer.data), rows)

    async def _cut(
        self,
        response: messages.PredictResponse | ReceivedAnswer,
        rows: Sequence[int],
    ) -> Sequence[ResponseT] | None:
        """Each caller's share, or None when the answer cannot be cut; one kept
        as its bytes is cut off the event loop.

        Raises:
            BackendError: INTERNAL, a kept answer does not parse (as it fails
                when parsed on receipt).
        """
        try:
            if not isinstance(response, ReceivedAnswer):
                return self._split(response, rows)
            try:
                return await asyncio.to_thread(self._split_kept, response, rows)
            except DecodeError as exc:
                raise unreadable_answer(exc) from exc
        except ProtocolError:
            return None

    def succeeded(self, response: ResponseT) -> bool:
        """A Predict answer is a success: the backend's errors are raised."""
        return response is not None

    async def call_merged(
        self,
        addresses: Sequence[str],
        requests: Sequence[RequestT],
        rows: Sequence[int],
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Merged[ResponseT]:
        try:
            merged = await self._merge(requests, rows, keep_from)
        except ProtocolError as exc:
            return Separately(exc.message, blame_merge=False)
        try:
            response = await self._client.predict(
                addresses, merged, deadline, metadata, keep_from
            )
        except BackendError as exc:
            if exc.grpc_code not in SEPARABLE_CODES:
                raise
            return Separately(exc.message, blame_merge=True)
        parts = await self._cut(response, rows)
        if parts is None:
            return Unsplittable(merged.model_spec.name)
        return Parts(parts)


class ProtoStrategy(
    _TensorStrategy[messages.PredictRequest, messages.PredictResponse | ReceivedAnswer]
):
    """gRPC callers' PredictRequests, merged tensor by tensor."""

    def key(self, request: messages.PredictRequest) -> Keyed | None:
        return proto_key(request)

    async def call(
        self,
        addresses: Sequence[str],
        request: messages.PredictRequest,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> messages.PredictResponse | ReceivedAnswer:
        return await self._client.predict(
            addresses, request, deadline, metadata, keep_from
        )

    async def _merge(
        self,
        requests: Sequence[messages.PredictRequest],
        rows: Sequence[int],
        keep_from: int | None,
    ) -> messages.PredictRequest | ForwardedPredict:
        return await merged_request(requests, rows, keep_from)

    def _split(
        self, response: messages.PredictResponse, rows: Sequence[int]
    ) -> Sequence[messages.PredictResponse] | None:
        return split_response(response, rows)

    def _split_kept(
        self, answer: ReceivedAnswer, rows: Sequence[int]
    ) -> Sequence[ReceivedAnswer] | None:
        return split_answer(answer, rows)


class ArrayStrategy(_TensorStrategy[ArrayRequest, ArrayResponse | ReceivedAnswer]):
    """REST and OIP callers' typed arrays, concatenated and encoded once per
    call; an answer from ``keep_from`` bytes up (OIP gRPC callers give one)
    comes back as its bytes, to be decoded off the event loop."""

    def key(self, request: ArrayRequest) -> Keyed | None:
        return array_key(request)

    async def call(
        self,
        addresses: Sequence[str],
        request: ArrayRequest,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> ArrayResponse | ReceivedAnswer:
        try:
            encoded = request.to_proto()
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
        response = await self._client.predict(
            addresses, encoded, deadline, metadata, keep_from
        )
        if isinstance(response, ReceivedAnswer):
            return response
        return ArrayResponse.from_proto(response)

    async def _merge(
        self,
        requests: Sequence[ArrayRequest],
        rows: Sequence[int],  # noqa: ARG002 (arrays carry their own row counts)
        keep_from: int | None,  # noqa: ARG002 (the answer decides, not the merge)
    ) -> messages.PredictRequest:
        return merge_arrays(requests).to_proto()

    def _split(
        self, response: messages.PredictResponse, rows: Sequence[int]
    ) -> Sequence[ArrayResponse] | None:
        return split_arrays(ArrayResponse.from_proto(response), rows)


class RestStrategy:
    """Untranslated TF Serving REST bodies, merged as JSON."""

    def __init__(self, client: BackendClient, parsers: BodyParsers) -> None:
        self._client = client
        self._parsers = parsers

    def key(self, request: RestPredict) -> Keyed | None:
        return rest_key(request)

    async def _split(
        self, answer: bytes, first: RestPredict, rows: Sequence[int]
    ) -> list[bytes] | None:
        """`split_rest`, in a JSON worker from the JSON threshold: orjson reads
        and writes with the GIL held, some 100 ms of the event loop's time
        for a 40 MB answer.

        Raises:
            ParserUnavailable: the worker died (503).
        """
        if len(answer) < self._parsers.threshold_bytes:
            return split_rest(answer, first, rows)
        # Only the format is read from the first request; its values stay here.
        slim = replace(first, body=b"", values=None)
        return await self._parsers.in_worker(split_rest, answer, slim, rows)

    async def call(
        self,
        addresses: Sequence[str],
        request: RestPredict,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,  # noqa: ARG002 (a REST answer is bytes)
    ) -> HttpAnswer:
        return await self._client.forward_rest(
            addresses, request.path, request.body, deadline, metadata
        )

    async def call_merged(
        self,
        addresses: Sequence[str],
        requests: Sequence[RestPredict],
        rows: Sequence[int],
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,  # noqa: ARG002 (a REST answer is bytes)
    ) -> Merged[HttpAnswer]:
        first = requests[0]
        answer = await self._client.forward_rest(
            addresses, first.path, merge_rest(requests), deadline, metadata
        )
        if answer.status in SEPARABLE_STATUSES:
            return Separately(f"HTTP {answer.status}", blame_merge=True)
        if answer.status != 200:
            return Shared(answer)
        parts = await self._split(answer.body, first, rows)
        if parts is None:
            return Unsplittable(first.path)
        return Parts([HttpAnswer(200, part, answer.headers) for part in parts])

    def succeeded(self, response: HttpAnswer) -> bool:
        return response.status == 200


class ForwardedStrategy:
    """Large gRPC Predicts forwarded as they came (`clients.forwarded`): never
    merged, since merging needs their tensors parsed, which forwarding avoids;
    a message that large fills a backend batch on its own anyway."""

    def __init__(self, client: BackendClient) -> None:
        self._client = client

    def key(
        self,
        request: ForwardedPredict,  # noqa: ARG002 (none merges)
    ) -> Keyed | None:
        return None

    async def call(
        self,
        addresses: Sequence[str],
        request: ForwardedPredict,
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,  # noqa: ARG002 (the request carries it)
    ) -> messages.PredictResponse | ReceivedAnswer:
        return await self._client.predict(addresses, request, deadline, metadata)

    async def call_merged(
        self,
        addresses: Sequence[str],
        requests: Sequence[ForwardedPredict],
        rows: Sequence[int],
        deadline: float,
        metadata: Metadata,
        keep_from: int | None = None,
    ) -> Merged[messages.PredictResponse | ReceivedAnswer]:
        del addresses, requests, rows, deadline, metadata, keep_from
        raise AssertionError("forwarded requests have no key, so never merge")

    def succeeded(self, response: messages.PredictResponse | ReceivedAnswer) -> bool:
        return response is not None


def backend_strategies(
    client: BackendClient, parsers: BodyParsers
) -> dict[type, Strategy[Any, Any]]:
    """The gateway's strategy for each kind of request: protos, arrays and REST
    bodies through `client` (a large merged REST answer cut in one of the JSON
    workers of `parsers`)."""
    forwarded = ForwardedStrategy(client)
    return {
        messages.PredictRequest: ProtoStrategy(client),
        ArrayRequest: ArrayStrategy(client),
        RestPredict: RestStrategy(client, parsers),
        ForwardedPredict: forwarded,
        WrittenPredict: forwarded,
    }
