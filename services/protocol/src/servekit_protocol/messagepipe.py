"""A large message's bytes sent to a worker process, and arrays sent back,
through OS pipes of their own, when their shared memory segments find no room.

Pickled through the process pool's pipe, the message is copied twice with the
GIL held in the pool's feeder thread (into pieces, then into the pickle's
buffer): 0.3-0.4 s of GIL for 256 MiB, which on a loaded machine made the
event loop's thread wait 90-960 ms at a time. Here the bytes go from the
received buffer straight into a pipe made for the call: ``os.write`` of views
(no copy, the GIL released while the kernel copies), from a thread of the
call's own. The worker gets the pipe's read end through the table each pipe
is handed (:class:`~servekit_protocol.descriptors.Descriptors`, the workers'
own: descriptor passing over a Unix socket, no file of any size; the server
closes its duplicate once the call is over, taken or not) and reads the
message into one buffer. The
arrays come back the same way (:class:`ArraysPipe`): the worker writes a small
header (names, types, shapes) and their bytes; a thread of the server's reads
them straight into new arrays (``os.readv``, the GIL released), where the
pool's result thread would read them into a buffer and unpickle them, copies
made holding the GIL. Where only the arrays' segment finds no room, the worker
learns it first: it makes the pipe itself (:func:`send_back`), its answer
carries the read end, and a thread of the worker's writes as the server reads.

Both services use it for their large messages when their shared memory
segments find no room: the model server's gRPC messages and REST bodies and
answers (``modelserver``) and the gateway's ModelInfer
messages (``gateway.grpcfront.infer_segments``). :class:`MessagePipes` opens
the two for a call and runs it; where no pipe can be made (out of
descriptors), :class:`~servekit_protocol.pickledmessage.MessageBytes` hands
the message over pickled instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from servekit_protocol.descriptors import Descriptors, SharedDescriptor
from servekit_protocol.pipeframes import (
    WRITE_BYTES,
    Arrays,
    array_parts,
    read_arrays,
    write_all,
)

Result = TypeVar("Result")

_POLL_SECONDS = 0.1
"""How often the writer checks that the call still wants the bytes (its
worker may have died before reading them all)."""


@dataclass(frozen=True, slots=True)
class PipedMessage:
    """What a worker is handed for a message sent through its own pipe.

    Attributes:
        reader: The pipe's read end, passed as a descriptor.
        size: The message's length in bytes.
    """

    reader: SharedDescriptor
    size: int

    def received(self) -> bytearray:
        """The message, read whole from the pipe (in the worker).

        Raises:
            OSError: The pipe ended before the message did.
        """
        descriptor = self.reader.detach()
        try:
            buffer = bytearray(self.size)
            view = memoryview(buffer)
            done = 0
            while done < self.size:
                read = os.readv(descriptor, [view[done:]])
                if read == 0:
                    raise OSError(f"the message's pipe ended at {done} bytes")
                done += read
            view.release()
            return buffer
        finally:
            os.close(descriptor)

    def received_arrays(self) -> Arrays:
        """The arrays a :meth:`MessagePipe.for_arrays` pipe carries, read
        whole (in the worker).

        Raises:
            OSError: The pipe ended before the arrays did.
        """
        descriptor = self.reader.detach()
        try:
            return read_arrays(descriptor)
        finally:
            os.close(descriptor)


class MessagePipe:
    """The server's side of a message's pipe: :attr:`message` for the worker,
    a thread writing the bytes as the worker reads them.

    Args:
        view: The message; it must stay unchanged until :meth:`close`.
        descriptors: The table the worker takes the pipe's end from.

    Raises:
        OSError: No pipe, or its descriptor could not be shared (the caller
            falls back to pickling the message).
    """

    def __init__(self, view: memoryview, descriptors: Descriptors) -> None:
        self._start([view.cast("B") if view.format != "B" else view], descriptors)

    @classmethod
    def for_arrays(cls, arrays: Arrays, descriptors: Descriptors) -> MessagePipe:
        """A pipe carrying ``arrays`` (numeric; they must stay unchanged until
        :meth:`close`) to a worker, which reads them with
        :meth:`PipedMessage.received_arrays`.

        Raises:
            OSError: No pipe, or its descriptor could not be shared.
        """
        pipe = cls.__new__(cls)
        pipe._start(array_parts(arrays), descriptors)
        return pipe

    def _start(self, parts: list[memoryview], descriptors: Descriptors) -> None:
        self._descriptors = descriptors
        read_end, self._write_end = os.pipe()
        try:
            # Duplicated now, kept in the table (a thread and a Unix socket,
            # started once): the worker fetches it as it reads.
            reader = descriptors.share(read_end)
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.message = PipedMessage(reader, sum(len(part) for part in parts))
        self._parts = parts
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write, name="message-pipe", daemon=True
        )
        self._writer.start()

    def _write(self) -> None:
        descriptor = self._write_end
        try:
            os.set_blocking(descriptor, False)
            for view in self._parts:
                done = 0
                while done < len(view):
                    if self._stop.is_set():
                        return
                    select.select([], [descriptor], [], _POLL_SECONDS)
                    try:
                        done += os.write(descriptor, view[done : done + WRITE_BYTES])
                    except BlockingIOError:
                        continue
        except BrokenPipeError:
            # The worker went away: its call fails on its own.
            pass
        finally:
            os.close(descriptor)

    def close(self) -> None:
        """Stop writing (the worker has answered, or died) and wait for the
        writer (blocks up to ``_POLL_SECONDS``: call it in a thread)."""
        self._stop.set()
        self._writer.join()
        self._descriptors.drop(self.message.reader)


@dataclass(frozen=True, slots=True)
class PipedArrays:
    """What a worker is handed to send its arrays back through a pipe.

    Attributes:
        writer: The pipe's write end, passed as a descriptor.
    """

    writer: SharedDescriptor

    def send(self, arrays: Arrays) -> None:
        """Write ``arrays`` to the pipe (in the worker; C-contiguous
        numeric arrays)."""
        descriptor = self.writer.detach()
        try:
            for part in array_parts(arrays):
                write_all(descriptor, part)
        finally:
            os.close(descriptor)

    def discard(self) -> None:
        """Take the pipe and close it unused (in the worker, which has no
        arrays to send: the request was refused): the server's reader stops
        at once, and the descriptor sharer keeps no copy of it."""
        os.close(self.writer.detach())


class ArraysPipe:
    """The server's side of the arrays' pipe: :attr:`arrays` for the worker, a
    thread reading what the worker sends into new arrays.

    Args:
        descriptors: The table the worker takes the pipe's end from.

    Raises:
        OSError: No pipe, or its descriptor could not be shared.
    """

    def __init__(self, descriptors: Descriptors) -> None:
        self._descriptors = descriptors
        self._read_end, write_end = os.pipe()
        try:
            writer = descriptors.share(write_end)
        except BaseException:
            os.close(self._read_end)
            raise
        finally:
            os.close(write_end)
        self.arrays = PipedArrays(writer)
        self._stop = threading.Event()
        self._received: Arrays | None = None
        self._error: OSError | None = None
        self._reader = threading.Thread(
            target=self._read, name="arrays-pipe", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        descriptor = self._read_end
        try:
            # Nothing comes when the worker has no arrays to send (the
            # request was refused, or did not parse): it never takes the
            # pipe, whose write end stays in the table until received().
            while not select.select([descriptor], [], [], _POLL_SECONDS)[0]:
                if self._stop.is_set():
                    return
            self._received = read_arrays(descriptor)
        except OSError as exc:
            self._error = exc
        finally:
            os.close(descriptor)

    def received(self) -> Arrays:
        """The arrays the worker sent, once it has answered (none when it sent
        none); blocks until they are read: call it in a thread.

        Raises:
            OSError: The pipe ended before the arrays did.
        """
        self._stop.set()
        self._reader.join()
        self._descriptors.drop(self.arrays.writer)
        if self._error is not None:
            raise self._error
        return self._received or {}


class MessagePipes:
    """A call's two pipes: its message to the worker, its arrays back.

    Args:
        view: The message; it must stay unchanged until the call is over.
        descriptors: The table the worker takes the pipes' ends from.

    Raises:
        OSError: No pipes could be made (the caller hands the message over
            pickled, :class:`~servekit_protocol.pickledmessage.MessageBytes`).
    """

    def __init__(self, view: memoryview, descriptors: Descriptors) -> None:
        self._sending = MessagePipe(view, descriptors)
        try:
            self._receiving = ArraysPipe(descriptors)
        except BaseException:
            self._sending.close()
            raise
        self.message = self._sending.message
        """What the worker reads the message from."""
        self.arrays = self._receiving.arrays
        """What the worker sends its arrays through."""

    async def exchange(self, call: Awaitable[Result]) -> tuple[Result, Arrays]:
        """The worker's answer to ``call`` (made with :attr:`message` and
        :attr:`arrays`) and the arrays it sent (none when it sent none).

        Raises:
            OSError: The arrays' pipe ended before the arrays did (the worker
                died while sending them).
        """
        try:
            answer = await call
        except BaseException:
            await asyncio.to_thread(self._end_quietly)
            raise
        await asyncio.to_thread(self._sending.close)
        return answer, await asyncio.to_thread(self._receiving.received)

    def _end_quietly(self) -> None:
        # The call failed already: what its arrays' pipe says adds nothing.
        self._sending.close()
        with contextlib.suppress(OSError):
            self._receiving.received()


_STALLED_SECONDS = 120.0
"""Most time a worker's thread waits for the server to read a pipe it made
(:func:`send_back`) without a byte taken: the server reads as soon as the
worker's answer reaches it, so a pipe that long unread is one nobody will
read (its call failed on the server's side), and its arrays are dropped,
the duplicate of its read end with them."""


@dataclass(frozen=True, slots=True)
class ReturnedArrays:
    """Arrays a worker sends back through a pipe it made, because their
    segment had no room (:func:`send_back`): what its answer carries.

    Attributes:
        reader: The pipe's read end, passed as a descriptor.
    """

    reader: SharedDescriptor

    def received(self) -> Arrays:
        """The arrays, read whole from the pipe (in the server; blocking: run
        it in a thread).

        Raises:
            OSError: The pipe ended before the arrays did (the worker died).
        """
        descriptor = self.reader.detach()
        try:
            return read_arrays(descriptor)
        finally:
            os.close(descriptor)


@dataclass(frozen=True, slots=True)
class ReturnedBytes:
    """Bytes a worker sends back through a pipe it made, because their
    segment had no room (:func:`send_back_bytes`): what its answer carries.

    Attributes:
        reader: The pipe's read end, passed as a descriptor.
        size: Their length.
    """

    reader: SharedDescriptor
    size: int

    def received(self) -> bytes:
        """The bytes, read whole from the pipe (in the server; blocking: run
        it in a thread).

        Raises:
            OSError: The pipe ended before the bytes did (the worker died).
        """
        descriptor = self.reader.detach()
        try:
            parts = []
            done = 0
            while done < self.size:
                part = os.read(descriptor, min(self.size - done, WRITE_BYTES))
                if not part:
                    raise OSError(f"the answer's pipe ended at {done} bytes")
                parts.append(part)
                done += len(part)
            # One copy: an answer is bytes, which cannot be read into in
            # place (bytes.join lets go of the GIL while it copies a large
            # join; the pickled road copied it several times holding it).
            return b"".join(parts)
        finally:
            os.close(descriptor)


def send_back_bytes(
    data: bytes, stalled_seconds: float = _STALLED_SECONDS
) -> ReturnedBytes:
    """In a worker: :func:`send_back` for one buffer of bytes.

    Raises:
        OSError: No pipe, or its descriptor could not be shared.
    """
    reader = _sending_thread([memoryview(data)], stalled_seconds)
    return ReturnedBytes(reader, len(data))


def send_back(
    arrays: Arrays, stalled_seconds: float = _STALLED_SECONDS
) -> ReturnedArrays:
    """In a worker: a pipe for ``arrays`` (C-contiguous numeric arrays), the
    handle its answer carries, and a thread writing them as the server reads.

    The worker cannot write them before it answers (the server only learns of
    the pipe from its answer, and the pipe holds 64 KiB), so a thread of the
    worker's writes while it goes on with other calls. The read end waits for
    the server in a table of the call's own
    (:class:`~servekit_protocol.descriptors.Descriptors`), closed with the
    writer: a pipe nobody reads for ``stalled_seconds`` leaves no descriptor
    behind in the worker.

    Raises:
        OSError: No pipe, or its descriptor could not be shared (the caller
            falls back to pickling the arrays).
    """
    return ReturnedArrays(_sending_thread(array_parts(arrays), stalled_seconds))


def _sending_thread(
    parts: list[memoryview], stalled_seconds: float
) -> SharedDescriptor:
    # The pipe's read end, shared; a thread writing ``parts`` to the other.
    # The table is the call's, not the worker's: a call has no way to a
    # table of its worker's (the pool runs functions of their arguments
    # alone), and the no-room road is rare enough for a socket and a thread
    # of its own.
    descriptors = Descriptors()
    read_end, write_end = os.pipe()
    try:
        reader = descriptors.share(read_end)
    except BaseException:
        os.close(write_end)
        descriptors.close()
        raise
    finally:
        os.close(read_end)
    threading.Thread(
        target=_write_parts,
        args=(write_end, parts, descriptors, stalled_seconds),
        name="sending-back",
        daemon=True,
    ).start()
    return reader


def _write_parts(
    descriptor: int,
    parts: list[memoryview],
    descriptors: Descriptors,
    stalled_seconds: float,
) -> None:
    try:
        os.set_blocking(descriptor, False)
        for view in parts:
            done = 0
            waited = 0.0
            while done < len(view):
                if not select.select([], [descriptor], [], _POLL_SECONDS)[1]:
                    waited += _POLL_SECONDS
                    if waited >= stalled_seconds:
                        return
                    continue
                try:
                    done += os.write(descriptor, view[done : done + WRITE_BYTES])
                except BlockingIOError:
                    continue
                waited = 0.0
        # All of it fitted in the pipe (under 64 KiB): the read end must stay
        # in the table until the server takes it.
        waited = 0.0
        while descriptors.waiting() and waited < stalled_seconds:
            time.sleep(_POLL_SECONDS)
            waited += _POLL_SECONDS
    except BrokenPipeError:
        # The server closed its end: its call fails on its own.
        pass
    finally:
        os.close(descriptor)
        # Drops the read end if the server never took it.
        descriptors.close()
