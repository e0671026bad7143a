"""A large message's bytes sent to a worker process, and arrays sent back,
through OS pipes of their own, when their shared memory segments find no room.

Pickled through the process pool's pipe, the message is copied twice with the
GIL held in the pool's feeder thread (into pieces, then into the pickle's
buffer): 0.3-0.4 s of GIL for 256 MiB, which on a loaded machine made the
event loop's thread wait 90-960 ms at a time. Here the bytes go from the
received buffer straight into a pipe made for the call: ``os.write`` of views
(no copy, the GIL released while the kernel copies), from a thread of the
call's own. The worker gets the pipe's read end through
:mod:`multiprocessing`'s descriptor passing (``reduction.DupFd``, a Unix
socket, no file of any size) and reads the message into one buffer. The
arrays come back the same way (:class:`ArraysPipe`): the worker writes a small
header (names, types, shapes) and their bytes; a thread of the server's reads
them straight into new arrays (``os.readv``, the GIL released), where the
pool's result thread would read them into a buffer and unpickle them, copies
made holding the GIL.

Both services use it for their large messages when their shared memory
segments find no room: the model server's gRPC messages
(``modelserver.protocol.grpc.largerequests``) and the gateway's ModelInfer
messages (``gateway.grpcfront.infer_segments``). :class:`MessagePipes` opens
the two for a call and runs it; where no pipe can be made (out of
descriptors), :class:`MessageBytes` hands the message over pickled instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import select
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any, TypeVar

import numpy as np

Arrays = dict[str, np.ndarray[Any, Any]]
Result = TypeVar("Result")

_WRITE_BYTES = 1 << 20
"""Most bytes one ``write`` is given: the pipe takes what it has room for
(64 KiB by default) either way; a bound keeps each call's view small."""
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

    reader: Any
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


class MessagePipe:
    """The server's side of a message's pipe: :attr:`message` for the worker,
    a thread writing the bytes as the worker reads them.

    Args:
        view: The message; it must stay unchanged until :meth:`close`.

    Raises:
        OSError: No pipe, or its descriptor could not be shared (the caller
            falls back to pickling the message).
    """

    def __init__(self, view: memoryview) -> None:
        read_end, self._write_end = os.pipe()
        try:
            # Duplicated now, registered with the process's descriptor sharer
            # (a thread and a Unix socket, started once): the worker fetches
            # it when it unpickles the call.
            reader = reduction.DupFd(read_end)
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.message = PipedMessage(reader, len(view))
        self._view = view.cast("B") if view.format != "B" else view
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write, name="message-pipe", daemon=True
        )
        self._writer.start()

    def _write(self) -> None:
        descriptor = self._write_end
        view = self._view
        try:
            os.set_blocking(descriptor, False)
            done = 0
            while done < len(view) and not self._stop.is_set():
                select.select([], [descriptor], [], _POLL_SECONDS)
                try:
                    done += os.write(descriptor, view[done : done + _WRITE_BYTES])
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


_HEADER_SIZE_BYTES = 8
"""Length prefix of the arrays' header."""


@dataclass(frozen=True, slots=True)
class PipedArrays:
    """What a worker is handed to send its arrays back through a pipe.

    Attributes:
        writer: The pipe's write end, passed as a descriptor.
    """

    writer: Any

    def send(self, arrays: Arrays) -> None:
        """Write ``arrays`` to the pipe (in the worker; C-contiguous
        numeric arrays)."""
        descriptor = self.writer.detach()
        try:
            header = pickle.dumps(
                [(name, array.dtype.str, array.shape) for name, array in arrays.items()]
            )
            _write_all(descriptor, len(header).to_bytes(_HEADER_SIZE_BYTES, "big"))
            _write_all(descriptor, header)
            for array in arrays.values():
                _write_all(descriptor, array.reshape(-1).view(np.uint8).data)
        finally:
            os.close(descriptor)


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(descriptor, view[done : done + _WRITE_BYTES])


class ArraysPipe:
    """The server's side of the arrays' pipe: :attr:`arrays` for the worker, a
    thread reading what the worker sends into new arrays.

    Raises:
        OSError: No pipe, or its descriptor could not be shared.
    """

    def __init__(self) -> None:
        self._read_end, write_end = os.pipe()
        try:
            writer = reduction.DupFd(write_end)
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
            # pipe, whose write end stays with the descriptor sharer.
            while not select.select([descriptor], [], [], _POLL_SECONDS)[0]:
                if self._stop.is_set():
                    return
            size = int.from_bytes(self._read_bytes(_HEADER_SIZE_BYTES), "big")
            header = pickle.loads(self._read_bytes(size))
            received: Arrays = {}
            for name, dtype, shape in header:
                array: np.ndarray[Any, Any] = np.empty(shape, np.dtype(dtype))
                self._read_into(array.reshape(-1).view(np.uint8).data)
                received[name] = array
            self._received = received
        except OSError as exc:
            self._error = exc
        finally:
            os.close(descriptor)

    def _read_bytes(self, size: int) -> bytearray:
        buffer = bytearray(size)
        self._read_into(memoryview(buffer))
        return buffer

    def _read_into(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            read = os.readv(self._read_end, [view[done:]])
            if read == 0:
                raise OSError("the arrays' pipe ended early")
            done += read

    def received(self) -> Arrays:
        """The arrays the worker sent, once it has answered (none when it sent
        none); blocks until they are read: call it in a thread.

        Raises:
            OSError: The pipe ended before the arrays did.
        """
        self._stop.set()
        self._reader.join()
        if self._error is not None:
            raise self._error
        return self._received or {}


class MessagePipes:
    """A call's two pipes: its message to the worker, its arrays back.

    Args:
        view: The message; it must stay unchanged until the call is over.

    Raises:
        OSError: No pipes could be made (the caller hands the message over
            pickled, :class:`MessageBytes`).
    """

    def __init__(self, view: memoryview) -> None:
        self._sending = MessagePipe(view)
        try:
            self._receiving = ArraysPipe()
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


PICKLE_CHUNK_BYTES = 4 << 20
"""Size of the pieces a message is pickled in: the feeder thread copies one
(about 1 ms) between chances for the loop's thread to take the GIL back."""


class ReceivedBytes(list[bytes]):
    """A message's bytes as a worker receives them (see :class:`MessageBytes`)."""

    def joined(self) -> bytes:
        """The message in one piece."""
        return b"".join(self)


class MessageBytes:
    """A message's bytes handed to a worker through the pool's pipe: pickled
    from the received buffer, without a copy on the caller's thread, in pieces
    of ``PICKLE_CHUNK_BYTES`` (a worker gets a :class:`ReceivedBytes`). The
    last fallback, where no pipe of its own can be made: the pool's feeder
    thread copies the pieces holding the GIL.

    Args:
        view: The message; it must stay unchanged until the worker answers.
    """

    __slots__ = ("_view",)

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __reduce__(self) -> tuple[Any, ...]:
        # The pieces are made as the pickler asks for them, in the thread
        # that pickles (the pool's feeder), never all at once.
        view = self._view
        pieces = (
            view[start : start + PICKLE_CHUNK_BYTES].tobytes()
            for start in range(0, len(view), PICKLE_CHUNK_BYTES)
        )
        return (ReceivedBytes, (), None, pieces)


def received_message(
    message: PipedMessage | ReceivedBytes | bytes,
) -> bytes | bytearray:
    """In a worker, the message it was handed, whole.

    Raises:
        OSError: The message's pipe ended before the message did.
    """
    if isinstance(message, PipedMessage):
        return message.received()
    if isinstance(message, ReceivedBytes):
        return message.joined()
    return message
