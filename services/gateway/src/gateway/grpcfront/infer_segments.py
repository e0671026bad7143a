"""Large ModelInfer messages with typed ``contents`` or BYTES inputs, handed
to the JSON workers through shared memory segments
(:mod:`servekit_protocol.segments`).

Raw inputs are written into the backend's Predict as they came
(:mod:`gateway.codecs.v2_spliced`); every other large message is parsed,
checked and encoded in a worker. Sent through the process pool's pipe, the
message would be copied and pickled on the event loop first, and the encoded
Predict unpickled there on its way back: at 64 MiB that held the loop some
350 ms. Here the loop only starts the copies: the message is written to a
segment, and the Predict read back from another, in threads whose system
calls release the GIL; the worker maps the one and writes the other.

With no room in shared memory (``ENOSPC``, or ``EFBIG`` past a file size
limit), the message goes to the worker through OS pipes of its own
(:mod:`servekit_protocol.messagepipe`, as on the model server): written from
the received buffer by a thread of the call, the GIL released while the kernel
copies; the Predict comes back through another, read straight into a new
buffer. Only where no pipe can be made is the message pickled through the
pool's pipe (:class:`~servekit_protocol.pickledmessage.MessageBytes`), with a
warning line of its own: its copies hold the GIL in the pool's threads, which
made the loop wait 0.3-1 s for a 48 MiB message.

The message's segment lives until its call is answered (the worker reads it
twice: its head as the call starts, the whole request once the target's
dtypes are known): the servicer removes it then (:func:`release`), and its
:class:`InferMessage` going removes it too, for a call dropped before the
servicer ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from servekit_protocol import segments
from servekit_protocol.grpcweb_server import Aborted
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.json_codec.offload import ParserUnavailable
from servekit_protocol.messagepipe import MessagePipe, MessagePipes
from servekit_protocol.pickledmessage import MessageBytes
from servekit_protocol.tensor_limits import TensorLimits

from gateway.codecs.v2_grpc import (
    PREDICT_ARRAY,
    EncodedInfer,
    InferMessage,
    WrittenInfer,
    encode_infer_message,
    encode_infer_piped,
    encode_infer_segment,
    read_infer_message,
    read_infer_segment,
)

logger = logging.getLogger(__name__)

_WORKER_STOPPED = "The request message could not be parsed: its worker stopped"


async def read_infer(parsers: BodyParsers, message: memoryview) -> InferMessage:
    """The head of a large ModelInfer, parsed in a worker from a segment
    holding the message (from the message's bytes when shared memory is
    short).

    Raises:
        DecodeError: the message does not parse (answered as in place).
        Aborted: UNAVAILABLE when the worker died.
    """
    # Shielded: a call cancelled meanwhile (its client gone, its deadline
    # past) still waits for the thread writing the segment and the worker
    # reading it, then removes the segment.
    reading = asyncio.ensure_future(_read(parsers, message))
    try:
        return await asyncio.shield(reading)
    except asyncio.CancelledError:
        reading.add_done_callback(_release_unreceived)
        raise


async def _read(parsers: BodyParsers, message: memoryview) -> InferMessage:
    name = segments.new_path(parsers.segment_dir, "infer")
    try:
        await asyncio.to_thread(segments.write_bytes, name, message)
    except OSError as exc:
        _unlink_soon(name)
        logger.warning(
            "A large ModelInfer message goes to a worker through its pipe: its "
            "shared memory segment could not be written (%s); give %s more room",
            exc,
            parsers.segment_dir,
        )
        head = await _read_piped(parsers, message)
        # The received buffer is kept as it is until the call is answered.
        return dataclasses.replace(head, message=message)
    try:
        head = await _in_worker(parsers, read_infer_segment, name)
    except BaseException:
        _unlink_soon(name)
        raise
    read = dataclasses.replace(head, segment=name)
    weakref.finalize(read, _unlink_soon, name)
    return read


async def _read_piped(parsers: BodyParsers, message: memoryview) -> InferMessage:
    try:
        sending = await asyncio.to_thread(MessagePipe, message, parsers.descriptors)
    except OSError as exc:
        _warn_no_pipe(exc)
        return await _in_worker(parsers, read_infer_message, MessageBytes(message))
    try:
        return await _in_worker(parsers, read_infer_message, sending.message)
    finally:
        await asyncio.to_thread(sending.close)


async def encode_infer(
    parsers: BodyParsers,
    request: InferMessage,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> EncodedInfer:
    """The backend's Predict of a large ModelInfer, encoded in a worker.

    Raises:
        InvalidInput: anything :func:`~gateway.codecs.v2_grpc.parse_model_infer`
            refuses, or an input that cannot be encoded.
        InvalidArgument: above the tensor limits.
    """
    if not request.segment:
        # Shielded: a call cancelled meanwhile still reads the Predict its
        # worker writes, or the worker would wait on a full pipe.
        return await segments.run_to_end(
            _encode_piped(parsers, memoryview(request.message), wanted, limits)
        )
    # Shielded: a call cancelled meanwhile still waits for its worker to
    # write the Predict's segment before removing it.
    encoding = asyncio.ensure_future(_encode(parsers, request, wanted, limits))
    encoding.add_done_callback(_retrieve)
    return await asyncio.shield(encoding)


async def _encode(
    parsers: BodyParsers,
    request: InferMessage,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> EncodedInfer:
    predict = segments.new_path(parsers.segment_dir, "predict")
    try:
        written: WrittenInfer = await parsers.in_worker(
            encode_infer_segment, request.segment, predict, wanted, limits
        )
        if written.message:
            logger.warning(
                "A large ModelInfer's Predict came back through the workers' "
                "pipe: its shared memory segment could not be written; give %s "
                "more room",
                parsers.segment_dir,
            )
            data: bytes | memoryview = written.message
        else:
            data = await asyncio.to_thread(_read_bytes, predict, written.size)
    finally:
        _unlink_soon(predict)
    return EncodedInfer(written.request, data)


async def _encode_piped(
    parsers: BodyParsers,
    message: memoryview,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> EncodedInfer:
    try:
        pipes = await asyncio.to_thread(MessagePipes, message, parsers.descriptors)
    except OSError as exc:
        _warn_no_pipe(exc)
        return await parsers.in_worker(
            encode_infer_message, MessageBytes(message), wanted, limits
        )
    writing = parsers.in_worker(
        encode_infer_piped, pipes.message, pipes.arrays, wanted, limits
    )
    try:
        written, arrays = await pipes.exchange(writing)
    except OSError as exc:
        raise Aborted(grpc.StatusCode.UNAVAILABLE, _WORKER_STOPPED) from exc
    return EncodedInfer(written.request, arrays[PREDICT_ARRAY].data)


def _warn_no_pipe(exc: OSError) -> None:
    logger.warning(
        "No pipe for a large ModelInfer message, pickled through the workers' "
        "pipe instead (copies made holding the GIL): %s",
        exc,
    )


def release(request: InferMessage) -> None:
    """Remove the request's segment (in a thread), once its call is answered."""
    if request.segment:
        _unlink_soon(request.segment)


def _read_bytes(name: str, size: int) -> memoryview:
    # Into an uninitialised numpy buffer, with the GIL released while the
    # kernel copies (bytearray would zero its pages first, holding it).
    slot = segments.ArraySlot("message", np.dtype(np.uint8), (size,), 0)
    return segments.read_arrays(name, [slot])["message"].data


async def _in_worker(parsers: BodyParsers, function: Any, *args: Any) -> InferMessage:
    try:
        head: InferMessage = await parsers.in_worker(function, *args)
    except ParserUnavailable as exc:
        raise Aborted(grpc.StatusCode.UNAVAILABLE, _WORKER_STOPPED) from exc
    return head


def _unlink_soon(name: str) -> None:
    """Remove a segment in a thread of its own: unlinking frees its pages
    there and then (about 12 ms for 64 MiB), and the caller is often the
    loop (or a finalizer run on it)."""
    try:
        threading.Thread(
            target=segments.unlink, args=(name,), name="segment-unlink", daemon=True
        ).start()
    except RuntimeError:
        # The interpreter is shutting down (a finalizer run at exit).
        segments.unlink(name)


def _release_unreceived(task: asyncio.Future[InferMessage]) -> None:
    # The head of a call that was cancelled while it was read.
    if task.cancelled():
        return
    if task.exception() is None:
        release(task.result())


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The error of an encoding whose call was cancelled is nobody's to raise.
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()


__all__ = ["encode_infer", "read_infer", "release"]
