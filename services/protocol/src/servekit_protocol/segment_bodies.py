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
unlinked once the worker has answered on every path, the pipe used instead with
a warning when a segment cannot be written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from servekit_protocol import segment_answers, segments
from servekit_protocol.json_codec.offload import BodyParsers
from servekit_protocol.json_codec.predict import (
    PredictBody,
    SpecSource,
    parse_predict_request,
)
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
    try:
        try:
            await asyncio.to_thread(segments.write_bytes, body_segment, body)
        except OSError as exc:
            _warn(exc, parsers.segment_dir)
            return await parsers.in_worker(parse_predict_request, body, specs, limits)
        parsed = await parsers.in_worker(
            parse_in_worker, body_segment, len(body), arrays_segment, specs, limits
        )
        if isinstance(parsed, PredictBody):
            _warn(None, parsers.segment_dir)
            return parsed
        arrays = (
            await asyncio.to_thread(segments.read_arrays, arrays_segment, parsed.slots)
            if parsed.slots
            else {}
        )
        arrays.update(parsed.body.inputs)
        return dataclasses.replace(
            parsed.body, inputs={name: arrays[name] for name in parsed.order}
        )
    finally:
        segments.unlink_soon(body_segment, arrays_segment)


def parse_in_worker(
    body_segment: str,
    size: int,
    arrays_segment: str,
    specs: SpecSource,
    limits: TensorLimits | None,
) -> _Parsed | PredictBody:
    """Run in the worker: the body in ``body_segment`` parsed, its numeric
    arrays written to ``arrays_segment``; the parsed body itself when that
    segment cannot be written.

    Raises:
        InvalidArgument: What parsing raises.
    """
    body = segment_answers.read_answer(body_segment, size)
    parsed = parse_predict_request(body, specs, limits)
    del body
    numeric = {k: v for k, v in parsed.inputs.items() if v.dtype != object}
    try:
        slots = segments.write_arrays(arrays_segment, numeric) if numeric else []
    except OSError:
        segments.unlink(arrays_segment)
        return parsed
    pickled = {k: v for k, v in parsed.inputs.items() if k not in numeric}
    return _Parsed(
        dataclasses.replace(parsed, inputs=pickled), slots, tuple(parsed.inputs)
    )


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
            _warn(exc, parsers.segment_dir)
            return await parsers.in_worker(function, body, *args)
        return await parsers.in_worker(
            call_on_segment, body_segment, len(body), function, *args
        )
    finally:
        segments.unlink_soon(body_segment)


def call_on_segment(
    body_segment: str, size: int, function: Callable[..., _Result], *args: Any
) -> _Result:
    """Run in the worker: ``function`` of the body in ``body_segment``."""
    return function(segment_answers.read_answer(body_segment, size), *args)


def _warn(exc: OSError | None, directory: str) -> None:
    logger.warning(
        "A large request body went through the worker pipe, copies that hold "
        "the GIL and so the event loop: its shared memory segment could not be "
        "written (%s); give %s more room",
        exc if exc is not None else "no room",
        directory,
    )
