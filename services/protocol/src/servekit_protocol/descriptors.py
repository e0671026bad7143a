"""A pipe's end handed to a worker process by descriptor passing, and taken
back when the worker never comes for it.

:mod:`multiprocessing`'s resource sharer (``reduction.DupFd``) keeps the
duplicate it registers until some process asks for it: one whose worker died
first, or never needed its pipe (a refused request sends no arrays back),
stays open in the server for good, one descriptor a call. Here the server
keeps its duplicates in a table of its own, hands each to the first process
that asks with its token (``socket.send_fds`` over a Unix socket it listens
on), and :meth:`Descriptors.drop` closes the one nobody took once its call is
over.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass

_TOKEN_BYTES = 16
"""A handle's token: unguessable, so only the worker handed the handle (or the
server) can take its descriptor from the socket (abstract, so no file
permissions guard it)."""
_TAKE_SECONDS = 30.0
"""Most a worker waits for the server to answer: the server's thread answers
at once, unless the server is gone."""


@dataclass(frozen=True, slots=True)
class SharedDescriptor:
    """What a worker is handed for a descriptor (pickled as plain data).

    Attributes:
        address: The server's socket.
        token: Names the descriptor there.
    """

    address: str
    token: bytes

    def detach(self) -> int:
        """The descriptor, taken from the server (the caller closes it).

        Raises:
            OSError: The server is gone, or the descriptor was dropped.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TAKE_SECONDS)
            conn.connect(self.address)
            conn.sendall(self.token)
            _, fds, _, _ = socket.recv_fds(conn, 1, 1)
        if not fds:
            raise OSError("the descriptor was dropped before it was taken")
        return fds[0]


class Descriptors:
    """The server's side: duplicates waiting for their workers, and the
    thread handing them out (started with the first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[bytes, int] = {}
        self._listener: socket.socket | None = None
        self._address = ""

    def share(self, descriptor: int) -> SharedDescriptor:
        """A handle on a duplicate of ``descriptor`` (the caller keeps its own).

        Raises:
            OSError: No duplicate, or no socket to hand it out.
        """
        token = secrets.token_bytes(_TOKEN_BYTES)
        with self._lock:
            address = self._listening()
            self._waiting[token] = os.dup(descriptor)
        return SharedDescriptor(address, token)

    def drop(self, handle: SharedDescriptor) -> None:
        """Close the duplicate if nobody took it (its call is over)."""
        with self._lock:
            descriptor = self._waiting.pop(handle.token, None)
        if descriptor is not None:
            os.close(descriptor)

    def waiting(self) -> int:
        """How many duplicates wait for a worker."""
        with self._lock:
            return len(self._waiting)

    def _listening(self) -> str:
        if self._listener is None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # Linux's abstract namespace: no file to remove, none left
                # behind by a killed server.
                address = f"\0servekit-descriptors-{os.getpid()}-{secrets.token_hex(8)}"
                listener.bind(address)
                listener.listen(64)
            except BaseException:
                listener.close()
                raise
            self._listener, self._address = listener, address
            threading.Thread(
                target=self._serve, args=(listener,), name="descriptors", daemon=True
            ).start()
        return self._address

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(_TAKE_SECONDS)
                    token = _receive(conn, _TOKEN_BYTES)
                    with self._lock:
                        descriptor = self._waiting.pop(token, None)
                    if descriptor is None:
                        conn.sendall(b"-")
                        continue
                    try:
                        socket.send_fds(conn, [b"+"], [descriptor])
                    finally:
                        os.close(descriptor)
                except OSError:
                    # The asker went away: its call fails on its own.
                    continue


def _receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = conn.recv(size - len(data))
        if not part:
            break
        data += part
    return data


_tables: dict[int, Descriptors] = {}
_tables_lock = threading.Lock()


def process_descriptors() -> Descriptors:
    """The running process's table: one socket and thread a process, as
    :mod:`multiprocessing` keeps one resource sharer (a forked child gets a
    new one: its parent's thread does not run there)."""
    with _tables_lock:
        return _tables.setdefault(os.getpid(), Descriptors())
