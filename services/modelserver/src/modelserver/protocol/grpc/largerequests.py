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

When a segment cannot be written (no room: a container's ``/dev/shm`` is
64 MiB unless given more, and concurrent large messages can fill any size) a
pipe carries that side instead, with one warning line: the message goes
through an OS pipe of its own (:mod:`servekit_protocol.messagepipe`, written
without a copy or the GIL held), its arrays come back through another; arrays
whose own segment has no room come back through a pipe the worker makes
(:func:`~servekit_protocol.messagepipe.send_back`). Only where no such pipe
can be made do they go pickled through the pool's pipe (:class:`MessageBytes`
by the feeder thread, :class:`~modelserver.protocol.carriedarrays.CarriedArray`
unpickled by the result thread).
The event loop's thread neither parses nor copies the message on any path;
the pool's threads hold the GIL in short stretches on the pickled road,
which delays the loop (lag) without keeping it busy.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import grpc
import numpy as np
from servekit_protocol import messages, segments
from servekit_protocol.grpcweb_server import Aborted
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable
from servekit_protocol.messagepipe import MessagePipes, PipedMessage
from servekit_protocol.pickledmessage import (
    MessageBytes,
    ReceivedBytes,
    received_message,
)
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.errors import InvalidInput
from modelserver.protocol.carriedarrays import (
    ArraysRoad,
    Carried,
    carried_back,
    warn_carried,
    write_or_carry,
)
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


WorkerMessage = str | PipedMessage | ReceivedBytes
"""What a worker gets: the path of the message's segment, its pipe, or its
bytes."""


@contextlib.contextmanager
def message_view(message: WorkerMessage) -> Iterator[memoryview]:
    """The message a worker was handed, for as long as the block runs.

    Raises:
        OSError: No such segment.
    """
    if isinstance(message, str):
        with segments.mapped(message) as view:
            yield view
    else:
        yield memoryview(received_message(message))


@dataclass(frozen=True, slots=True)
class _Decoded:
    # What a worker hands back: everything but the numeric arrays' bytes
    # (``carried`` holds them when they could not go through a segment).
    spec: ModelSpec | None = None
    output_filter: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    slots: list[segments.ArraySlot] = field(default_factory=list)
    objects: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    error: str = ""
    carried: Carried = field(default_factory=dict)


def decode_predict(
    message: WorkerMessage, arrays_segment: ArraysRoad, limits: TensorLimits | None
) -> _Decoded:
    """Parse the PredictRequest in ``message`` and write its numeric arrays to
    a new segment ``arrays_segment`` (runs in a worker process); they come
    back in the answer when there is no segment, or no room for one.

    Raises:
        DecodeError: The message does not parse.
    """
    with message_view(message) as view:
        # upb parses any buffer; the stubs say bytes.
        proto = messages.PredictRequest.FromString(cast(bytes, view))
    del message
    try:
        request = converters.to_predict_request(proto, limits)
    except InvalidInput as exc:
        return _Decoded(error=exc.message)
    del proto
    numeric = {k: v for k, v in request.inputs.items() if v.dtype != object}
    objects = {k: v for k, v in request.inputs.items() if v.dtype == object}
    slots, carried = write_or_carry(arrays_segment, numeric)
    return _Decoded(
        request.spec,
        request.output_filter,
        tuple(request.inputs),
        slots,
        objects,
        carried=carried,
    )


class SegmentDecoder(Generic[Result]):
    """Decodes one method's large messages in a worker process (the gRPC
    server's :class:`~servekit_protocol.grpc_server.OffloadedDecoder`): the
    message goes through a segment, the worker's numeric arrays come back
    through another (either through the pool's pipe when its segment has no
    room), and :meth:`assemble` builds what the servicer gets.

    Args:
        parsers: The worker processes.
        worker: The module-level function the worker runs on the message
            (:data:`WorkerMessage`) and the arrays' segment path (None: carry
            them back), then ``worker_args``; what it returns has ``slots`` and
            ``carried`` (see :func:`write_or_carry`).
        worker_args: Its other arguments.
    """

    def __init__(
        self,
        parsers: BodyParsers,
        worker: Callable[..., Any],
        *worker_args: Any,
    ) -> None:
        self._parsers = parsers
        self._worker = worker
        self._worker_args = worker_args

    async def __call__(self, message: memoryview) -> Result:
        """The request decoded.

        Raises:
            DecodeError: The message does not parse.
            Aborted: UNAVAILABLE when the worker died.
        """
        # Shielded: a call cancelled meanwhile (its client went away) still
        # waits for its worker to finish before the segments are removed.
        return await segments.run_to_end(self._decode(message))

    def assemble(self, decoded: Any, arrays: dict[str, np.ndarray[Any, Any]]) -> Result:
        """What the servicer gets, from the worker's answer and its arrays."""
        raise NotImplementedError

    async def _decode(self, message: memoryview) -> Result:
        directory = self._parsers.segment_dir
        message_segment = segments.new_path(directory, "message")
        arrays_segment = segments.new_path(directory, "arrays")
        piped: dict[str, np.ndarray[Any, Any]] = {}
        try:
            try:
                await asyncio.to_thread(segments.write_bytes, message_segment, message)
            except OSError as exc:
                segments.unlink_soon(message_segment)
                _warn("the message went to its worker", exc, directory)
                decoded, piped = await self._piped(message)
            else:
                decoded = await self._in_worker(message_segment, arrays_segment)
                segments.unlink_soon(message_segment)
                if decoded.carried:
                    warn_carried(
                        "A large gRPC message's arrays", decoded.carried, directory
                    )
            arrays = (
                await asyncio.to_thread(
                    segments.read_arrays, arrays_segment, decoded.slots
                )
                if decoded.slots
                else {}
            )
            try:
                arrays.update(await carried_back(decoded.carried))
            except ParserUnavailable as exc:
                raise _worker_stopped() from exc
        finally:
            segments.unlink_soon(message_segment, arrays_segment)
        arrays.update(piped)
        return self.assemble(decoded, arrays)

    async def _piped(
        self, message: memoryview
    ) -> tuple[Any, dict[str, np.ndarray[Any, Any]]]:
        """The worker's answer and arrays for a message sent, and its arrays
        received, through pipes of their own; both through the pool's pipe,
        pickled, when no such pipes can be made."""
        try:
            pipes = await asyncio.to_thread(
                MessagePipes, message, self._parsers.descriptors
            )
        except OSError as exc:
            logger.warning("No pipe for a large gRPC message, pickled instead: %s", exc)
            return await self._in_worker(MessageBytes(message), None), {}
        try:
            return await pipes.exchange(self._in_worker(pipes.message, pipes.arrays))
        except OSError as exc:
            raise _worker_stopped() from exc

    async def _in_worker(
        self, message: str | PipedMessage | MessageBytes, arrays: ArraysRoad
    ) -> Any:
        try:
            return await self._parsers.in_worker(
                self._worker, message, arrays, *self._worker_args
            )
        except ParserUnavailable as exc:
            raise _worker_stopped() from exc


def _worker_stopped() -> Aborted:
    return Aborted(
        grpc.StatusCode.UNAVAILABLE,
        "The request message could not be parsed: its worker stopped",
    )


class PredictDecoder(SegmentDecoder[DecodedPredict]):
    """Decodes a Predict message in a worker process.

    Args:
        parsers: The worker processes.
        limits: The request's tensor limits (None for none).
    """

    def __init__(self, parsers: BodyParsers, limits: TensorLimits | None) -> None:
        super().__init__(parsers, decode_predict, limits)

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


def _warn(what: str, exc: OSError | None, directory: str) -> None:
    logger.warning(
        "A large gRPC message went through the worker pipe (%s), %s: its shared "
        "memory segment could not be written (%s); give %s more room",
        what,
        # The message's own pipe copies nothing holding the GIL; the arrays,
        # pickled, do.
        "copies made holding the GIL in the pool's threads"
        if exc is None
        else "a pipe of its own",
        exc if exc is not None else "no room",
        directory,
    )
