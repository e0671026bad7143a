"""Large ``Predict`` requests parsed, and their tensors decoded, in a worker
process, so that neither stalls the event loop.

protobuf's parser (upb) holds the GIL for the whole message, about 1 ms a MiB,
and decoding its tensors into arrays about half as much again: a message at the
model server's default limit (256 MiB) would hold every other call for 0.25 to
0.4 s, in place or in a thread alike. From ``--grpc_parse_offload_bytes`` up,
the message goes to one of the JSON workers (:class:`~servekit_protocol.json_codec.BodyParsers`)
through a shared memory segment (:mod:`servekit_protocol.segments`); the worker
parses it, checks the request's tensor limits before any array is allocated,
decodes the arrays exactly as in place (:func:`~modelserver.protocol.grpc.converters.to_predict_request`)
and writes them to a second segment, from which they are read back into new
arrays. The event loop only starts the copies, which run in threads without the
GIL. String tensors (object arrays, rare in large requests) come back pickled.

What a client sees is what the in-place path gives: a message that does not
parse answers INTERNAL ``Failed to parse the request: ...`` from the server, and
a request over the tensor limits or with a tensor that does not decode answers
INVALID_ARGUMENT with the same message from the servicer (the worker's error
is carried to it in :class:`DecodedPredict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import grpc
import numpy as np
from google.protobuf.message import Message
from servekit_protocol import messages, segments
from servekit_protocol.grpcweb_server import Aborted
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import converters
from modelserver.types import ModelSpec, PredictRequest

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Decoded(Generic[Request]):
    """A request decoded in a worker, or why it could not be.

    Attributes:
        request: The decoded request; None when ``error`` says why not.
        error: The INVALID_ARGUMENT message of a request that does not decode.
    """

    request: Request | None
    error: str = ""

    def unwrap(self) -> Request:
        """The request.

        Raises:
            InvalidInput: It did not decode (over the tensor limits, a bad
                tensor), with the message the in-place path gives.
        """
        if self.request is None:
            raise InvalidInput(self.error)
        return self.request


DecodedPredict = Decoded[PredictRequest]
"""A Predict request decoded in a worker."""


@dataclass(frozen=True, slots=True)
class _Decoded:
    # What a worker hands back: everything but the numeric arrays' bytes.
    spec: ModelSpec | None = None
    output_filter: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    slots: list[segments.ArraySlot] = field(default_factory=list)
    objects: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    error: str = ""


def decode_predict(
    message_segment: str, arrays_segment: str, limits: TensorLimits | None
) -> _Decoded:
    """Parse the PredictRequest in ``message_segment`` and write its numeric
    arrays to a new segment ``arrays_segment`` (runs in a worker process).

    Raises:
        DecodeError: The message does not parse.
    """
    with segments.mapped(message_segment) as view:
        # upb parses any buffer; the stubs say bytes.
        proto = messages.PredictRequest.FromString(cast(bytes, view))
    try:
        request = converters.to_predict_request(proto, limits)
    except InvalidInput as exc:
        return _Decoded(error=exc.message)
    del proto
    numeric = {k: v for k, v in request.inputs.items() if v.dtype != object}
    objects = {k: v for k, v in request.inputs.items() if v.dtype == object}
    slots = segments.write_arrays(arrays_segment, numeric)
    return _Decoded(
        request.spec,
        request.output_filter,
        tuple(request.inputs),
        slots,
        objects,
    )


class SegmentDecoder(Generic[Result]):
    """Decodes one method's large messages in a worker process (the gRPC
    server's :class:`~servekit_protocol.grpc_server.OffloadedDecoder`): the
    message goes through a segment, the worker's numeric arrays come back
    through another, and :meth:`assemble` builds what the servicer gets.

    Args:
        parsers: The worker processes.
        message_type: The method's request message, parsed in place when
            shared memory is short.
        worker: The module-level function the worker runs on the message's
            and the arrays' segment names, then ``worker_args``.
        worker_args: Its other arguments.
    """

    def __init__(
        self,
        parsers: BodyParsers,
        message_type: type[Message],
        worker: Callable[..., Any],
        *worker_args: Any,
    ) -> None:
        self._parsers = parsers
        self._message_type = message_type
        self._worker = worker
        self._worker_args = worker_args

    async def __call__(self, message: memoryview) -> Result | Message:
        """The request decoded; the message parsed in place when shared memory
        is short.

        Raises:
            DecodeError: The message does not parse.
            Aborted: UNAVAILABLE when the worker died.
        """
        # Shielded: a call cancelled meanwhile (its client went away) still
        # waits for its worker to finish before the segments are removed.
        decoding = asyncio.ensure_future(self._decode(message))
        decoding.add_done_callback(_retrieve)
        return await asyncio.shield(decoding)

    def assemble(self, decoded: Any, arrays: dict[str, np.ndarray[Any, Any]]) -> Result:
        """What the servicer gets, from the worker's answer and its arrays."""
        raise NotImplementedError

    async def _decode(self, message: memoryview) -> Result | Message:
        message_segment = segments.new_name("message")
        arrays_segment = segments.new_name("arrays")
        try:
            try:
                await asyncio.to_thread(segments.write_bytes, message_segment, message)
            except OSError as exc:
                return _in_place(self._message_type, message, exc)
            try:
                decoded = await self._parsers.in_worker(
                    self._worker, message_segment, arrays_segment, *self._worker_args
                )
            except ParserUnavailable as exc:
                raise Aborted(
                    grpc.StatusCode.UNAVAILABLE,
                    "The request message could not be parsed: its worker stopped",
                ) from exc
            except OSError as exc:
                # The worker could not write the arrays' segment (no space).
                return _in_place(self._message_type, message, exc)
            _discard(message_segment)
            arrays = (
                await asyncio.to_thread(
                    segments.read_arrays, arrays_segment, decoded.slots
                )
                if decoded.slots
                else {}
            )
        finally:
            _discard(message_segment, arrays_segment)
        return self.assemble(decoded, arrays)


class PredictDecoder(SegmentDecoder[DecodedPredict]):
    """Decodes a Predict message in a worker process.

    Args:
        parsers: The worker processes.
        limits: The request's tensor limits (None for none).
    """

    def __init__(self, parsers: BodyParsers, limits: TensorLimits | None) -> None:
        super().__init__(parsers, messages.PredictRequest, decode_predict, limits)

    def assemble(
        self, decoded: Any, arrays: dict[str, np.ndarray[Any, Any]]
    ) -> DecodedPredict:
        """The request, or the error the worker found."""
        assert isinstance(decoded, _Decoded)
        if decoded.spec is None:
            return Decoded(None, decoded.error)
        arrays.update(decoded.objects)
        return Decoded(
            PredictRequest(
                spec=decoded.spec,
                inputs={name: arrays[name] for name in decoded.order},
                output_filter=decoded.output_filter,
            )
        )


def _in_place(
    message_type: type[Message], message: memoryview, exc: OSError
) -> Message:
    """The message parsed here, as below the threshold: a container's
    ``/dev/shm`` is 64 MiB unless given more, and a request that cannot go to
    a worker is still answered, holding the loop as it did before offloading.

    Raises:
        DecodeError: The message does not parse.
    """
    logger.warning(
        "A large gRPC message is parsed on the event loop: its shared memory "
        "segment could not be written (%s); give %s more room",
        exc,
        segments.SEGMENT_DIR,
    )
    return message_type.FromString(bytes(message))


def _discard(*names: str) -> None:
    """Unlink segments in a thread, not awaited: unlinking frees the pages of
    the segment there and then, about 50 ms for 256 MiB with the calling
    thread blocked (the GIL is released, but the loop is the caller)."""
    loop = asyncio.get_running_loop()
    for name in names:
        loop.run_in_executor(None, segments.unlink, name)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The error of a decode whose call was cancelled is nobody's to raise.
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
