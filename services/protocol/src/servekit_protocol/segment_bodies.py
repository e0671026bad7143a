"""Large REST ``:predict`` bodies parsed in a worker process, the body sent
there and the decoded arrays sent back through shared memory segments, not the
pool's pipe; other reads of a large body (its ``signature_name``, a
``:classify`` or ``:regress`` body's examples) get the body the same way
(:func:`run_on_body`).

Through the pipe, the pool's helper threads in the server pickle the body out
and receive and unpickle the arrays back, copies made holding the GIL: a
157 MiB body decoding to 64 MiB of doubles held the event loop about 0.35 s on
a loaded 2-core machine although the loop itself ran none of it. Here the
server only writes the body and reads the arrays, in threads, with the GIL
released (:mod:`servekit_protocol.segments`); string arrays still travel
pickled. The segments' lifetime is that of
:mod:`servekit_protocol.segment_answers`' ones: named by the server's side,
unlinked once the worker has answered on every path.

When a segment cannot be written (no room), pipes of their own carry that side
instead (:mod:`servekit_protocol.messagepipe`, copies without the GIL), with
one warning line: the body goes to the worker through one, its arrays come
back through another (or, when only the arrays' segment had no room, through
one the worker makes). Only where no such pipe can be made do they go pickled
through the pool's pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from servekit_protocol import segment_answers, segments
from servekit_protocol.json_codec.offload import (
    BodyParsers,
    ParserUnavailable,
    received_from_worker,
)
from servekit_protocol.json_codec.predict import (
    PredictBody,
    SpecSource,
    parse_predict_request,
)
from servekit_protocol.messagepipe import (
    MessagePipe,
    MessagePipes,
    PipedArrays,
    PipedMessage,
    ReturnedArrays,
    send_back,
)
from servekit_protocol.pipeframes import Arrays
from servekit_protocol.tensor_limits import TensorLimits

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result")


@dataclasses.dataclass(frozen=True, slots=True)
class _Parsed:
    # What the worker hands back: the body without its numeric arrays, and
    # where those lie in the arrays' segment.
    body: PredictBody
    slots: list[segments.ArraySlot]
    order: tuple[str, ...]
    returned: ReturnedArrays | None = None
    """The pipe the worker sent the arrays back through, when their segment
    had no room."""


BodyRoad = str | PipedMessage
"""How a worker gets a body: the path of its segment, or its own pipe."""


async def parse_predict(
    parsers: BodyParsers,
    body: bytes,
    specs: SpecSource,
    limits: TensorLimits | None,
) -> PredictBody:
    """:func:`~servekit_protocol.json_codec.parse_predict_request` of ``body``
    in a worker process, the body and the decoded arrays moved through
    segments.

    Raises:
        InvalidArgument: What parsing raises.
        ParserUnavailable: The worker died.
    """
    # Shielded: a cancelled call's worker still finishes before the segments
    # are removed (it may be writing one).
    return await segments.run_to_end(_parse(parsers, body, specs, limits))


async def _parse(
    parsers: BodyParsers,
    body: bytes,
    specs: SpecSource,
    limits: TensorLimits | None,
) -> PredictBody:
    body_segment = segments.new_path(parsers.segment_dir, "body")
    arrays_segment = segments.new_path(parsers.segment_dir, "inputs")
    directory = parsers.segment_dir
    try:
        try:
            await asyncio.to_thread(segments.write_bytes, body_segment, body)
        except OSError as exc:
            segments.unlink_soon(body_segment)
            return await _parse_piped(parsers, body, specs, limits, exc)
        parsed = await parsers.in_worker(
            parse_in_worker, body_segment, len(body), arrays_segment, specs, limits
        )
        if isinstance(parsed, PredictBody):
            _warn_arrays(
                "the worker pipe, copies that hold the GIL and so the event loop",
                directory,
            )
            return parsed
        arrays = (
            await asyncio.to_thread(segments.read_arrays, arrays_segment, parsed.slots)
            if parsed.slots
            else {}
        )
        if parsed.returned is not None:
            _warn_arrays("a pipe of their own", directory)
            arrays.update(await received_from_worker(parsed.returned, _WORKER_STOPPED))
        return _assembled(parsed, arrays)
    finally:
        segments.unlink_soon(body_segment, arrays_segment)


async def _parse_piped(
    parsers: BodyParsers,
    body: bytes,
    specs: SpecSource,
    limits: TensorLimits | None,
    exc: OSError,
) -> PredictBody:
    # The body through a pipe of its own, its arrays back through another;
    # both pickled through the pool's pipe when no such pipes can be made.
    try:
        pipes = await asyncio.to_thread(
            MessagePipes, memoryview(body), parsers.descriptors
        )
    except OSError as no_pipe:
        _warn(exc, parsers.segment_dir, _pickled(no_pipe))
        return await parsers.in_worker(parse_predict_request, body, specs, limits)
    _warn(exc, parsers.segment_dir, "a pipe of its own")
    try:
        parsed, arrays = await pipes.exchange(
            parsers.in_worker(
                parse_in_worker, pipes.message, len(body), pipes.arrays, specs, limits
            )
        )
    except OSError as stopped:
        raise _worker_stopped() from stopped
    assert isinstance(parsed, _Parsed)
    return _assembled(parsed, arrays)


_WORKER_STOPPED = "The JSON body could not be handled: its worker stopped"


def _worker_stopped() -> ParserUnavailable:
    return ParserUnavailable(_WORKER_STOPPED)


def _assembled(parsed: _Parsed, arrays: Arrays) -> PredictBody:
    arrays.update(parsed.body.inputs)
    return dataclasses.replace(
        parsed.body, inputs={name: arrays[name] for name in parsed.order}
    )


def parse_in_worker(
    body: BodyRoad,
    size: int,
    arrays: str | PipedArrays,
    specs: SpecSource,
    limits: TensorLimits | None,
) -> _Parsed | PredictBody:
    """Run in the worker: the body (in a segment, or its pipe) parsed, its
    numeric arrays written to the segment ``arrays`` (or sent through their
    pipe); sent back through a pipe of the worker's when that segment has no
    room, and in the parsed body itself when no such pipe can be made.

    Raises:
        InvalidArgument: What parsing raises.
    """
    try:
        parsed = parse_predict_request(received_body(body, size), specs, limits)
    except BaseException:
        if isinstance(arrays, PipedArrays):
            arrays.discard()
        raise
    numeric = {k: v for k, v in parsed.inputs.items() if v.dtype != object}
    pickled = dataclasses.replace(
        parsed, inputs={k: v for k, v in parsed.inputs.items() if k not in numeric}
    )
    order = tuple(parsed.inputs)
    if isinstance(arrays, PipedArrays):
        arrays.send(numeric)
        return _Parsed(pickled, [], order)
    try:
        slots = segments.write_arrays(arrays, numeric) if numeric else []
    except OSError:
        segments.unlink(arrays)
        try:
            return _Parsed(pickled, [], order, send_back(numeric))
        except OSError:
            return parsed
    return _Parsed(pickled, slots, order)


def received_body(body: BodyRoad, size: int) -> bytes | bytearray:
    """In the worker, the body it was handed (blocking).

    Raises:
        OSError: The segment is missing, or the pipe ended early.
    """
    if isinstance(body, PipedMessage):
        return body.received()
    return segment_answers.read_answer(body, size)


async def run_on_body(
    parsers: BodyParsers, function: Callable[..., _Result], body: bytes, *args: Any
) -> _Result:
    """``function(body, *args)`` in a worker process, ``body`` moved there
    through a segment; what ``function`` returns comes back pickled.

    Raises:
        Exception: What ``function`` raises (pickled back as it is);
            :class:`~servekit_protocol.json_codec.offload.ParserUnavailable`
            when the worker died.
    """
    # Shielded: a cancelled call's worker still finishes before the segment is
    # removed (it may be reading it).
    return await segments.run_to_end(_run_on_body(parsers, function, body, args))


async def _run_on_body(
    parsers: BodyParsers,
    function: Callable[..., _Result],
    body: bytes,
    args: tuple[Any, ...],
) -> _Result:
    body_segment = segments.new_path(parsers.segment_dir, "body")
    try:
        try:
            await asyncio.to_thread(segments.write_bytes, body_segment, body)
        except OSError as exc:
            segments.unlink_soon(body_segment)
            return await _run_piped(parsers, function, body, args, exc)
        return await parsers.in_worker(
            call_on_body, body_segment, len(body), function, *args
        )
    finally:
        segments.unlink_soon(body_segment)


async def _run_piped(
    parsers: BodyParsers,
    function: Callable[..., _Result],
    body: bytes,
    args: tuple[Any, ...],
    exc: OSError,
) -> _Result:
    # The body through a pipe of its own; pickled through the pool's pipe
    # when no such pipe can be made.
    try:
        sending = await asyncio.to_thread(
            MessagePipe, memoryview(body), parsers.descriptors
        )
    except OSError as no_pipe:
        _warn(exc, parsers.segment_dir, _pickled(no_pipe))
        return await parsers.in_worker(function, body, *args)
    _warn(exc, parsers.segment_dir, "a pipe of its own")
    try:
        return await parsers.in_worker(
            call_on_body, sending.message, len(body), function, *args
        )
    finally:
        await asyncio.to_thread(sending.close)


def call_on_body(
    body: BodyRoad, size: int, function: Callable[..., _Result], *args: Any
) -> _Result:
    """Run in the worker: ``function`` of the body it was handed."""
    return function(received_body(body, size), *args)


def _pickled(no_pipe: OSError) -> str:
    return (
        f"the worker pipe (no pipe of its own: {no_pipe}), copies that hold the "
        "GIL and so the event loop"
    )


def _warn(exc: OSError, directory: str, road: str) -> None:
    logger.warning(
        "A large request body went to its worker through %s: its shared memory "
        "segment could not be written (%s); give %s more room",
        road,
        exc,
        directory,
    )


def _warn_arrays(road: str, directory: str) -> None:
    logger.warning(
        "A large request body's arrays came back from their worker through %s: "
        "their shared memory segment could not be written (no room); give %s "
        "more room",
        road,
        directory,
    )
