"""Large answers written in a worker process, with their arrays sent there and
their bytes sent back through shared memory segments, not the pool's pipe.

A process pool's pipe carries pickles: a 64 MiB answer coming back is read and
unpickled by the pool's helper threads in the server, copies made holding the
GIL, which held the event loop 64-162 ms on a quiet 2-core machine even though
the loop itself ran none of it; the arrays going out cost the same in the
pickling thread. Here the server's side only calls ``write`` (the arrays, in
C order) and ``read`` (the answer) in a thread, copies the kernel makes with
the GIL released; the worker maps the arrays' segment and writes the answer
into another. What else the worker needs (string arrays, small arguments)
still travels pickled.

Both segments are named by the server's side, which unlinks them once the
worker has answered, on every path: a call cancelled meanwhile waits for its
worker in the background first. When a segment cannot be written (a
container's ``/dev/shm`` is small unless given more) a pipe of its own carries
that side instead (:mod:`servekit_protocol.messagepipe`, copies without the
GIL), with a warning: the arrays go through one the server makes, the answer
comes back through one the worker makes. Only where no such pipe can be made
do the bytes go pickled through the pool's pipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servekit_protocol import segments
from servekit_protocol.json_codec.offload import (
    BodyParsers,
    received_from_worker,
)
from servekit_protocol.messagepipe import (
    MessagePipe,
    PipedMessage,
    ReturnedBytes,
    send_back_bytes,
)

logger = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
AnswerFunction = Callable[..., bytes]
"""A module-level function ``f(arrays, *args) -> bytes`` run in the worker."""


@dataclass(frozen=True, slots=True)
class _Arrays:
    # How the worker gets the arrays: numeric ones from a segment's slots
    # (or all of them from their own pipe), the others pickled, in ``order``.
    segment: str | PipedMessage
    slots: list[segments.ArraySlot]
    pickled: dict[str, Array]
    order: tuple[str, ...]


async def write_in_worker(
    parsers: BodyParsers,
    function: AnswerFunction,
    arrays: Mapping[str, Array],
    *args: Any,
) -> bytes:
    """``function(arrays, *args)`` in a worker process, ``arrays`` (same keys,
    same order, same values) and the answer's bytes moved through segments.

    Raises:
        ProtocolError: What ``function`` raises; :class:`~servekit_protocol.json_codec.offload.ParserUnavailable`
            when the worker died.
    """
    # Shielded: a cancelled call's worker still finishes before the segments
    # are removed (it may be writing one).
    return await segments.run_to_end(_write(parsers, function, dict(arrays), args))


async def _write(
    parsers: BodyParsers,
    function: AnswerFunction,
    arrays: dict[str, Array],
    args: tuple[Any, ...],
) -> bytes:
    arrays_segment = segments.new_path(parsers.segment_dir, "outputs")
    answer_segment = segments.new_path(parsers.segment_dir, "answer")
    directory = parsers.segment_dir
    numeric = {key: value for key, value in arrays.items() if value.dtype != object}
    pickled = {k: v for k, v in arrays.items() if k not in numeric}
    sending: MessagePipe | None = None
    try:
        source: str | PipedMessage = arrays_segment
        try:
            slots = (
                await asyncio.to_thread(segments.write_arrays, arrays_segment, numeric)
                if numeric
                else []
            )
        except OSError as exc:
            segments.unlink_soon(arrays_segment)
            slots = []
            try:
                sending = await asyncio.to_thread(
                    MessagePipe.for_arrays, numeric, parsers.descriptors
                )
            except OSError as no_pipe:
                _warn(ARRAYS, exc, directory, _pickled(no_pipe))
                pickled = arrays
            else:
                _warn(ARRAYS, exc, directory, "a pipe of their own")
                source = sending.message
        sent = _Arrays(source, slots, pickled, tuple(arrays))
        try:
            answer = await parsers.in_worker(
                write_answer, answer_segment, sent, function, *args
            )
        finally:
            if sending is not None:
                await asyncio.to_thread(sending.close)
        if isinstance(answer, bytes):
            _warn(ANSWER, None, directory, _pickled(None))
            return answer
        if isinstance(answer, ReturnedBytes):
            _warn(ANSWER, None, directory, "a pipe of its own")
            return await received_from_worker(
                answer, "The answer could not be written: its worker stopped"
            )
        return await asyncio.to_thread(read_answer, answer_segment, answer)
    finally:
        segments.unlink_soon(arrays_segment, answer_segment)


def write_answer(
    answer_segment: str,
    sent: _Arrays,
    function: AnswerFunction,
    *args: Any,
) -> int | ReturnedBytes | bytes:
    """Run in the worker: the answer written to ``answer_segment``, its size
    returned; when that segment cannot be written, sent back through a pipe
    of the worker's (:func:`~servekit_protocol.messagepipe.send_back_bytes`),
    or returned itself when no such pipe can be made either."""
    arrays: dict[str, Array] = {}
    if isinstance(sent.segment, PipedMessage):
        arrays.update(sent.segment.received_arrays())
    elif sent.slots:
        arrays.update(segments.read_arrays(sent.segment, sent.slots))
    arrays.update(sent.pickled)
    answer = function({key: arrays[key] for key in sent.order}, *args)
    try:
        segments.write_bytes(answer_segment, answer)
    except OSError:
        segments.unlink(answer_segment)
        try:
            return send_back_bytes(answer)
        except OSError:
            return answer
    return len(answer)


def read_answer(path: str, size: int) -> bytes:
    """The ``size`` bytes of segment ``path`` (blocking: run it in a thread;
    ``read`` fills the new bytes object with the GIL released).

    Raises:
        OSError: The segment is missing or shorter than ``size``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size)
        if len(data) == size:
            return data
        # tmpfs reads a file whole; another file system may answer in parts.
        parts = [data]
        read = len(data)
        while read < size:
            part = os.read(fd, size - read)
            if not part:
                raise OSError(f"segment {path} ended early")
            parts.append(part)
            read += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


ARRAYS = "A large answer's arrays went to its worker"
ANSWER = "A large answer came back from its worker"


def _pickled(no_pipe: OSError | None) -> str:
    why = "" if no_pipe is None else f" (no pipe of their own: {no_pipe})"
    return f"the worker pipe{why}, copies that hold the GIL and so the event loop"


def _warn(what: str, exc: OSError | None, directory: str, road: str) -> None:
    logger.warning(
        "%s through %s: its shared memory segment could not be written (%s); "
        "give %s more room",
        what,
        road,
        exc if exc is not None else "no room",
        directory,
    )
